"""Interruption, resume, bad numbers, secrets and run dirs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, ROOT, compose_cfg, run_script
from tunelab.errors import ConfigError, RunInterrupted, TrainingError

# a deterministic CPU run long enough to interrupt: 400 rows / batch 8 = 50 steps per epoch, 2 epochs
LONG = ["debug=quick", f"paths.data_dir={FIXTURES}", "data.train_limit=400", "data.batch_size=8",
        "trainer.max_epochs=2", "optimizer.lr=1e-3", "model.dropout=0.1", "seed=5", "test=false"]


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_mid_epoch_resume_equals_uninterrupted(run_cfg, precision) -> None:
    """Checkpoint after 3 of an epoch's 6 batches; a run resumed from it ends with identical weights
    (remaining batches of that epoch in the same order, optimizer/scheduler/RNG restored). 45 rows in
    batches of 8, grouped by length: the short batch lands inside the first three. Under bf16-true the restored
    metric states went through the module's conversion to bf16 (train/loss_epoch off by its rounding)."""
    args = ("data.train_limit=45", "data.batch_size=8", "data.group_by_length=true", "trainer.max_epochs=2",
            "optimizer.lr=1e-3", "model.dropout=0.2", "seed=11", f"trainer.precision={precision}")
    _, full = run_cfg(*args, "callbacks.model_checkpoint.monitor=step", "callbacks.model_checkpoint.mode=max",
                      "callbacks.model_checkpoint.save_top_k=-1", "+callbacks.model_checkpoint.every_n_train_steps=3")
    mid = full / "checkpoints" / "best-epoch00-step000003.ckpt"
    assert mid.is_file(), sorted(p.name for p in (full / "checkpoints").iterdir())
    _, resumed = run_cfg(*args, f"ckpt_path={mid}")
    assert_same_weights(state_dict(full / "checkpoints" / "last.ckpt"), state_dict(resumed / "checkpoints" / "last.ckpt"))
    # the resumed epoch's train/* cover all its batches (the checkpoint kept the first three's metric states)
    epoch_rows = [[r for r in csv.DictReader(open(run / "csv" / "metrics.csv")) if r.get("train/acc")] for run in (full, resumed)]
    assert [[(r["epoch"], r["train/acc"], r["train/loss_epoch"]) for r in rows] for rows in epoch_rows] == 2 * [
        [(r["epoch"], r["train/acc"], r["train/loss_epoch"]) for r in epoch_rows[0]]]
    # resumed in epoch 1, its metrics.csv starts with the rows logged before the checkpoint (epoch 0's)
    _, resumed = run_cfg(*args, f"ckpt_path={full / 'checkpoints' / 'best-epoch01-step000009.ckpt'}")
    history = [list(csv.DictReader(open(run / "csv" / "metrics.csv"))) for run in (full, resumed)]
    assert [[(r["step"], r["val/acc"]) for r in rows if r.get("val/acc")] for rows in history] == 2 * [
        [("5", history[0][0]["val/acc"]), ("11", history[0][2]["val/acc"])]]
    assert [rows[1]["train/acc"] for rows in history] == 2 * [history[0][1]["train/acc"]]  # epoch 0's


def test_training_on_after_a_max_steps_stop_trains_the_rest_of_its_epoch(tmp_path, cache_dir, caplog) -> None:
    """max_steps=4 ends fit inside epoch 0 (6 batches); training on from its last.ckpt to 2 epochs trains that
    epoch's last 2 batches too (Lightning restored a checkpoint saved at the early epoch end as a finished
    epoch: 10 steps, not 12) and ends as the uninterrupted run does: a constant lr (scheduler=none), so the
    changed length shapes no schedule. With a schedule, the changed length is a warning."""
    from omegaconf import OmegaConf

    from tunelab.pipeline import run

    args = ("data.train_limit=45", "data.batch_size=8", "trainer.max_epochs=2", "optimizer.lr=1e-3",
            "model.dropout=0.2", "seed=11", "scheduler=none")

    def train(name: str, *overrides: str) -> Path:
        cfg = compose_cfg(tmp_path / name, *args, *overrides, cache=cache_dir)
        run(cfg)
        (tmp_path / name / ".hydra").mkdir()
        OmegaConf.save(cfg, tmp_path / name / ".hydra" / "config.yaml")  # as Hydra keeps it in a run dir
        return tmp_path / name

    full, stopped = train("full"), train("stopped", "trainer.max_steps=4")
    resumed = train("resumed", f"ckpt_path={stopped / 'checkpoints' / 'last.ckpt'}")
    assert json.loads((resumed / "metrics.json").read_text())["global_step"] == 12
    assert_same_weights(state_dict(full / "checkpoints" / "last.ckpt"), state_dict(resumed / "checkpoints" / "last.ckpt"))
    assert "another length" not in caplog.text  # no schedule to rebuild
    with_schedule = [a if a != "scheduler=none" else "scheduler=linear" for a in args]
    args = tuple(with_schedule)
    linear = train("linear", "trainer.max_steps=4")
    linear_on = train("linear_on", f"ckpt_path={linear / 'checkpoints' / 'last.ckpt'}", "trainer.log_every_n_steps=1")
    assert "was trained for another length (trainer.max_steps=4 -> -1): the learning-rate schedule is rebuilt" in caplog.text
    # the first step trained on runs at the rebuilt schedule's lr (12 steps, warmup 1), not the stopped one's last (0)
    lrs = {int(r["step"]): float(r["lr-AdamW/pg1"]) for r in csv.DictReader(open(linear_on / "csv" / "metrics.csv"))
           if r.get("lr-AdamW/pg1")}
    assert lrs[4] == pytest.approx(1e-3 * (12 - 4) / (12 - 1)) and lrs[5] == pytest.approx(1e-3 * (12 - 5) / (12 - 1))


def test_a_stop_on_a_logging_step_keeps_that_steps_logged_values(run_cfg) -> None:
    """Stopped at a step the loggers write (log_every_n_steps=2, step 4): the resumed run's metrics.csv has every
    train/loss_step row of the uninterrupted run, the checkpoint's own step included, with the same values."""
    import csv

    args = ("data.train_limit=48", "data.batch_size=8", "trainer.max_epochs=1", "optimizer.lr=1e-3", "seed=3",
            "trainer.log_every_n_steps=2", "test=false", "export=false")

    def losses(run_dir: Path) -> list[tuple[str, str]]:
        rows = csv.DictReader(open(run_dir / "csv" / "metrics.csv"))
        return [(r["step"], r["train/loss_step"]) for r in rows if r.get("train/loss_step")]

    _, straight = run_cfg(*args)
    with pytest.raises(RunInterrupted) as stop:
        run_cfg(*args, "+callbacks.signal._target_=tests.ddp_rows.SignalAtBatch", "+callbacks.signal.batch=3")
    last = Path(stop.value.checkpoint)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    _, resumed = run_cfg(*args, f"ckpt_path={last}")
    assert losses(straight) == losses(resumed) and ("3", losses(straight)[1][1]) in losses(resumed)


def test_a_stop_between_accumulated_batches_waits_for_the_step_and_resumes_exactly(run_cfg) -> None:
    """With gradient accumulation a signal after the first batch of a pair stops after the second, at the
    optimizer step (a checkpoint between them would drop the gradients summed so far), and resuming from it
    ends with the weights of an uninterrupted run."""
    args = ("data.train_limit=48", "data.batch_size=8", "trainer.accumulate_grad_batches=2", "trainer.max_epochs=2",
            "optimizer.lr=1e-3", "model.dropout=0.1", "seed=3")
    _, straight = run_cfg(*args)
    with pytest.raises(RunInterrupted) as stop:  # the CLI turns it into exit status 143
        run_cfg(*args, "+callbacks.signal._target_=tests.ddp_rows.SignalAtBatch", "+callbacks.signal.batch=2")
    last = Path(stop.value.checkpoint)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["tunelab_loop_position"]["batches_done"] == 4  # not 3
    _, resumed = run_cfg(*args, f"ckpt_path={last}")
    assert_same_weights(state_dict(straight / "checkpoints" / "last.ckpt"), state_dict(resumed / "checkpoints" / "last.ckpt"))


def _start(run_dir: Path, *extra: str, script: tuple[str, ...] = ("train.py",)) -> subprocess.Popen:
    # its own process group: a test that fails can kill the run with every rank it started
    return subprocess.Popen(
        [sys.executable, *script, *LONG, *extra, f"hydra.run.dir={run_dir}"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path.name} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.05)


def test_kill_9_then_resume_matches_uninterrupted_run(tmp_path) -> None:
    """kill -9 mid-run: the periodic last.ckpt is intact (atomic writes) and resuming from it ends with
    the weights of an uninterrupted run."""
    killed = tmp_path / "killed"
    proc = _start(killed, "callbacks.last_checkpoint.every_n_train_steps=10")
    last = killed / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # never truncated
    assert 0 < ckpt["global_step"] < 100, ckpt["global_step"]

    resumed = tmp_path / "resumed"
    done = run_script("train.py", *LONG, f"ckpt_path={last}", f"hydra.run.dir={resumed}")
    assert done.returncode == 0, done.stderr[-3000:]
    straight = tmp_path / "straight"
    done = run_script("train.py", *LONG, f"hydra.run.dir={straight}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(state_dict(straight / "checkpoints" / "last.ckpt"), state_dict(resumed / "checkpoints" / "last.ckpt"))


def test_sigterm_saves_resumable_checkpoint_and_exits_143(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "callbacks.last_checkpoint.every_n_train_steps=5")
    last = run_dir / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    periodic_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]  # 143, as a shell reports a signalled command
    assert "resume with ckpt_path=" in out
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    stopped_at = int(out.split("interrupted at step ")[1].split(":")[0])
    # stopped at the signal, not at the end of the first epoch (min_epochs=1) or of the run
    assert periodic_step <= ckpt["global_step"] == stopped_at < 50
    assert "tunelab_loop_position" in ckpt and "optimizer_states" in ckpt
    resumed = run_script("train.py", *LONG, f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["global_step"] == 100


def test_sigusr2_writes_last_ckpt_before_the_launchers_own_handler_requeues(tmp_path) -> None:
    """submitit's pre-emption notice is SIGUSR2, whose handler requeues the job and exits at once. The run takes the
    signal like SIGTERM (finish the step, write last.ckpt) and then hands it to that handler: the requeued job loses
    nothing, not the steps since the last periodic checkpoint."""
    run_dir, handed_over = tmp_path / "run", tmp_path / "handed_over"
    last = run_dir / "checkpoints" / "last.ckpt"
    submitit_like = (
        "import runpy, signal, sys, torch\n"
        "def requeue(signum, frame):  # records the checkpoint on disk when it runs, exits as submitit's does\n"
        f"    step = torch.load({str(last)!r}, map_location='cpu', weights_only=True)['global_step']\n"
        f"    open({str(handed_over)!r}, 'w').write(str(step))\n"
        "    sys.exit(-1)\n"
        "signal.signal(signal.SIGUSR2, requeue)\n"
        "sys.argv[0] = 'train.py'\n"
        "runpy.run_path('train.py', run_name='__main__')\n")
    proc = _start(run_dir, "callbacks.last_checkpoint.every_n_train_steps=5", script=("-c", submitit_like))
    _wait_for(last, proc)
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 255, out[-3000:]  # the handler's exit, not 128 + 12
    stopped_at = int(out.split("interrupted at step ")[1].split(":")[0])
    assert int(handed_over.read_text()) == stopped_at < 50  # at the signal's step, not the epoch's end


def test_a_requeued_slurm_job_goes_on_from_its_own_last_checkpoint(tmp_path, cache_dir, monkeypatch, caplog) -> None:
    """A requeued job runs its command again in its run dir: with SLURM_RESTART_COUNT set it resumes from the
    last.ckpt of its stop, where the same command otherwise refuses the used dir."""
    from tunelab.pipeline import run

    args = ("data.train_limit=48", "data.batch_size=8", "trainer.max_epochs=2", "seed=3")
    out = tmp_path / "job"
    with pytest.raises(RunInterrupted) as stop:
        run(compose_cfg(out, *args, "+callbacks.signal._target_=tests.ddp_rows.SignalAtBatch",
                        "+callbacks.signal.batch=2", f"+callbacks.signal.signum={int(signal.SIGUSR2)}", cache=cache_dir))
    assert stop.value.signum == signal.SIGUSR2
    with pytest.raises(ConfigError, match="already holds a run"):
        run(compose_cfg(out, *args, cache=cache_dir))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run(compose_cfg(out, *args, cache=cache_dir))
    assert f"resuming from {out / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 12


def test_a_signal_during_the_last_validation_stops_before_test(run_cfg, monkeypatch) -> None:
    """A SIGTERM after the last training step (here: in the last validation) stops the run with a last.ckpt, before
    the test and the export, and resuming from it gives the uninterrupted test."""
    from tunelab.resilience import Resilience

    args = ("data.train_limit=32", "data.batch_size=8", "trainer.max_epochs=2", "seed=4")
    uninterrupted, _ = run_cfg(*args)

    def signal_in_last_validation(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
            self.stop_signal = signal.SIGTERM

    monkeypatch.setattr(Resilience, "on_validation_end", signal_in_last_validation, raising=False)
    with pytest.raises(RunInterrupted) as stopped:
        run_cfg(*args)
    monkeypatch.undo()
    run_dir = Path(stopped.value.checkpoint).parent.parent
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "predictions.jsonl").exists()
    resumed, _ = run_cfg(*args, f"ckpt_path={stopped.value.checkpoint}")
    assert {k: v for k, v in resumed.items() if k.startswith("test/")} == {
        k: v for k, v in uninterrupted.items() if k.startswith("test/")}


def test_nan_loss_stops_with_step_and_checkpoint(run_cfg, recwarn) -> None:
    with pytest.raises(TrainingError, match=r"non-finite training loss .* at step \d+ \(epoch 0\); last good checkpoint: "):
        run_cfg("optimizer=sgd", "optimizer.lr=1e30", "data.train_limit=64", "data.batch_size=8", "trainer.max_epochs=1")
    # the error line alone: reading the loss for it warns nothing (torch warns on float() of a grad tensor)
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]


def test_deferred_nan_check_names_the_first_bad_step_and_never_checkpoints_it(tmp_path) -> None:
    # the accelerator path (no host sync per step), forced on CPU: losses are checked every 4 steps and
    # before every checkpoint; the error names the first non-finite step, not the step it was read at
    from tunelab.config import compose_config
    from tunelab.pipeline import run
    from tunelab.resilience import Resilience

    overrides = [*LONG, "optimizer=sgd", "optimizer.lr=1e30", "trainer.max_epochs=1",
                 "callbacks.last_checkpoint.every_n_train_steps=1"]
    original = Resilience.__init__

    def deferred(self, *args, **kwargs):
        original(self, *args, **kwargs, defer_nan_check=True, nan_check_every=4)

    Resilience.__init__ = deferred
    try:
        with pytest.raises(TrainingError, match=r"non-finite training loss at step (\d+) \(epoch 0\)") as err:
            run(compose_config(overrides, tmp_path))
    finally:
        Resilience.__init__ = original
    bad_step = int(err.value.args[0].split("at step ")[1].split()[0])
    assert bad_step <= 2  # lr 1e30 blows up within the first steps
    last = tmp_path / "checkpoints" / "last.ckpt"
    if last.exists():  # the only checkpoints written are from before the bad step
        weights = state_dict(last)
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_nan_loss_skip_counts_skipped_batches(run_cfg) -> None:
    metrics, _ = run_cfg("optimizer=sgd", "optimizer.lr=1e30", "data.train_limit=64", "data.batch_size=8",
                         "trainer.max_epochs=1", "on_nan=skip", "test=false")
    assert metrics["train/skipped_batches"] >= 1


def test_wandb_key_never_lands_in_run_dir(tmp_path) -> None:
    secret, token = "sk-test-5ecret-4a7b9", "hf_t0ken5ecret"
    proc = run_script("train.py", "debug=fdr", "model=tiny", "logger=wandb", "trainer=cpu", f"paths.data_dir={FIXTURES}",
                      "+callbacks.notify._target_=tests.ddp_rows.NotifyWithToken", f"+callbacks.notify.token={token}",
                      f"hydra.run.dir={tmp_path}",
                      env={"WANDB_API_KEY": secret, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("wandb" in str(p) for p in files)
    leaks = [p for p in files if secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    # a secret override: redacted in W&B's config and in the command line of its run metadata (wandb sync sends both)
    leaks = [p for p in files if "wandb" in p.relative_to(tmp_path).parts and token.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert secret not in proc.stdout + proc.stderr


def test_redact_secrets() -> None:
    from tunelab.redaction import redact_argument, redact_secrets

    os.environ["WANDB_API_KEY"] = "abc123secret"
    try:
        out = redact_secrets({"logger": {"api_key": "xyz", "url": "https://u:abc123secret@h"}, "lr": 0.1})
    finally:
        del os.environ["WANDB_API_KEY"]
    assert out == {"logger": {"api_key": "***", "url": "https://u:***@h"}, "lr": 0.1}
    # secrets by their key's last word; settings runs are compared by keep their values (tokenizer, *_tokens)
    secrets = ["+model.token=t", "model.hf_token=t", "logger.wandb.api_key=t", "db.password=t", "client_secret=t"]
    settings = ["model.tokenizer=/tok", "data.token_column=tags", "peft.num_virtual_tokens=20",
                "callbacks.generate.max_new_tokens=40"]
    assert [redact_argument(a) for a in secrets] == [a[:-1] + "***" for a in secrets]
    assert [redact_argument(a) for a in settings] == settings


def test_run_dirs_are_unique_and_never_overwritten(tmp_path, cache_dir) -> None:
    args = ["debug=fdr", "model=tiny", "trainer=cpu", f"paths.data_dir={FIXTURES}", f"paths.log_dir={tmp_path}"]
    # one thread each: two runs sharing two cores with two spinning OpenMP threads each run several times slower
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert len(list(tmp_path.glob("debug/runs/*/metrics.json"))) == 2  # started together, two dirs

    from tunelab.pipeline import run

    run_dir = next(tmp_path.glob("debug/runs/*"))
    with pytest.raises(ConfigError) as err:
        run(compose_cfg(run_dir, "debug=fdr", cache=cache_dir))
    assert str(err.value) == (f"run dir {run_dir} already holds a run; pass overwrite=true to replace it or choose "
                              "another hydra.run.dir.")
    stale = run_dir / "checkpoints" / "best-epoch09-step000999.ckpt"  # the replaced run's: it must not pass for the new one's
    stale.write_bytes(b"old")
    assert run(compose_cfg(run_dir, "debug=fdr", "overwrite=true", cache=cache_dir))["test/acc"] >= 0
    assert not stale.exists() and (run_dir / "metrics.json").is_file()


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "RANK", "SLURM_PROCID"])
def test_only_the_first_rank_claims_the_run_dir(tmp_path, monkeypatch, variable) -> None:
    """Rank 0 claims the dir; the other ranks of its run use it, however they were launched (Lightning's children,
    torchrun, one SLURM task per device): a SLURM task 1 refused the dir as "taken by another run"."""
    from tunelab.rundir import claim_run_dir

    cfg = compose_cfg(tmp_path / "run", "debug=fdr")
    for key in ("LOCAL_RANK", "RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(variable, "0")
    assert claim_run_dir(cfg, None) == tmp_path / "run" / ".tunelab_run"  # rank 0 took it
    monkeypatch.setenv(variable, "1")
    assert claim_run_dir(cfg, None) is None  # rank 1: the same run, no error


def test_empty_split_and_truncation_are_reported(run_cfg, tmp_path, caplog) -> None:
    empty = tmp_path / "empty_test.tsv"
    empty.write_text("sentence\tlabel\n")
    with pytest.raises(ConfigError, match="empty_test.tsv has a header but no rows"):
        run_cfg(f"data.test_file={empty}", "trainer=debug")
    with caplog.at_level("WARNING"):
        run_cfg("data.max_length=8", "trainer=debug", "data.train_limit=32")
    truncated = [r.getMessage() for r in caplog.records if "truncated to data.max_length=8" in r.getMessage()]
    assert len(truncated) == 1 and int(truncated[0].split()[0]) > 0


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lrr=0.1", "unknown config key 'optimizer.lrr': did you mean optimizer.lr?"),
        ("optimizer=adamz", "optimizer=adamz is not an option; choose one of: adafactor, adamax, adamw, sgd"),
        ("optimizer.lr=[", "cannot parse the override 'optimizer.lr=[': no viable alternative at input '[' "
                           "(quote values with special characters)"),
    ],
)
@pytest.mark.parametrize("mode", ["run", "multirun"])
def test_config_typos_are_one_readable_line(override, message, mode, tmp_path) -> None:
    extra = ["-m", f"hydra.sweep.dir={tmp_path}"] if mode == "multirun" else []
    proc = run_script("train.py", *extra, override)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {message}" + (" (to add a new key write +optimizer.lrr=...)" if "lrr" in override else "")


def test_ranks_agree_on_a_stop_every_few_batches_not_every_step(tmp_path) -> None:
    """Under DDP the stop agreement is a collective and a host sync: Resilience reduces the decision every
    stop_check_every batches (the same batches on every rank) and stops all ranks at the first check after
    a signal."""
    from types import SimpleNamespace

    from tunelab.resilience import Interrupted, Resilience

    reductions = []

    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:
        reductions.append(decision)
        return decision

    def run(signal_at: int, batches_per_epoch: int) -> tuple[int, list]:
        reductions.clear()
        saved = []
        trainer = SimpleNamespace(world_size=2, should_stop=False, global_step=0, default_root_dir=str(tmp_path),
                                  num_training_batches=batches_per_epoch, save_checkpoint=saved.append,
                                  strategy=SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision),
                                  _logger_connector=SimpleNamespace(update_train_step_metrics=lambda: None))
        guard = Resilience(stop_check_every=10)
        for batch in range(1, 101):
            if batch == signal_at:
                guard._request_stop(signal.SIGTERM, None)
            trainer.global_step = batch  # an optimizer step per batch
            try:
                guard.on_train_batch_end(trainer, None, None, None, (batch - 1) % batches_per_epoch)
            except Interrupted:
                assert [p.name for p in saved] == ["last.ckpt"]
                return batch, list(reductions)
        return batch, list(reductions)

    assert run(signal_at=12, batches_per_epoch=100) == (20, [False, True])  # batches 10 and 20 only
    # and at each epoch's last batch, so a signal after the epoch's last multiple of 10 is not lost
    assert run(signal_at=22, batches_per_epoch=25) == (25, [False, False, True])


def test_sigterm_to_one_ddp_rank_stops_both_with_a_resumable_checkpoint(tmp_path) -> None:
    """SIGTERM to rank 0 only (rank 1 never sees it): at the next agreement both ranks write last.ckpt and
    stop at the same step; the run exits (143) instead of leaving rank 1 waiting in a collective."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                  "callbacks.last_checkpoint.every_n_train_steps=5")
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        _wait_for(last, proc)
        proc.send_signal(signal.SIGTERM)  # the launching process is rank 0
        out, _ = proc.communicate(timeout=180)  # ranks that disagree hang in a collective until this
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # every rank still running (none after a clean exit)
        except ProcessLookupError:
            pass
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]  # 143, as a shell reports a signalled command
    assert "resume with ckpt_path=" in out
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    stopped_at = int(out.split("interrupted at step ")[1].split(":")[0])
    # 2 epochs of 25 steps per rank; the ranks agree every 10 batches and at each epoch's end
    assert ckpt["global_step"] == stopped_at and (stopped_at % 10 == 0 or stopped_at == 25), stopped_at


def test_a_resumed_ddp_run_ends_with_the_uninterrupted_runs_weights(tmp_path) -> None:
    """Each rank draws its own dropout masks: every rank resumes its own random streams (the checkpoint holds each
    rank's), so the resumed run's weights equal the uninterrupted run's bit for bit."""
    args = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", *LONG, "data.train_limit=80",
            "trainer.max_epochs=2", "scheduler=none", "export=false", "plots=false", "logger=csv"]
    straight = run_script("train.py", *args, f"hydra.run.dir={tmp_path / 'straight'}", timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    stop = ("+callbacks.signal._target_=tests.ddp_rows.SignalAtBatch", "+callbacks.signal.batch=1")
    stopped = run_script("train.py", *args, *stop, f"hydra.run.dir={tmp_path / 'resumed'}", timeout=300)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 5  # the first epoch's end
    resumed = run_script("train.py", *args, f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'resumed'}", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(state_dict(tmp_path / "straight" / "checkpoints" / "last.ckpt"), state_dict(last))


def test_a_nan_loss_on_one_ddp_rank_stops_every_rank(tmp_path) -> None:
    """Under DDP a non-finite loss on one rank stops all of them with the error naming its step (the
    ranks read their deferred flags together). A rank stopping alone fails the other in its next collective,
    and the run ends with gloo's "Connection closed by peer" in place of the loss error."""
    proc = _start(tmp_path / "run", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                  "+callbacks.nan._target_=tests.ddp_rows.NonFiniteLossOnRank1", "+callbacks.nan.step=2")
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode != 0
    # the gradients stay finite, so rank 0's losses do too: only the gathered flags stop it, with rank 1's step
    assert out.count("non-finite training loss at step 2 (epoch 0)") >= 2 and "Connection closed" not in out, out[-3000:]


def test_on_nan_skip_with_devices_resolved_by_lightning_is_refused() -> None:
    """devices="auto" / -1 on a GPU machine is known as several processes only once Lightning resolves it:
    Resilience refuses on_nan=skip there, on every rank, with the config check's message."""
    from types import SimpleNamespace

    from tunelab.resilience import Resilience

    with pytest.raises(ConfigError, match=r"^on_nan=skip needs one process, not 4; use on_nan=stop"):
        Resilience(on_nan="skip").setup(SimpleNamespace(world_size=4), None, "fit")
    Resilience(on_nan="skip").setup(SimpleNamespace(world_size=1), None, "fit")
    Resilience(on_nan="stop").setup(SimpleNamespace(world_size=4), None, "fit")
