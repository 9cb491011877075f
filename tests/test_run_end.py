"""How a fit ends: last.ckpt holds the final state whatever the validation schedule, the val metrics
recorded are the tested (best) checkpoint's, and trainer.enable_progress_bar=false turns the bar off
instead of failing."""

import csv
import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ProgressBar

import tunelab.pipeline
from test_reliability import assert_same_weights

# validation every 3 steps, so an epoch's or a max_steps run's last steps come after its last validation;
# scheduler=none: the learning rate does not depend on max_steps, so runs of different lengths compare
TINY = ("data.train_limit=200", "trainer.val_check_interval=3", "trainer.limit_val_batches=2", "test=false",
        "scheduler=none", "model.dropout=0.1", "seed=3")


def last_ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def final_step(run_dir: Path) -> int:
    return json.loads((run_dir / "metrics.json").read_text())["global_step"]


def test_last_checkpoint_is_the_final_epoch_state_with_a_step_val_interval(run_cfg) -> None:
    """The epoch ends after its last validation: last.ckpt is still the end of the epoch, and a run resumed
    from it into a second epoch ends where an uninterrupted two-epoch run does."""
    _, one = run_cfg(*TINY, "trainer.max_epochs=1")
    step = final_step(one)
    assert step % 3, f"{step} steps: the epoch must end between validations for this test to mean anything"
    assert last_ckpt(one)["global_step"] == step
    _, resumed = run_cfg(*TINY, "trainer.max_epochs=2", f"ckpt_path={one / 'checkpoints' / 'last.ckpt'}")
    _, straight = run_cfg(*TINY, "trainer.max_epochs=2")
    assert final_step(resumed) == final_step(straight) == last_ckpt(resumed)["global_step"] == 2 * step
    assert_same_weights(last_ckpt(resumed)["state_dict"], last_ckpt(straight)["state_dict"])


def test_last_checkpoint_is_the_max_steps_state_mid_epoch(run_cfg) -> None:
    """max_steps=5 stops mid-epoch, two steps after the last validation: last.ckpt holds step 5 and the 5
    batches consumed, so resuming redoes none of them and ends with the weights of an uninterrupted run."""
    _, five = run_cfg(*TINY, "trainer.max_steps=5")
    ckpt = last_ckpt(five)
    assert final_step(five) == ckpt["global_step"] == 5
    assert ckpt["tunelab_loop_position"] == {"epoch": 0, "batches_done": 5}
    _, resumed = run_cfg(*TINY, "trainer.max_steps=8", f"ckpt_path={five / 'checkpoints' / 'last.ckpt'}")
    _, straight = run_cfg(*TINY, "trainer.max_steps=8")
    assert final_step(resumed) == last_ckpt(resumed)["global_step"] == 8
    assert_same_weights(last_ckpt(resumed)["state_dict"], last_ckpt(straight)["state_dict"])


def test_progress_bar_off_drops_the_bar_callback(run_cfg, monkeypatch) -> None:
    """The default callbacks include the bar (debug=quick drops it and turns the Trainer's off: put both back);
    enable_progress_bar=false leaves it out of the Trainer instead of Lightning's MisconfigurationException."""
    trainers = []
    build = tunelab.pipeline.build_trainer
    monkeypatch.setattr(tunelab.pipeline, "build_trainer", lambda cfg: trainers.append(build(cfg)) or trainers[-1])
    bar = "callbacks.progress_bar={_target_: tunelab.progress.progress_bar}"
    run_cfg("data.train_limit=64", "trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
            "export=false", bar, "trainer.enable_progress_bar=false")
    run_cfg("data.train_limit=64", "trainer.max_steps=2", "trainer.limit_val_batches=1", "test=false",
            "export=false", bar, "trainer.enable_progress_bar=true")
    off, on = (any(isinstance(c, ProgressBar) for c in t.callbacks) for t in trainers)
    assert not off, [type(c).__name__ for c in trainers[0].callbacks]
    assert on, "with the bar on, the configured progress callback is used"


def test_recorded_val_metrics_are_the_tested_checkpoints(run_cfg) -> None:
    """Sweep reports rank and Optuna optimizes what metrics.json records: the best checkpoint is tested, so
    its validation is recorded, not the last epoch's (here val/loss is lowest at epoch 4 of 6)."""
    metrics, run_dir = run_cfg("data.train_limit=64", "trainer.max_epochs=6", "optimizer.lr=5e-3", "scheduler=none",
                               "optimized_metric=val/loss")
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    per_epoch = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(per_epoch) == 6 and min(per_epoch) != per_epoch[-1]  # the case this test is about
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["metrics"]["val/loss"] == metrics["val/loss"] == min(per_epoch)
    assert "epoch04" in record["best_checkpoint"]
    # the other val metrics are that validation's too
    best_row = next(r for r in rows if r.get("val/loss") and float(r["val/loss"]) == min(per_epoch))
    assert record["metrics"]["val/acc"] == float(best_row["val/acc"])
