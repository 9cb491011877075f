"""Training behaviour on real rows: learning happens, seeds reproduce, resume equals uninterrupted."""

import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, SHARED_DATA, compose_cfg, read_metrics, run_script
from tests.ddp_rows import assert_every_row_trained_once


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_minilm_learns_sst2_rows(run_cfg, loss: str) -> None:
    """The pretrained model on 512 real SST-2 rows, with cross-entropy and with square loss on one-hot
    targets: loss falls and test accuracy beats chance clearly."""
    metrics, run_dir = run_cfg(
        f"loss={loss}", "model=minilm", "data.train_limit=512", "data.batch_size=16", "optimizer.lr=1e-4",
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
    assert evaluated["test/acc"] == metrics["test/acc"]  # one epoch: last.ckpt is the tested best checkpoint
    # the console says what the run did: no cloud adverts, no warning about the training run's callbacks
    # (Lightning's second restore of the checkpoint), no note on the default val_check_interval
    assert "Tip" not in proc.stdout and "ckpt_path" not in proc.stderr and "dirpath" not in proc.stderr
    assert "val_check_interval" not in proc.stdout


def test_ddp_two_cpu_processes(tmp_path) -> None:
    """Lightning DDP with 2 gloo processes on CPU: both ranks train, rank 0 writes the run dir once, and
    together the ranks train on every row exactly once per epoch, apart from the one batch repeated to
    give both ranks the same number of batches."""
    proc = run_script(
        "train.py", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "model=tiny", "logger=csv",
        f"paths.data_dir={FIXTURES}", "data.train_limit=72", "data.batch_size=8", "trainer.max_epochs=1",
        # 30 val rows in 1 batch: rank 1 validates a repeat only; 200 test rows in 5 batches: one repeat
        "data.eval_batch_size=40", "+callbacks.rows._target_=tests.ddp_rows.RecordTrainingRows",
        "+callbacks.broadcasts._target_=tests.ddp_rows.CountBroadcasts", f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 72 rows = 9 batches of 8, dealt round-robin: 5 per rank (the 10th slot repeats the first batch)
    assert metrics["global_step"] == 5
    # no collective per step: Lightning's per-batch SIGTERM broadcast is off (Resilience handles signals)
    assert [json.loads((tmp_path / f"broadcasts_rank{r}.json").read_text()) for r in (0, 1)] == [0, 0]
    assert "test/acc" in metrics["metrics"]
    # rank 0 gathers both ranks' test predictions: one row per test example, in file order
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len((FIXTURES / "sst2" / "dev.tsv").read_text().splitlines()) - 1))
    assert_every_row_trained_once(tmp_path, rows_per_rank=40, repeated=8)
    # the repeated test batch is not counted again: the metrics are those of the 200 predictions
    accuracy = sum(r["pred"] == r["gold"] for r in rows) / len(rows)
    assert metrics["metrics"]["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    report = json.loads((tmp_path / "test_report.json").read_text())
    assert report["support"] == sum(c["support"] for c in report["classes"].values()) == len(rows) == 200


@pytest.mark.parametrize("sweep", [
    ["-m", "seed=1,2", "trainer=ddp"],
    # FSDP on CPU through the tests' subclass (tests/cpu_fsdp.py): the rule covers strategy classes, not names
    ["-m", "seed=1,2", "trainer=fsdp", "trainer.precision=32-true", "trainer.strategy._target_=tests.cpu_fsdp.CpuFSDPStrategy",
     "trainer.strategy.mixed_precision=null"],
    # configs that set hydra.mode=MULTIRUN themselves: the job's overrides name them, so a child rank that
    # ran those overrides would start a sweep (an Optuna study) of its own
    ["experiment=compare_losses", "hydra.sweeper.params.loss=cross_entropy", "hydra.sweeper.params.seed='1,2'",
     "trainer=ddp"],
    ["hparams_search=optuna_random", "hydra.sweeper.n_trials=2", "trainer=ddp"],
], ids=["ddp", "fsdp", "experiment", "optuna"])
def test_multirun_with_ddp_runs_each_job_once(tmp_path, sweep) -> None:
    """A sweep + trainer=ddp / fsdp must not relaunch the sweep in child ranks (Hydra/Lightning pitfall)."""
    proc = run_script(
        "train.py", *sweep, "trainer.devices=2", "trainer.accelerator=cpu", "model=tiny",
        "logger=csv", f"paths.data_dir={FIXTURES}", "data.train_limit=32", "data.batch_size=8",
        "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}", timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent.name for p in tmp_path.glob("*/metrics.json"))
    assert jobs == ["0", "1"]
    optuna = "hparams_search=optuna_random" in sweep
    assert len(list(tmp_path.rglob("multirun.yaml"))) == (0 if optuna else 1)  # Optuna's sweeper writes none
    # a child rank that relaunched the sweep would print Hydra's launch banner again
    banners = (proc.stdout + proc.stderr).count("jobs locally")
    assert banners == (2 if optuna else 1)  # Optuna launches a trial at a time


def test_a_ddp_sweep_outlives_a_failed_job_and_resumes_each_job_from_its_own_checkpoint(tmp_path) -> None:
    """Job 0 diverges: its child rank exits 3 after rank 0 has moved on, which must not take the sweep down (Lightning's
    child observer SIGKILLed it: exit 137, no report). Run again with ckpt_path=last, each job's child ranks resume
    the checkpoint rank 0 resolved for that job (as single runs they read "last" as the sweep's newest)."""
    args = ("train.py", "-m", "optimizer=sgd", "optimizer.lr=1e12,0.01", "trainer=ddp", "trainer.devices=2",
            "trainer.accelerator=cpu", "model=tiny", "logger=csv", f"paths.data_dir={FIXTURES}", "data.train_limit=32",
            "data.batch_size=8", "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}")
    proc = run_script(*args, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert sorted(p.parent.name for p in tmp_path.glob("*/metrics.json")) == ["1"]
    assert "1 of 2 jobs finished; not finished: 0 (optimizer.lr=1000000000000)" in (tmp_path / "report.md").read_text()
    last = tmp_path / "1" / "checkpoints" / "last.ckpt"
    resumed = run_script(*args, "ckpt_path=last", timeout=300)
    assert resumed.returncode == 3, resumed.stderr[-3000:]  # job 0 has no checkpoint: it diverges again
    assert f"ckpt_path='{last}' hydra.mode=RUN" in resumed.stdout + resumed.stderr
    assert json.loads((tmp_path / "1" / "metrics.json").read_text())["best_checkpoint"].startswith(str(tmp_path / "1"))


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="needs ../shared/data")
def test_shared_data_layout_is_read(run_cfg) -> None:
    """The documented configs read ../shared/data directly (what make train uses)."""
    metrics, _ = run_cfg(f"paths.data_dir={SHARED_DATA}", "data=stsb", "loss=mse", "data.train_limit=64", "trainer=debug")
    assert "test/spearman" in metrics


def test_metrics_are_logged_once_per_epoch_over_that_epoch_only(run_cfg) -> None:
    """Metrics update every step but are logged at epoch end (log_epoch_metrics) and then reset: each
    epoch's value covers that epoch's batches only, and the checkpoint monitor sees val/acc."""
    import csv

    metrics, run_dir = run_cfg("data.train_limit=64", "data.batch_size=16", "trainer.max_epochs=2", "optimizer.lr=1e-3")
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    per_epoch = {k: [float(r[k]) for r in rows if r.get(k)] for k in ("train/acc", "val/acc", "val/mcc")}
    assert all(len(v) == 2 for v in per_epoch.values()), per_epoch
    assert per_epoch["val/acc"][-1] == pytest.approx(metrics["val/acc"])
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))  # monitored val/acc was found

    from tunelab.module import TransformerModule

    module = TransformerModule(model={"name_or_path": None, "from_scratch": True, "config": {
        "model_type": "bert", "vocab_size": 32, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16}}, task="classification", loss={"_target_": "tunelab.losses.CrossEntropyLoss"},
        optimizer={}, label_names=["neg", "pos"])
    logged = []
    module.log_dict = lambda values, **kwargs: logged.append(float(values["train/acc"]))
    labels = torch.tensor([0, 1, 1, 0])
    confident = lambda classes: 10.0 * torch.nn.functional.one_hot(classes, 2).float()  # noqa: E731  logits
    module.train_metrics.update(confident(labels), labels)  # epoch 1: all right
    module.log_epoch_metrics("train")
    module.train_metrics.update(confident(1 - labels), labels)  # epoch 2: all wrong
    module.log_epoch_metrics("train")
    module.log_epoch_metrics("train")  # no batches this epoch: nothing logged
    assert logged == [1.0, 0.0]


def test_train_metrics_false_logs_the_training_loss_only(run_cfg) -> None:
    """train_metrics=false: no metric updates on training batches (the GPU experiments' setting);
    validation and test metrics and the training loss are unchanged in kind."""
    metrics, _ = run_cfg("data.train_limit=32", "train_metrics=false")
    assert "train/loss_epoch" in metrics and {"val/acc", "test/acc"} <= set(metrics)
    assert not [k for k in metrics if k.startswith("train/") and k.split("/")[1] in ("acc", "f1_macro", "ece")]
    with_metrics, _ = run_cfg("data.train_limit=32")
    assert "train/acc" in with_metrics


def test_step_values_reach_the_logger_every_log_every_n_steps(run_cfg) -> None:
    """train/loss_step and train/grad_norm are logged on the steps Lightning writes (here every 3rd),
    train/loss_epoch once per epoch: the rows Lightning writes, nothing logged that it would drop."""
    import csv

    _, run_dir = run_cfg("data.train_limit=64", "data.batch_size=8", "trainer.max_epochs=2",
                         "trainer.log_every_n_steps=3")
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    step_rows = [r for r in rows if r.get("train/loss_step")]
    assert [int(r["step"]) for r in step_rows] == [2, 5, 8, 11, 14]  # 16 steps, written at (step + 1) % 3 == 0
    assert all(r.get("train/grad_norm") for r in step_rows)
    assert len([r for r in rows if r.get("train/loss_epoch")]) == 2


def test_grad_norm_is_the_norm_of_all_gradients_together() -> None:
    from tunelab.optim import grad_norm

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(3, 4), (4,), (2, 2, 2)]]
    assert grad_norm(params) is None  # no gradients yet: nothing to log
    for p, scale in zip(params, (1.0, 10.0, 1e-3)):
        p.grad = scale * torch.randn_like(p)
    params.append(torch.nn.Parameter(torch.ones(5)))  # frozen / unused: no gradient, not counted
    expected = torch.cat([p.grad.reshape(-1) for p in params[:3]]).norm()
    assert torch.allclose(grad_norm(params), expected)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_bf16_mixed_clips_the_gradients_of_a_fused_optimizer(run_cfg, monkeypatch, algorithm: str) -> None:
    # trainer=gpu's settings (bf16-mixed, fused AdamW) with gradient clipping, on CPU: Lightning's
    # mixed-precision plugin raised "does not allow for gradient clipping" for any fused optimizer
    clipped = []
    name = f"clip_grad_{algorithm}_"
    original = getattr(torch.nn.utils, name)
    monkeypatch.setattr(torch.nn.utils, name, lambda params, *a, **k: clipped.append(1) or original(params, *a, **k))
    _, run_dir = run_cfg("trainer.precision=bf16-mixed", "optimizer=adamw", "optimizer.fused=true",
                         "trainer.gradient_clip_val=0.5", f"trainer.gradient_clip_algorithm={algorithm}")
    steps = json.loads((run_dir / "metrics.json").read_text())["global_step"]
    assert steps > 0 and len(clipped) == steps


def test_fp16_gradient_clipping_keeps_the_optimizer_unfused() -> None:
    # a fused optimizer unscales fp16 gradients in its step, after clipping: Lightning refuses to clip then
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision

    from tunelab.optim import may_fuse

    fp16, bf16 = MixedPrecision("16-mixed", "cuda"), MixedPrecision("bf16-mixed", "cuda")
    assert not may_fuse(SimpleNamespace(precision_plugin=fp16, gradient_clip_val=1.0))
    assert may_fuse(SimpleNamespace(precision_plugin=fp16, gradient_clip_val=None))
    assert may_fuse(SimpleNamespace(precision_plugin=bf16, gradient_clip_val=1.0))


def test_garbage_is_collected_every_n_batches_while_fitting_and_automatically_otherwise(run_cfg, monkeypatch) -> None:
    """Automatic collection (whose full collections walk every object of the process) is off while fitting,
    the young generations are collected every callbacks.garbage_collection.every_n_batches training batches,
    and automatic collection is back for the test and after the run, also after a fit that failed."""
    import gc

    from tunelab.module import TransformerModule

    enabled: dict[str, list[bool]] = {"train": [], "test": []}
    young_collections = []
    train_step, test_step, collect = TransformerModule.training_step, TransformerModule.test_step, gc.collect
    monkeypatch.setattr(TransformerModule, "training_step",
                        lambda self, *a: enabled["train"].append(gc.isenabled()) or train_step(self, *a))
    monkeypatch.setattr(TransformerModule, "test_step",
                        lambda self, *a: enabled["test"].append(gc.isenabled()) or test_step(self, *a))
    monkeypatch.setattr(gc, "collect", lambda generation=2: (generation == 1 and young_collections.append(1))
                        or collect(generation))
    try:
        run_cfg("data.train_limit=64", "data.batch_size=8", "trainer.max_epochs=2",
                "callbacks.garbage_collection.every_n_batches=3")
        assert enabled["train"] == [False] * 16 and enabled["test"] and all(enabled["test"])
        assert len(young_collections) == 5  # after training batches 3, 6, 9, 12 and 15
        assert gc.isenabled()

        def failing_step(self, batch, batch_idx):
            raise RuntimeError("a step that fails")

        monkeypatch.setattr(TransformerModule, "training_step", failing_step)
        with pytest.raises(RuntimeError, match="a step that fails"):
            run_cfg("data.train_limit=16", "data.batch_size=4")
        assert gc.isenabled()
    finally:
        gc.enable()


def test_hooks_run_unprofiled_unless_trainer_profiler_names_a_profiler(tmp_path) -> None:
    """Lightning enters its profiler around every hook call (about 60 a step); with none chosen they enter a
    shared no-op context, not Lightning's generator-based one (tests/test_bench.py counts the calls)."""
    from lightning.pytorch.profilers import SimpleProfiler

    from tunelab.trainer import NoProfiler, build_trainer

    trainer = build_trainer(compose_cfg(tmp_path / "default"))
    assert isinstance(trainer.profiler, NoProfiler)
    with trainer.profiler.profile("[Callback]x.on_train_batch_end") as entered:
        assert entered is None
    assert isinstance(build_trainer(compose_cfg(tmp_path / "simple", "trainer.profiler=simple")).profiler, SimpleProfiler)


RELATIVE_STEP = ("optimizer=adafactor", "optimizer.lr=null", "optimizer.relative_step=true", "optimizer.warmup_init=true")


def test_adafactor_relative_step_trains_with_its_own_step_size(run_cfg) -> None:
    """optimizer.lr=null: Adafactor's relative step, no scheduler and no lr column (its step size lives in the
    optimizer's state); the weights move."""
    import csv

    _, run_dir = run_cfg(*RELATIVE_STEP, "scheduler=none", "trainer.max_steps=3", "data.train_limit=32",
                         "data.batch_size=8", "trainer.log_every_n_steps=1", "test=false", "export=false")
    trained = final_weights(run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and not ckpt["lr_schedulers"]
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] is None
    columns = next(csv.reader(open(run_dir / "csv" / "metrics.csv")))
    assert "train/loss_step" in columns and not any(c.startswith("lr-") for c in columns)
    assert all(torch.isfinite(w).all() for w in trained.values() if w.is_floating_point())


@pytest.mark.parametrize("overrides,message", [
    (RELATIVE_STEP, "optimizer.relative_step=true: Adafactor sets its step size itself, so a scheduler "
                    "(get_linear_schedule_with_warmup) has no lr to scale; pass scheduler=none."),
    (("optimizer=adafactor", "optimizer.relative_step=true"),
     "optimizer.relative_step=true takes Adafactor's step size from its step count: pass optimizer.lr=null as well "
     "(it is 0.0001)."),
    (("optimizer=adafactor", "optimizer.warmup_init=true"),
     "optimizer.warmup_init=true warms up Adafactor's relative step: pass optimizer.relative_step=true "
     "optimizer.lr=null as well."),
    (("optimizer=sgd", "optimizer.lr=null"),
     "optimizer.lr=null leaves the optimizer without a learning rate: set one, or use optimizer=adafactor "
     "optimizer.relative_step=true (Adafactor's own step size)."),
])
def test_adafactor_relative_step_settings_are_checked_together(tmp_path, overrides, message) -> None:
    from tunelab.errors import ConfigError
    from tunelab.validation import validate

    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(tmp_path, *overrides))
    assert str(err.value) == message


def test_a_warmup_as_long_as_the_run_is_warned(caplog) -> None:
    """warmup_ratio x steps, rounded (25 x 0.1: 2 steps); a warmup that spans the whole run, so that the lr never
    reaches optimizer.lr, is a warning."""
    from tunelab.optim import build_scheduler

    linear = {"_target_": "transformers.get_linear_schedule_with_warmup", "_partial_": True}

    def lrs(cfg: dict, total: int) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_scheduler(cfg, optimizer, total)
        out = []
        for _ in range(total):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    assert lrs({**linear, "warmup_ratio": 0.1}, 25)[:3] == pytest.approx([0, 1 / 2, 1])
    assert "warmup" not in caplog.text
    assert max(lrs({**linear, "warmup_steps": 100}, 16)) == pytest.approx(15 / 100)
    assert "the learning-rate warmup (100 steps) is as long as the whole run (16 optimizer steps)" in caplog.text


def test_the_lr_monitors_last_logged_lr_is_no_result(run_cfg) -> None:
    """metrics.json holds results: the lr monitor logs every log_every_n_steps, so its last lr is neither a result
    nor the schedule's final lr (it read 45% of the peak on a schedule that had reached 0)."""
    import csv

    metrics, run_dir = run_cfg("data.train_limit=32", "data.batch_size=8", "trainer.max_epochs=1",
                               "trainer.log_every_n_steps=3", "test=false", "export=false")
    assert any(r.get("lr-AdamW/pg1") for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    recorded = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert "val/acc" in recorded and not any(k.startswith("lr-") for k in [*metrics, *recorded])



def test_a_validation_interval_in_time_trains(run_cfg) -> None:
    """trainer.val_check_interval='DD:HH:MM:SS' (Lightning validates after that much time): refused by the schema,
    and then a TypeError at the start of training (no batch count to compare max_steps with)."""
    metrics, _ = run_cfg('trainer.val_check_interval="00:00:00:02"', "data.train_limit=32", "data.batch_size=8",
                         "trainer.max_steps=4")
    assert 0 <= metrics["test/acc"] <= 1


def test_training_without_end_stops_on_early_stopping(run_cfg) -> None:
    """trainer.max_epochs=-1 with scheduler=none (what the refusal of max_epochs=-1 under a schedule suggests) ends
    when early stopping says so: configure_optimizers crashed on int(inf) steps."""
    metrics, _ = run_cfg("trainer.max_epochs=-1", "scheduler=none", "callbacks=early_stopping",
                         "callbacks.early_stopping.patience=1", "data.train_limit=32", "data.batch_size=8")
    assert 0 <= metrics["test/acc"] <= 1


def test_a_checkpoint_callback_without_a_monitor_keeps_the_latest(run_cfg) -> None:
    """callbacks.model_checkpoint.monitor=null (Lightning's: keep the latest): its `mode: auto` placeholder reached
    Lightning after the data and model had loaded ("mode can be min, max but got auto")."""
    metrics, run_dir = run_cfg("callbacks.model_checkpoint.monitor=null", "data.train_limit=32", "data.batch_size=8",
                               "trainer.max_epochs=1")
    assert 0 <= metrics["test/acc"] <= 1 and list((run_dir / "checkpoints").glob("best-*.ckpt"))
