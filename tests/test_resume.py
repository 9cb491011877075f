"""Resuming continues the run a checkpoint holds: another loss, optimizer or seed on the command line is
refused (the continued run would be recorded under settings it did not train with), `ckpt_path=last` finds
sweep jobs' checkpoints too, and a sweep run again in its own dir resumes every job from its own."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FIXTURES, compose_cfg, run_script
from tunelab.errors import ConfigError
from tunelab.pipeline import run
from tunelab.rundir import resolve_ckpt_path

TINY = ["data.train_limit=32", "data.batch_size=8", "trainer.max_epochs=1", "test=false"]
SWEEP = ["-m", "seed=1,2", "debug=quick", f"paths.data_dir={FIXTURES}", "logger=csv", *TINY]


@pytest.fixture(scope="module")
def last_ckpt(tmp_path_factory, cache_dir) -> str:
    out = tmp_path_factory.mktemp("trained")
    run(compose_cfg(out, *TINY, "seed=3", cache=cache_dir))
    return str(out / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("override,said", [
    ("loss=focal", "loss._target_=tunelab.losses.CrossEntropyLoss, this run says tunelab.losses.FocalLoss"),
    ("optimizer.lr=0.5", "optimizer.lr=5e-05, this run says 0.5"),
    ("scheduler=cosine", "scheduler._target_=transformers.get_linear_schedule_with_warmup, this run says "
                         "transformers.get_cosine_schedule_with_warmup"),
    ("model.dropout=0.3", "model.dropout=None, this run says 0.3"),  # the model, not only its path
])
def test_resuming_with_other_settings_is_one_line(last_ckpt, tmp_path, cache_dir, override, said) -> None:
    with pytest.raises(ConfigError) as err:
        run(compose_cfg(tmp_path, *TINY, "seed=3", "trainer.max_epochs=2", override, f"ckpt_path={last_ckpt}",
                        cache=cache_dir))
    assert str(err.value) == (f"ckpt_path={last_ckpt} was trained with {said}: resuming continues that run, so pass "
                              "its settings (its .hydra/overrides.yaml), or train from scratch without ckpt_path.")


@pytest.mark.parametrize("case", ["relative model path", "relative data dir", "trained tokenizer", "export settings",
                                  "kernel and padding", "a key the checkpoint predates"])
def test_resuming_with_the_runs_own_settings_goes_on(tmp_path, case) -> None:
    """The run's own settings, spelled as the user typed them, resume it: a relative model or data path (the
    checkpoint names it absolute), a tokenizer trained on the text (the checkpoint names its dir), settings that only
    change what is written after training or how a step runs, and a checkpoint written before a config key existed.
    Each was refused, telling the user to pass the overrides they had passed."""
    first = ["debug=quick", "logger=csv", f"paths.data_dir={FIXTURES}", "export=false", "plots=false", *TINY]
    then = list(first)
    if case == "relative model path":
        first.append(f"model.tokenizer={os.path.relpath(OmegaConf.create({'p': '${minilm_path:}'}).p)}")
        then = list(first)
    elif case == "relative data dir":
        then.append(f"paths.data_dir={os.path.relpath(FIXTURES)}")
    elif case == "trained tokenizer":
        first += ["model=gpt2_tiny", "data=text", f"data.train_file={FIXTURES / 'lm' / 'input.txt'}",
                  "loss=next_token_cross_entropy", "data.block_size=32", "data.train_limit=16", "model.config.n_layer=1"]
        then = list(first)
    elif case == "export settings":  # LoRA on the pretrained MiniLM (an adapter needs a pretrained base)
        first += ["model=minilm", "data.max_length=32", "peft=lora"]
        then = [*first, "peft.save_adapter=true", "peft.merge_on_save=true"]
    elif case == "kernel and padding":
        then += ["optimizer.fused=false", "data.pad_to_multiple_of=16"]
    proc = run_script("train.py", *first, f"hydra.run.dir={tmp_path / 'a'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    if case == "a key the checkpoint predates":  # as written by a version without model.trust_remote_code
        state = torch.load(ckpt, weights_only=False)
        del state["hyper_parameters"]["model"]["trust_remote_code"]
        torch.save(state, ckpt)
        saved = tmp_path / "a" / ".hydra" / "config.yaml"
        config = OmegaConf.load(saved)
        del config.model["trust_remote_code"]
        OmegaConf.save(config, saved)
    proc = run_script("train.py", *then, "trainer.max_epochs=2", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'b'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] for d in "ab"]
    assert 0 < steps[0] < steps[1]  # the second epoch trained on from the first


def test_ckpt_path_last_that_found_another_run_says_how_it_chose(tmp_path) -> None:
    """Runs share task_name=train unless named: ckpt_path=last may take another run than the one meant, and the
    refusal told the user to adopt that run's settings."""
    logs = [f"paths.log_dir={tmp_path}", f"paths.data_dir={FIXTURES}", "debug=quick", "logger=csv", *TINY]
    assert run_script("train.py", *logs, "data.max_length=32").returncode == 0
    resumed = run_script("train.py", *logs, "trainer.max_epochs=2", "ckpt_path=last")
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines()[-1].endswith(
        "or train from scratch without ckpt_path (ckpt_path=last took the newest run of task_name=train; pass the "
        "path of the checkpoint to resume).")


def test_resuming_without_the_runs_overrides_names_them_before_loading(tmp_path) -> None:
    """`train.py ckpt_path=<ckpt>` without the overrides its run was trained with (another data file, length, model)
    would train other examples or fail to load the weights: one line that lists the run's overrides."""
    trained = [f"paths.data_dir={FIXTURES}", "data.max_length=32", *TINY]
    proc = run_script("train.py", "debug=quick", *trained, "logger=csv", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    resumed = run_script("train.py", "debug=quick", f"paths.data_dir={FIXTURES}", *TINY, "trainer.max_epochs=2",
                         f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'resumed'}")
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines()[-1] == (
        f"error: ckpt_path={ckpt} was trained with data.max_length=32, this run says 128: resuming continues that run, "
        f"so pass its settings (its .hydra/overrides.yaml: debug=quick {' '.join(trained)} logger=csv), or train from "
        "scratch without ckpt_path.")
    again = run_script("train.py", "debug=quick", *trained, "trainer.max_epochs=2", f"ckpt_path={ckpt}",
                       f"hydra.run.dir={tmp_path / 'resumed'}")
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_sweep_run_again_in_its_dir_resumes_every_job_from_its_own(tmp_path) -> None:
    first = run_script("train.py", *SWEEP, f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    steps = {j: json.loads((tmp_path / j / "metrics.json").read_text())["global_step"] for j in ("0", "1")}
    again = run_script("train.py", *SWEEP, "trainer.max_epochs=2", "ckpt_path=last", f"hydra.sweep.dir={tmp_path}",
                       timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for job, step in steps.items():  # each job went on from its own epoch 1 (seed 1's is not seed 2's)
        record = json.loads((tmp_path / job / "metrics.json").read_text())
        assert record["global_step"] == 2 * step
        # its metrics.csv, the same file, keeps the first run's epoch beside the resumed one's
        rows = list(csv.DictReader(open(tmp_path / job / "csv" / "metrics.csv")))
        assert [r["epoch"] for r in rows if r.get("val/acc")] == ["0", "1"]
    assert again.stdout.count("Restoring states from the checkpoint path") == 2


def test_last_is_the_newest_last_ckpt_of_the_task_runs_and_sweep_jobs(tmp_path, monkeypatch) -> None:
    cfg = compose_cfg(tmp_path, "ckpt_path=last")  # conftest: paths.log_dir=<out dir>/outputs
    task_dir = tmp_path / "outputs" / cfg.task_name
    run_ckpt = task_dir / "runs" / "a" / "checkpoints" / "last.ckpt"
    job_ckpt = task_dir / "multiruns" / "b" / "3" / "checkpoints" / "last.ckpt"
    for age, ckpt in ((200, run_ckpt), (100, job_ckpt)):
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
        os.utime(ckpt, (1e9 - age, 1e9 - age))
    assert resolve_ckpt_path(cfg) == str(job_ckpt)
    os.utime(run_ckpt, (1e9, 1e9))
    assert resolve_ckpt_path(cfg) == str(run_ckpt)
    # eval.py (task_name eval, which trains nothing) takes the newest of any task_name's: train's here
    evaluating = compose_cfg(tmp_path, "ckpt_path=last", config_name="eval")
    assert evaluating.task_name == "eval" and resolve_ckpt_path(evaluating) == str(run_ckpt)
    # without data= it tests the newest run on that run's own data, of whatever task: a newer causal LM run
    lm_ckpt = tmp_path / "outputs" / "lm" / "runs" / "c" / "checkpoints" / "last.ckpt"
    lm_ckpt.parent.mkdir(parents=True)
    lm_ckpt.write_bytes(b"")
    (lm_ckpt.parents[1] / ".hydra").mkdir()
    (lm_ckpt.parents[1] / ".hydra" / "config.yaml").write_text("data:\n  task: causal_lm\n")
    assert resolve_ckpt_path(evaluating) == str(lm_ckpt)
    # with data= on the command line, among the runs trained for that data's task
    monkeypatch.setattr("tunelab.rundir.command_line_keys", lambda: {"data"})
    assert resolve_ckpt_path(evaluating) == str(run_ckpt)
    lm = compose_cfg(tmp_path, "ckpt_path=last", "data=tiny_shakespeare", config_name="eval")
    assert resolve_ckpt_path(lm) == str(lm_ckpt)


def test_resuming_into_a_new_run_dir_keeps_the_best_checkpoint_of_the_whole_run(run_cfg) -> None:
    """ckpt_path=<last.ckpt> in a new run dir (what ckpt_path=last does): the best checkpoint saved before the
    resume (monitor=step, mode=min: the first one) is linked into the new run's checkpoints/ and stays the best,
    so the run tests it. Lightning alone forgot it and tested the best of the epochs after the resume."""
    args = ("data.train_limit=32", "data.batch_size=8", "callbacks.model_checkpoint.monitor=step",
            "callbacks.model_checkpoint.mode=min")
    _, first = run_cfg(*args, "trainer.max_epochs=2")
    best = "best-epoch00-step000004.ckpt"
    assert (first / "checkpoints" / best).is_file()
    _, resumed = run_cfg(*args, "trainer.max_epochs=4", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    record = json.loads((resumed / "metrics.json").read_text())
    assert record["global_step"] == 16 and record["best_checkpoint"] == str(resumed / "checkpoints" / best)
    assert (resumed / "checkpoints" / best).stat().st_ino == (first / "checkpoints" / best).stat().st_ino  # a link
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == [best, "last.ckpt"]
