"""callbacks=ema: an exponential moving average of the weights is what validation, the best checkpoint,
test and export see; the raw weights keep training, and a resumed run continues both exactly."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import compose_cfg
from tunelab.errors import ConfigError
from tunelab.validation import validate

# 45 rows in batches of 8, two epochs; a decay of 0.5 keeps the average far from the raw weights
EMA = ("callbacks=ema", "callbacks.ema.multi_avg_fn.decay=0.5", "data.train_limit=45", "data.batch_size=8",
       "data.group_by_length=true", "trainer.max_epochs=2", "optimizer.lr=1e-3", "model.dropout=0.2", "seed=11")


def checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_weights_only_best_checkpoint_holds_the_average_the_full_one_does(run_cfg) -> None:
    """Lightning writes the average into a checkpoint only for full checkpoints; a weights-only best
    checkpoint (save_weights_only=true, as the GPU experiments keep it) must hold the same average, not the
    raw weights; a full one must not hand its raw weights to test (Lightning restores callbacks for test
    too). Test and export see the weights that were validated."""
    full_metrics, full = run_cfg(*EMA, "++callbacks.model_checkpoint.save_weights_only=false")
    light_metrics, light = run_cfg(*EMA, "++callbacks.model_checkpoint.save_weights_only=true")
    (full_best,), (light_best,) = (list((run / "checkpoints").glob("best-*.ckpt")) for run in (full, light))
    assert full_best.name == light_best.name
    averaged, raw = checkpoint(full_best)["state_dict"], checkpoint(full_best)["current_model_state"]
    assert len(differing(averaged, raw)) > 10, "decay 0.5 over several steps must move the average off the weights"
    kept = checkpoint(light_best)
    assert differing(kept["state_dict"], averaged) == []
    assert "current_model_state" not in kept and "averaging_state" not in kept
    assert light_metrics["test/loss"] == full_metrics["test/loss"]  # both tested the average
    exported = load_file(full / "hf_model" / "model.safetensors")
    assert all(torch.equal(exported[k.removeprefix("model.")], averaged[k]) for k in averaged), "export: not the average"


def test_resume_continues_the_average_and_the_weights_exactly(run_cfg) -> None:
    """Checkpoint after 3 steps, resume: the last checkpoint's average and raw weights both equal the
    uninterrupted run's (the average's step count and values travel in the checkpoint)."""
    _, whole = run_cfg(*EMA, "callbacks.model_checkpoint.monitor=step", "callbacks.model_checkpoint.mode=max",
                       "callbacks.model_checkpoint.save_top_k=-1", "+callbacks.model_checkpoint.every_n_train_steps=3")
    mid = whole / "checkpoints" / "best-epoch00-step000003.ckpt"
    _, resumed = run_cfg(*EMA, f"ckpt_path={mid}")
    a, b = (checkpoint(run / "checkpoints" / "last.ckpt") for run in (whole, resumed))
    assert differing(a["state_dict"], a["current_model_state"]), "the last checkpoint must keep both weight sets"
    assert differing(a["state_dict"], b["state_dict"]) == []
    assert differing(a["current_model_state"], b["current_model_state"]) == []


def test_weight_averaging_under_fsdp_is_one_line(tmp_path) -> None:
    cfg = compose_cfg(tmp_path, "callbacks=ema", "trainer.strategy=fsdp")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == ("callbacks.ema averages a full copy of the weights, which FSDP shards: use "
                              "trainer=ddp, or drop the weight averaging (callbacks=default).")
