"""Each loss x optimizer runs one train/val/test batch (Lightning fast_dev_run) with the tiny model."""

import csv
import math

import pytest

LOSSES = {"cross_entropy": "sst2", "focal": "sst2", "mse": "stsb", "huber": "stsb", "smooth_l1": "stsb"}
OPTIMIZERS = ["sgd", "adamw", "adafactor", "adamax"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_loss_optimizer_fast_dev_run(run_cfg, loss: str, optimizer: str) -> None:
    metrics, _ = run_cfg(f"loss={loss}", f"data={LOSSES[loss]}", f"optimizer={optimizer}", "trainer=debug")
    assert math.isfinite(metrics["train/loss"])
    assert math.isfinite(metrics["test/loss"])


def logged_lrs(run_dir) -> list[float]:
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    key = next(k for k in rows[0] if k.startswith("lr-"))
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.parametrize("scheduler", ["none", "linear", "cosine", "constant_with_warmup"])
def test_schedulers_step_per_optimizer_step(run_cfg, scheduler: str) -> None:
    """6 optimizer steps, 3 of them warmup: the lr rises to the peak, then decays (or stays)."""
    warmup = ["scheduler.warmup_steps=3"] if scheduler != "none" else []
    _, run_dir = run_cfg(f"scheduler={scheduler}", "trainer.max_steps=6", "data.train_limit=64", "data.batch_size=8",
                         "trainer.log_every_n_steps=1", "optimizer.lr=1e-3", *warmup)
    lrs = logged_lrs(run_dir)
    assert len(lrs) == 6
    if scheduler == "none":
        assert lrs == pytest.approx([1e-3] * 6)
        return
    assert lrs[:4] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3])  # linear warmup over 3 steps
    if scheduler == "constant_with_warmup":
        assert lrs[4:] == pytest.approx([1e-3, 1e-3])
    else:
        assert lrs[3] > lrs[4] > lrs[5] > 0
