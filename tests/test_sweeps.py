"""Sweeps end to end with the tiny model: an optuna random search, and a submitit_local grid whose
jobs finish concurrently (sweep table, plots, report, W&B group/name/tags from the offline run)."""

import json
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import FIXTURES, run_script, wandb_records

TINY = ["debug=quick", f"paths.data_dir={FIXTURES}"]


def test_optuna_random_search_three_trials_in_a_resumable_study(tmp_path) -> None:
    db = tmp_path / "optuna.db"
    args = ("train.py", "hparams_search=optuna_random", *TINY, "logger=csv", "data.train_limit=64",
            "loss.label_smoothing=interval(0.0, 0.2)",  # a loss's own knob joins the search from the command line
            f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    proc = run_script(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["0", "1", "2"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    val_accs = [json.loads((sweep / j / "metrics.json").read_text())["metrics"]["val/acc"] for j in jobs]
    assert results["best_value"] == max(val_accs)  # direction=maximize on the returned val/acc
    assert set(results["best_params"]) >= {"optimizer.lr", "data.batch_size", "loss.label_smoothing"}
    # the study lives in sqlite: rerunning the command continues it
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{db}")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len((sweep / "results.jsonl").read_text().splitlines()) == 3
    assert (sweep / "report.md").is_file()
    # continued: two more trials, at new points (the sampler's seed moves on with the study's trials)
    proc = run_script(*args[:-2], "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'more'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = [t.params for t in optuna.load_study(study_name="train", storage=f"sqlite:///{db}").trials]
    assert len(params) == 5 and params[3] not in params[:3] and params[4] not in params[:3]


def test_failed_trials_are_failed_trials_and_the_search_goes_on(tmp_path) -> None:
    """Trials that diverge (lr up to 1e12) are recorded as failed and the study goes on to its last trial, its
    results and the report; the sweep exits 3 at its end. A NaN given to Optuna ended the search with a traceback."""
    db = tmp_path / "optuna.db"
    proc = run_script(
        "train.py", "hparams_search=optuna_random", *TINY, "logger=csv", "optimizer=sgd", "data.train_limit=64",
        "optimizer.lr=tag(log, interval(1e-3, 1e12))", "data.batch_size=choice(8,16)", "hydra.sweeper.n_trials=4",
        f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    states = [t.state.name for t in optuna.load_study(study_name="train", storage=f"sqlite:///{db}").trials]
    finished = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert len(states) == 4 and 0 < states.count("FAIL") < 4 and len(finished) == states.count("COMPLETE")
    assert (tmp_path / "sweep" / "optimization_results.yaml").is_file()
    assert f"{len(finished)} of 4 jobs finished" in (tmp_path / "sweep" / "report.md").read_text()
    assert "Traceback" not in proc.stderr


def test_submitit_local_with_several_ranks_is_refused_before_the_first_job(tmp_path) -> None:
    """Lightning would start rank 1 as submitit's own entry point with Hydra's overrides, and the job died: refused."""
    proc = run_script("train.py", "-m", "hydra/launcher=submitit_local", *TINY, "trainer=ddp", "trainer.accelerator=cpu",
                      "trainer.devices=2", "seed=0", f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert ("hydra/launcher=submitit_local cannot start the other ranks of a 2-process job; use the default launcher "
            "(drop hydra/launcher) or hydra/launcher=slurm.") in proc.stderr


@pytest.mark.parametrize("devices", ["auto", "-1"])
def test_the_slurm_launcher_needs_a_device_count(tmp_path, devices) -> None:
    """SLURM is asked for trainer.devices GPUs and tasks per node: auto / -1 are one line before any submission."""
    proc = run_script("train.py", "-m", "hydra/launcher=slurm", "trainer=ddp", f"trainer.devices={devices}", *TINY,
                      "seed=0,1", f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: hydra/launcher=slurm asks SLURM for trainer.devices GPUs and tasks per node: give a number "
        f"(trainer.devices={devices} is resolved only on the node).")


def test_a_failing_job_does_not_stop_the_sweep(tmp_path) -> None:
    """Job 1 diverges (lr 1e30): its error line names it, jobs 0 and 2 still run, the report is written, and
    the sweep exits 3 (a training error) at its end."""
    proc = run_script(
        "train.py", "-m", "optimizer=sgd", "optimizer.lr=0.01,1e30,0.02", *TINY, "logger=wandb", "data.train_limit=32",
        "data.batch_size=8", "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}", timeout=300,
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # named by the swept value (Hydra writes 1e30 as 1e+30)
    assert len(errors) == 2 and errors[0].startswith("error: job 1 (optimizer.lr=1e+30): non-finite training loss")
    assert errors[1] == ("error: 1 sweep job(s) failed: job 1 (optimizer.lr=1e+30); the other jobs finished (the "
                         "sweep report lists them).")
    assert sorted(p.parent.name for p in tmp_path.glob("*/metrics.json")) == ["0", "2"]
    assert "2 of 3 jobs finished; not finished: 1 (optimizer.lr=1e+30)" in (tmp_path / "report.md").read_text()
    # the failed job's W&B run was closed: job 2 has a run of its own (it wrote into job 1's before)
    for job, lr in (("1", "1e+30"), ("2", "0.02")):
        (run_file,) = (tmp_path / job / "wandb").glob("offline-run-*/run-*.wandb")
        assert wandb_run_record(run_file).display_name == f"optimizer.lr={lr}"


def test_a_grid_sweep_is_checked_before_its_first_job(tmp_path) -> None:
    """Every job's config passes the run's checks before any job trains: a crossed grid whose data=stsb jobs
    cannot take the cross-entropy loss, and a learning rate out of range, fail in seconds with no job dir."""
    for resume in ([], ["ckpt_path=last"]):  # a sweep run again to resume: each job's own last.ckpt (or none)
        proc = run_script(
            "train.py", "-m", *TINY, "logger=csv", "data=sst2,stsb", "optimizer.lr=1e-4,-1", *resume,
            f"hydra.sweep.dir={tmp_path}", timeout=120,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1] == (
            "error: job 1 of 4 (data=sst2 optimizer.lr=-1): optimizer.lr must be > 0; got -1. No job has run; 2 more "
            "fail the checks: job 2 (data=stsb optimizer.lr=0.0001), job 3 (data=stsb optimizer.lr=-1).")
        assert "Launching" not in proc.stdout + proc.stderr and not list(tmp_path.glob("*"))


def refused_sweep(tmp_path, *overrides: str) -> str:
    """The error line of a tiny sweep refused before its first job: exit 2, no job launched, nothing written."""
    proc = run_script("train.py", "-m", *TINY, "logger=csv", *overrides, f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Launching" not in proc.stdout + proc.stderr and "UserWarning" not in proc.stderr
    assert not list(tmp_path.glob("*"))
    return proc.stderr.strip().splitlines()[-1]


def test_a_key_some_swept_options_lack_names_the_job_before_any_runs(tmp_path) -> None:
    """optimizer=sgd,adamw with optimizer.betas: Hydra only warned when the check composed the sgd job, which then
    failed with an empty hint; the other job would have trained."""
    assert refused_sweep(tmp_path, "optimizer=sgd,adamw", "optimizer.betas=[0.9,0.98]") == (
        "error: job 0 of 2 (optimizer=sgd): unknown config key 'optimizer.betas': optimizer=sgd has no betas (its keys: "
        "_target_, _partial_, lr, momentum, nesterov, weight_decay, layer_decay), and a sweep crosses every "
        "optimizer.betas value with every optimizer option: sweep optimizer.betas in a sweep of its own, with the "
        "optimizer option that has it. No job has run.")


def test_a_fixed_key_of_a_swept_group_is_meant_for_the_jobs_whose_option_reads_it(tmp_path) -> None:
    """Full fine-tuning vs LoRA, the LoRA job saving its adapter and the full one freezing a layer: each fixed key
    is for the jobs whose option reads it. The pre-flight refused the sweep for its peft=none job (save_adapter
    without an adapter) and its LoRA job (freeze_layers under an adapter)."""
    proc = run_script("train.py", "-m", *TINY, "logger=csv", "model=minilm", "data.max_length=32", "data.train_limit=16",
                      "data.batch_size=8", "trainer.max_steps=1", "test=false", "plots=false", "peft=none,lora",
                      "peft.save_adapter=true", "model.freeze_layers=1", f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "0" / "hf_model").is_dir() and (tmp_path / "1" / "adapter").is_dir()


def test_a_sweep_over_losses_that_ranks_on_val_loss_is_refused_before_its_first_job(tmp_path) -> None:
    """Each job would pick its checkpoints, and the sweep rank its jobs, on its own loss's units; the report said
    so only after every job had trained."""
    assert refused_sweep(tmp_path, "loss=cross_entropy,focal", "optimized_metric=val/loss") == (
        "error: val/loss is each config's own training loss and they train different ones (loss=cross_entropy, "
        "loss=focal), so its values are not comparable; pass optimized_metric=val/nll (a proper scoring rule every "
        "classification loss logs) or val/acc.")


def test_an_optuna_sweep_in_the_wrong_direction_is_refused_before_its_study(tmp_path) -> None:
    db = tmp_path / "optuna.db"
    proc = run_script(
        "train.py", "hparams_search=optuna_random", *TINY, "logger=csv", "optimized_metric=val/loss",
        f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.direction=maximize but optimized_metric=val/loss is better lower; set "
        "hydra.sweeper.direction=minimize.")
    assert "study" not in proc.stdout + proc.stderr and not db.exists()


def wandb_run_record(run_file: Path):
    """The run record (name, group, tags) of an offline .wandb file."""
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"no run record in {run_file}")


def test_submitit_local_grid_table_plots_report_and_wandb_identity(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_script(
        "train.py", "-m", "hydra/launcher=submitit_local", "optimizer=sgd,adamw", *TINY, "logger=wandb",
        "data.train_limit=32", "data.batch_size=8", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}",
        # one thread per job: the two concurrent jobs share two cores
        timeout=300, env={"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 2  # two jobs, two processes
    # the sweep table: exactly one line per job
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert sorted(r["job_dir"] for r in rows) == ["0", "1"]
    assert sorted(r["choices"]["optimizer"] for r in rows) == ["adamw", "sgd"]
    assert all("val/acc" in r["metrics"] and "test/acc" in r["metrics"] for r in rows)
    # plots of each run, the sweep plot and the report
    for job in ("0", "1"):
        for name in ("learning_curves.png", "confusion_matrix.png"):
            assert (sweep / job / name).stat().st_size > 1000, name
    assert (sweep / "val_acc_vs_lr.png").stat().st_size > 1000
    assert "optimizer=sgd" in (sweep / "report.md").read_text()
    # W&B: one group per sweep, the job named by its swept override, tags for the config choices
    for job, optimizer in zip(("0", "1"), ("sgd", "adamw")):
        (run_file,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        run = wandb_run_record(run_file)
        assert run.run_group == "sweep"
        assert run.display_name == f"optimizer={optimizer}"
        assert {"data:sst2", "loss:cross_entropy", f"optimizer:{optimizer}", "dev"} <= set(run.tags)


def test_sweep_optimizers_scales_each_optimizers_own_lr(tmp_path) -> None:
    # lr = the optimizer's base lr (optimizer_lr.<choice>) x lr_scale; an explicit optimizer.lr wins
    from tunelab.config import compose_config

    def lr(*overrides: str) -> float:
        cfg = compose_config(["experiment=sweep_optimizers", "hydra.mode=RUN", *overrides], tmp_path)
        return cfg.optimizer.lr

    assert abs(lr("optimizer=sgd", "lr_scale=3") - 0.15) < 1e-12
    assert lr("optimizer=adamw") == 1e-4
    assert lr("optimizer=adamax", "lr_scale=0.3") == 2e-4 * 0.3
    assert lr("optimizer=adamw", "optimizer.lr=5e-5") == 5e-5


def test_a_search_that_completes_no_trial_is_one_line(tmp_path) -> None:
    proc = run_script("train.py", "-m", "hparams_search=optuna_random", "hydra.sweeper.n_trials=0", "debug=quick",
                      f"paths.data_dir={FIXTURES}", "logger=csv", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the search completed no trial: "
                                                           "hydra.sweeper.n_trials must be at least 1")
