"""Every loss and every optimizer runs one train/val/test batch (Lightning fast_dev_run) with the tiny
model: each loss once, the optimizers spread over them so each runs once on each kind of target."""

import csv
import math

import pytest

# (loss, data, optimizer): every loss and every optimizer appears; sgd and adamw see both
# classification and regression
CASES = [
    ("cross_entropy", "sst2", "sgd"),
    ("focal", "sst2", "adafactor"),
    ("mse", "stsb", "adamw"),
    ("huber", "stsb", "adamax"),
    ("smooth_l1", "stsb", "sgd"),
    ("cross_entropy", "sst2", "adamw"),
    ("cross_entropy_smoothed", "sst2", "adamax"),
    ("mse", "sst2", "adafactor"),  # square loss on classification
]


@pytest.mark.parametrize("loss,data,optimizer", CASES)
def test_loss_optimizer_fast_dev_run(run_cfg, loss: str, data: str, optimizer: str) -> None:
    metrics, _ = run_cfg(f"loss={loss}", f"data={data}", f"optimizer={optimizer}", "trainer=debug")
    assert math.isfinite(metrics["train/loss_epoch"])
    assert math.isfinite(metrics["test/loss"])


def test_cases_cover_every_loss_and_optimizer() -> None:
    from conftest import ROOT

    options = lambda group: {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}  # noqa: E731
    # token, next-token and multi-label losses run in their tasks' tests (bce: tests/test_multilabel.py)
    sequence_losses = options("loss") - {"token_cross_entropy", "next_token_cross_entropy", "bce"}
    assert {c[0] for c in CASES} >= sequence_losses
    assert {c[2] for c in CASES} == options("optimizer")


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
