"""What the trackers show: a 2-seed W&B sweep (offline) whose runs hold the test report, confusion matrix,
plots and a prediction sample, the flat group choices in their config and (log_model) the checkpoint and
exported model as artifacts, plus one summary run with the sweep report; the same sweep's redirected
stdout has plain progress lines; TensorBoard gets the images and the report as text."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import FIXTURES, run_script, wandb_records
from tunelab import tracking

TINY = ["model=tiny", f"paths.data_dir={FIXTURES}", "trainer.accelerator=cpu", "callbacks.model_summary=null",
        "trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "data.train_limit=32",
        "data.batch_size=8", "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`train.py -m seed=1,2 logger=wandb` with stdout redirected to a file: (sweep dir, stdout text)."""
    root = tmp_path_factory.mktemp("tracking")
    log_file = root / "train.log"
    env = {"WANDB_MODE": "offline", **{f"WANDB_{d}_DIR": str(root / d.lower()) for d in ("DATA", "CACHE", "CONFIG")}}
    with log_file.open("w") as stdout:
        # two epochs, the first one's checkpoint the best (monitor step, mode min): it is tested, not the last
        proc = run_script("train.py", "-m", "seed=1,2", "logger=wandb", "logger.wandb.log_model=true", *TINY,
                          "trainer.max_epochs=2", "callbacks.model_checkpoint.monitor=step",
                          "callbacks.model_checkpoint.mode=min",
                          "callbacks.progress_bar.metrics_every=2", f"hydra.sweep.dir={root / 'sweep'}",
                          stdout=stdout, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "sweep", log_file.read_text()


def offline_run(folder):
    (run_dir,) = folder.glob("wandb/offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    return run_dir, list(wandb_records(run_file))


def of_type(records, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def test_each_run_shows_report_confusion_matrix_plots_predictions_and_flat_choices(sweep) -> None:
    sweep_dir, _ = sweep
    for job in ("0", "1"):
        run_dir, records = offline_run(sweep_dir / job)
        media = {p.relative_to(run_dir / "files" / "media").as_posix().rsplit("_", 2)[0]
                 for p in (run_dir / "files" / "media").rglob("*.*")}
        assert {"table/test/report", "table/test/predictions", "table/test/confusion_matrix_table",
                "images/plots/learning_curves", "images/plots/confusion_matrix"} <= media
        (report_file,) = (run_dir / "files" / "media" / "table" / "test").glob("report_*.table.json")
        report = json.loads(report_file.read_text())
        assert report["columns"] == ["class", "precision", "recall", "f1", "support"]
        assert [row[0] for row in report["data"]] == ["negative", "positive", "accuracy", "micro avg", "macro avg",
                                                 "weighted avg"]
        (sample_file,) = (run_dir / "files" / "media" / "table" / "test").glob("predictions_*.table.json")
        sample = json.loads(sample_file.read_text())
        assert sample["columns"] == ["index", "text", "gold", "pred", "confidence"] and len(sample["data"]) == 200
        config = {u.key: json.loads(u.value_json) for c in of_type(records, "config") for u in c.update}
        assert {k: config[k] for k in ("data", "loss", "optimizer", "scheduler", "model", "peft")} == {
            "data": "sst2", "loss": "cross_entropy", "optimizer": "adamw", "scheduler": "linear", "model": "tiny",
            "peft": "none"}
        assert config["config"]["seed"] == int(job) + 1  # the full config beside the flat choices
        assert config["config"]["loss"]["_target_"].endswith("CrossEntropyLoss")
        summary = {u.key: json.loads(u.value_json) for s in of_type(records, "summary") for u in s.update}
        assert summary["params/trainable"] == summary["params/total"] > 0
        # val/* of the tested (epoch 0) weights, as metrics.json and the sweep report have them, not epoch 1's
        tested = json.loads((sweep_dir / job / "metrics.json").read_text())["metrics"]
        history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in h.item}
                   for h in of_type(records, "history")]
        val_losses = [h["val/loss"] for h in history if "val/loss" in h]
        assert summary["val/loss"] == pytest.approx(tested["val/loss"]) == pytest.approx(val_losses[0])
        assert len(val_losses) == 2 and val_losses[1] != val_losses[0]
        artifacts = {a.name.split("-")[0]: a.type for a in of_type(records, "artifact")}
        assert artifacts["model"] == artifacts["hf_model"] == "model"  # logger.wandb.log_model=true, offline


def test_the_sweep_ends_with_one_summary_run_in_its_group(sweep) -> None:
    sweep_dir, _ = sweep
    jobs = [of_type(offline_run(sweep_dir / job)[1], "run")[0] for job in ("0", "1")]
    run_dir, records = offline_run(sweep_dir)
    (summary_run,) = of_type(records, "run")
    assert summary_run.run_group == jobs[0].run_group == jobs[1].run_group == "sweep"
    assert summary_run.job_type == "sweep-summary" and [j.display_name for j in jobs] == ["seed=1", "seed=2"]
    (table_file,) = (run_dir / "files" / "media" / "table" / "sweep").glob("report_*.table.json")
    table = json.loads(table_file.read_text())
    report = json.loads((sweep_dir / "report.json").read_text())
    assert table["columns"][:7] == ["rank", "config", "n", "val/acc mean", "val/acc std", "val/acc ci95_low",
                                    "val/acc ci95_high"]
    (row,) = table["data"]
    assert row[2] == 2 and row[3] == pytest.approx(report["configs"][0]["stats"]["val/acc"]["mean"])
    assert list((run_dir / "files" / "media" / "images" / "sweep").glob("val_acc_vs_lr_*.png"))
    assert (run_dir / "files" / "report.md").read_text() == (sweep_dir / "report.md").read_text()


def test_redirected_stdout_has_plain_progress_and_validation_lines(sweep) -> None:
    _, stdout = sweep
    progress = [line for line in stdout.splitlines() if "[tunelab.progress]" in line]
    steps = [line.split(" - ", 1)[1] for line in progress if "validation" not in line]
    assert len(steps) == 8, progress  # every 2 of 8 optimizer steps (2 epochs of 4), in each of the 2 jobs
    assert steps[3].startswith("epoch 2/2 | step 8/8 | loss ") and "samples/s | elapsed 0:00:" in steps[3]
    assert "eta 0:00:00" in steps[3]
    validation = [line.split(" - ", 1)[1] for line in progress if "validation" in line]
    assert len(validation) == 4 and validation[0].startswith("epoch 1/2 validation | step 4 | val/acc ")
    assert "\x1b[" not in stdout  # no terminal control codes in a log file


def test_tensorboard_gets_the_plots_and_the_report_text(run_cfg) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = run_cfg("logger=tensorboard", "loss=focal", "data.train_limit=32", "trainer.max_epochs=1")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert {"plots/learning_curves", "plots/confusion_matrix"} <= set(events.Tags()["images"])
    image = events.Images("plots/confusion_matrix")[0]
    assert image.width > 100 and image.encoded_image_string.startswith(b"\x89PNG")
    (text,) = events.Tensors("test/report/text_summary")
    assert "macro avg" in text.tensor_proto.string_val[0].decode()
    # the HPARAMS tab: the objective and seed beside the final metrics
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["loss"].string_value == "focal" and session.hparams["seed"].number_value == 42
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"test/acc", "val/acc"} <= {m.name.tag for m in experiment.metric_infos}


def test_a_tracker_failure_is_a_warning_not_a_failed_run(tmp_path, caplog) -> None:
    class WandbLogger:  # what the sender dispatches on, with an experiment that cannot be reached
        @property
        def experiment(self):
            raise ConnectionError("no route to api.wandb.ai")

    with caplog.at_level(logging.WARNING, logger="tunelab.tracking"):
        tracking.send_run([WandbLogger()], None, tmp_path, {}, None)
    expected = f"could not send the results (ConnectionError: no route to api.wandb.ai); they are in {tmp_path}"
    assert expected in caplog.text


def test_an_eval_run_in_wandb_is_labelled_with_the_model_it_tested(tmp_path) -> None:
    """eval.py of a focal-loss checkpoint: the W&B run's flat choices, tags and config are the training run's
    (loss focal, its seed), with the eval's own data; they were the eval config's defaults (cross_entropy, 42)."""
    trained = tmp_path / "trained"
    proc = run_script("train.py", *TINY, "loss=focal", "seed=3", "optimizer.lr=1e-4", "logger=csv", "test=false",
                      f"hydra.run.dir={trained}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {"WANDB_MODE": "offline", **{f"WANDB_{d}_DIR": str(tmp_path / d.lower()) for d in ("DATA", "CACHE", "CONFIG")}}
    proc = run_script("eval.py", "model=tiny", f"paths.data_dir={FIXTURES}", "trainer.accelerator=cpu", "logger=wandb",
                      f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, records = offline_run(tmp_path / "eval")
    config = {u.key: json.loads(u.value_json) for c in of_type(records, "config") for u in c.update}
    assert (config["loss"], config["data"], config["model"]) == ("focal", "sst2", "tiny")
    assert config["config"]["loss"]["_target_"].endswith("FocalLoss") and config["config"]["seed"] == 3
    (run,) = of_type(records, "run")
    assert {"loss:focal", "data:sst2"} <= set(run.tags)
    # a single run is named by its overrides (the plumbing ones left out), not task_name
    assert run.display_name == f"model=tiny,ckpt_path={trained / 'checkpoints' / 'last.ckpt'}"
    # the sweep table and TensorBoard's HPARAMS take the training run's seed and lr too (not eval's 42 and 5e-5)
    from conftest import compose_cfg
    from tunelab.sweeps import run_identity

    cfg = compose_cfg(tmp_path / "x", "model=tiny", f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
                      config_name="eval")
    identity = run_identity(cfg)
    assert (identity["seed"], identity["lr"], identity["choices"]["loss"]) == (3, 0.0001, "focal")


def test_a_resumed_run_goes_on_in_its_wandb_run_and_eval_of_last_names_it(tmp_path) -> None:
    """`ckpt_path=last` resumes the newest run: the resumed run reuses its W&B run id and name (it was a second,
    unlinked run named `ckpt_path=last`); eval.py ckpt_path=last is labelled with the training run it tested
    and names the file "last" stood for in metrics.json and the W&B config."""
    from tunelab.results import load_runs

    logs, env = tmp_path / "logs", {"WANDB_MODE": "offline", **{f"WANDB_{d}_DIR": str(tmp_path / d.lower())
                                                                   for d in ("DATA", "CACHE", "CONFIG")}}
    first, resumed = logs / "train" / "runs" / "1", logs / "train" / "runs" / "2"
    common = [*TINY, "loss=focal", "seed=3", "logger=wandb", "test=false", f"paths.log_dir={logs}"]
    proc = run_script("train.py", *common, f"hydra.run.dir={first}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_script("train.py", *common, "trainer.max_epochs=2", "ckpt_path=last", f"hydra.run.dir={resumed}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (before,), (after,) = (of_type(offline_run(d)[1], "run") for d in (first, resumed))
    assert after.run_id == before.run_id and after.display_name == before.display_name
    assert "loss=focal,seed=3" in before.display_name and "ckpt_path" not in before.display_name
    assert json.loads((resumed / "metrics.json").read_text())["global_step"] == 8

    proc = run_script("eval.py", "model=tiny", f"paths.data_dir={FIXTURES}", "trainer.accelerator=cpu", "logger=wandb",
                      "ckpt_path=last", f"paths.log_dir={logs}", f"hydra.run.dir={tmp_path / 'eval'}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tested = str(resumed / "checkpoints" / "last.ckpt")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["best_checkpoint"] == tested
    _, records = offline_run(tmp_path / "eval")
    config = {u.key: json.loads(u.value_json) for c in of_type(records, "config") for u in c.update}
    assert (config["loss"], config["config"]["seed"], config["config"]["ckpt_path"]) == ("focal", 3, tested)
    (run,) = load_runs(tmp_path / "eval")  # reports and comparisons pair it by the training run's seed
    assert run.seed == 3 and "loss=focal" in run.overrides
