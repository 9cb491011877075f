"""Training behaviour on real rows: learning happens, seeds reproduce, resume equals uninterrupted."""

import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, SHARED_DATA, read_metrics, run_script


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


def test_minilm_learns_sst2_rows(run_cfg) -> None:
    """The pretrained model on 512 real SST-2 rows: loss falls and test accuracy beats chance clearly."""
    metrics, run_dir = run_cfg(
        "model=minilm", "data.train_limit=512", "data.batch_size=16", "optimizer.lr=1e-4",
        "trainer.max_epochs=2", "data.group_by_length=true", "trainer.log_every_n_steps=4",
    )
    import csv

    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    train_losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(train_losses) >= 4
    first, last = sum(train_losses[:2]) / 2, sum(train_losses[-2:]) / 2
    assert last < first, f"train loss did not fall: {train_losses}"
    assert metrics["test/acc"] >= 0.70, metrics
    report = json.loads((run_dir / "test_report.json").read_text())
    assert report["support"] == 200 and set(report["classes"]) == {"negative", "positive"}


def test_same_seed_same_metrics_different_seed_differs(run_cfg) -> None:
    args = ("data.train_limit=128", "data.batch_size=16", "trainer.max_epochs=2", "optimizer.lr=1e-3")
    a, _ = run_cfg(*args, "seed=7")
    b, _ = run_cfg(*args, "seed=7")
    c, _ = run_cfg(*args, "seed=8")
    keys = [k for k in a if k.startswith(("val/", "test/", "train/"))]
    assert keys and all(a[k] == b[k] for k in keys), {k: (a[k], b[k]) for k in keys if a[k] != b[k]}
    assert any(a[k] != c[k] for k in keys)


def test_resume_from_checkpoint_equals_uninterrupted_run(run_cfg) -> None:
    """Train 3 epochs keeping every epoch's checkpoint; resume a new run from the epoch-1 checkpoint:
    it ends with exactly the weights of the uninterrupted run (data order, optimizer, scheduler and
    dropout RNG all restored)."""
    args = ("data.train_limit=96", "data.batch_size=16", "optimizer.lr=1e-3", "seed=3", "model.dropout=0.2",
            "trainer.max_epochs=3")
    _, full = run_cfg(*args, "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.monitor=step",
                      "callbacks.model_checkpoint.mode=max")
    first_epoch = full / "checkpoints" / "best-epoch00-step000006.ckpt"
    _, resumed = run_cfg(*args, f"ckpt_path={first_epoch}")
    a, b = final_weights(full), final_weights(resumed)
    mid = torch.load(first_epoch, map_location="cpu", weights_only=True)["state_dict"]
    assert any(not torch.equal(a[k], mid[k]) for k in a), "resumed run did not train further"
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume by {(a[k] - b[k]).abs().max()}"


def test_eval_script_tests_a_checkpoint(run_cfg, tmp_path) -> None:
    metrics, run_dir = run_cfg("data.train_limit=64", "trainer.max_epochs=1")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc = run_script("eval.py", f"ckpt_path={ckpt}", "model=tiny", f"paths.data_dir={FIXTURES}",
                      "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = read_metrics(tmp_path / "eval")
    assert (tmp_path / "eval" / "test_report.txt").is_file()
    assert 0.0 <= evaluated["test/acc"] <= 1.0


def test_ddp_two_cpu_processes(tmp_path) -> None:
    """Lightning DDP with 2 gloo processes on CPU: both ranks train, rank 0 writes the run dir once."""
    proc = run_script(
        "train.py", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "model=tiny", "logger=csv",
        f"paths.data_dir={FIXTURES}", "data.train_limit=64", "data.batch_size=8", "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 64 rows / (8 per batch x 2 ranks) = 4 optimizer steps per epoch
    assert metrics["global_step"] == 4
    assert "test/acc" in metrics["metrics"]


def test_multirun_with_ddp_runs_each_job_once(tmp_path) -> None:
    """`-m` + trainer=ddp must not relaunch the sweep in child ranks (Hydra/Lightning pitfall)."""
    proc = run_script(
        "train.py", "-m", "seed=1,2", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "model=tiny",
        "logger=csv", f"paths.data_dir={FIXTURES}", "data.train_limit=32", "data.batch_size=8",
        "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}", timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent.name for p in tmp_path.glob("*/metrics.json"))
    assert jobs == ["0", "1"]
    assert len(list(tmp_path.rglob("multirun.yaml"))) == 1
    # a child rank that relaunched the sweep would print Hydra's launch banner again
    assert (proc.stdout + proc.stderr).count("Launching 2 jobs locally") == 1


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="needs ../shared/data")
def test_shared_data_layout_is_read(run_cfg) -> None:
    """The documented configs read ../shared/data directly (what make train uses)."""
    metrics, _ = run_cfg(f"paths.data_dir={SHARED_DATA}", "data=stsb", "loss=mse", "data.train_limit=64", "trainer=debug")
    assert "test/spearman" in metrics
