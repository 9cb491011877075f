"""What a run sends to its trackers (W&B, TensorBoard) besides the scalars Lightning logs: at the start the
config, with the chosen group options as flat keys for W&B; at the end the test report as a table, the
run's plots as images, a sample of the test predictions, parameter counts and (logger.wandb.log_model)
the best checkpoint and exported model as artifacts; at the end of a sweep one summary run holding the
sweep report. A tracker problem is a warning: the run's results are on disk whatever happens here."""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from tunelab import sweeps
from tunelab.checkpoints import trained_settings
from tunelab.prediction_files import load_predictions
from tunelab.redaction import redact_argument, redact_secrets
from tunelab.run_layout import (CONFIG_YAML, EXPORTED_DIRS, HYDRA_DIR, IMAGES, PREDICTIONS_FILE, REPORT_MD,
                                TENSORBOARD_DIR, TEST_REPORT_JSON, TEST_REPORT_TXT, at_stage)

log = logging.getLogger(__name__)

SAMPLE_ROWS = 300  # test predictions shown per run


# ---- start of a run ----------------------------------------------------------------------------------
def logger_group(cfg: DictConfig) -> DictConfig | None:
    """The conf/logger entries to instantiate: W&B with its sweep identity, and log_model taken over by
    `send_run` (Lightning refuses log_model offline; artifacts logged offline upload with `wandb sync`)."""
    group = sweeps.with_wandb_identity(cfg.get("logger"), cfg)
    if group and "wandb" in group and group.wandb.get("log_model"):
        group = group.copy()
        with open_dict(group.wandb):
            group.wandb.log_model = False
    return group


def log_config(trainer: Any, cfg: DictConfig) -> None:
    """The full resolved config as hyper-parameters of every logger (rank 0); W&B also gets the group
    choices as flat keys (`loss: focal`), so the dashboard groups and filters runs by objective."""
    if not trainer.is_global_zero:
        return
    # an eval.py / predict.py run of a checkpoint: the model, loss, ... and seed its training run built
    hparams = redact_secrets(OmegaConf.to_container(cfg, resolve=True) | trained_settings(cfg))
    argv = sys.argv
    # W&B starts its run here and records the command line in the run's metadata, which `wandb sync` uploads
    sys.argv = [argv[0], *map(redact_argument, argv[1:])]
    try:
        for logger in trainer.loggers:
            wandb = type(logger).__name__ == "WandbLogger"
            # the full config under `config`: its `loss` / `data` / ... nodes would collide with the flat keys
            logger.log_hyperparams({**sweeps.choices(cfg), "config": hparams} if wandb else hparams)
    finally:
        sys.argv = argv


def finish_failed_run() -> None:
    """Close a failed job's W&B run (a run ends with its job only when the job succeeds): the next job of a
    sweep, in the same process, would write its metrics into it, and the sweep summary too."""
    wandb = sys.modules.get("wandb")  # never imported here for a run without W&B
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.run.finish(exit_code=1)


# ---- end of a run ------------------------------------------------------------------------------------
def send_run(loggers: Sequence[Any], cfg: DictConfig, run_dir: Path, metrics: dict[str, float],
             checkpoint: str | None) -> None:
    """Send the finished run's report, plots and prediction sample to each tracker (rank 0)."""
    senders: dict[str, Callable] = {"WandbLogger": _wandb_run, "TensorBoardLogger": _tensorboard_run}
    for logger in loggers:
        name = type(logger).__name__
        if name in senders:
            _safely(name, run_dir, senders[name], logger, cfg, Path(run_dir), metrics, checkpoint)


def _safely(tracker: str, where: Path, send: Callable, *args: Any) -> None:
    try:
        send(*args)
    except Exception as err:  # noqa: BLE001 - the run is finished and on disk; the dashboard is extra
        log.warning("%s: could not send the results (%s: %s); they are in %s", tracker, type(err).__name__, err, where)


def _wandb_run(logger: Any, cfg: DictConfig, run_dir: Path, metrics: dict[str, float], checkpoint: str | None) -> None:
    import wandb

    run = logger.experiment
    content: dict[str, Any] = {f"plots/{png.stem}": wandb.Image(str(png)) for png in _run_images(run_dir)}
    report = _read_json(run_dir / TEST_REPORT_JSON)
    if report:
        columns, rows = report_table(report)
        content["test/report"] = wandb.Table(columns=columns, data=rows)
    if report and report.get("confusion_matrix"):
        gold, pred = _pairs(report["confusion_matrix"])
        content["test/confusion_matrix"] = wandb.plot.confusion_matrix(
            y_true=gold, preds=pred, class_names=report["labels"], title="test confusion matrix")
    sample = prediction_sample(run_dir)
    if sample:
        content["test/predictions"] = wandb.Table(columns=sample[0], data=sample[1])
    run.log(content)
    # the summary's val/* are the last validation's; the tested (best) weights' are what metrics.json, the sweep
    # report and Optuna rank by, beside the test/* of those same weights
    run.summary.update({k: v for k, v in metrics.items() if k.startswith(("params/", "val/"))})
    if cfg.logger.wandb.get("log_model"):
        _log_artifacts(run, run_dir, checkpoint)
    run.finish()  # the next job of a sweep (same process) starts its own run


def _log_artifacts(run: Any, run_dir: Path, checkpoint: str | None) -> None:
    import wandb

    if checkpoint and Path(checkpoint).is_file():
        artifact = wandb.Artifact(f"model-{run.id}", type="model",
                                  metadata={"original_filename": Path(checkpoint).name})
        artifact.add_file(checkpoint, name="model.ckpt")
        run.log_artifact(artifact, aliases=["best", "latest"])
    for name in EXPORTED_DIRS:
        if (run_dir / name).is_dir():
            artifact = wandb.Artifact(f"{name}-{run.id}", type="model")
            artifact.add_dir(str(run_dir / name))
            run.log_artifact(artifact)


def _tensorboard_run(logger: Any, cfg: DictConfig, run_dir: Path, metrics: dict[str, float],
                     checkpoint: str | None) -> None:
    _tensorboard_write(logger.experiment, _run_images(run_dir), "test/report", run_dir / TEST_REPORT_TXT)
    # the HPARAMS tab: what the run trained (group choices, seed, lr) beside its final val/test metrics, so runs
    # and sweep jobs compare by objective (Lightning writes it only with metrics, which it logs at step 0 too)
    from torch.utils.tensorboard.summary import hparams

    identity = sweeps.run_identity(cfg)
    params = {**identity["choices"], "seed": identity["seed"], "optimizer.lr": identity["lr"]}
    finals = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
    writer = logger.experiment._get_file_writer()
    for summary in hparams({k: v for k, v in params.items() if v is not None}, finals):
        writer.add_summary(summary)
    writer.flush()


def _tensorboard_write(writer: Any, images: list[Path], tag: str, text_file: Path) -> None:
    """Plots as images and a text file (as preformatted markdown) into a SummaryWriter."""
    from matplotlib.image import imread

    for png in images:
        writer.add_image(f"plots/{png.stem}", imread(png), dataformats="HWC")
    if text_file.is_file():
        writer.add_text(tag, "\n".join("    " + line for line in text_file.read_text().splitlines()))
    writer.flush()


def report_table(report: dict) -> tuple[list[str], list[list]]:
    """Columns and rows of the test report (per class or entity type, accuracy, every average it has)."""
    from tunelab.report_tables import AVERAGE_NAMES, table_rows

    averages = [key for key in AVERAGE_NAMES if key in report]
    first = "entity" if "types" in report else "label" if "threshold" in report else "class"  # as the text report
    return [first, "precision", "recall", "f1", "support"], table_rows(report, averages, report.get("accuracy"))


def prediction_sample(run_dir: Path, n: int = SAMPLE_ROWS) -> tuple[list[str], list[list]] | None:
    """Columns and up to n rows (a fixed random sample, in index order) of the run's predictions.jsonl: the
    input text, gold, pred and confidence (word lists and tag lists joined by spaces)."""
    if not (run_dir / PREDICTIONS_FILE).is_file():
        return None
    records = load_predictions(run_dir)
    if not records:
        return None
    picked = sorted(random.Random(0).sample(range(len(records)), min(n, len(records))))
    wanted = ("index", "text", "text_pair", "tokens", "gold", "pred", "confidence")
    columns = [c for c in wanted if c in records[0]]

    def cell(value: Any) -> Any:
        return " ".join(str(v) for v in value) if isinstance(value, list) else value

    return columns, [[cell(records[i].get(c)) for c in columns] for i in picked]


def _run_images(run_dir: Path) -> list[Path]:
    return [run_dir / name for name in IMAGES if (run_dir / name).is_file()]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pairs(matrix: list[list[int]]) -> tuple[list[int], list[int]]:
    """(gold, pred) class ids with each confusion-matrix cell repeated by its count."""
    gold = [i for i, row in enumerate(matrix) for j, count in enumerate(row) for _ in range(count)]
    pred = [j for row in matrix for j, count in enumerate(row) for _ in range(count)]
    return gold, pred


# ---- end of a sweep ----------------------------------------------------------------------------------
def send_sweep(sweep_dir: Path, runs: Sequence[Any], report: dict) -> None:
    """At the end of a multirun whose jobs logged to W&B: one more run in the sweep's group holding the
    report (report.build_report's dict: mean ± std / 95% CI per config, t-tests) as a table, its plots and
    report.md; jobs that logged to TensorBoard get the report as text and the plots in <sweep dir>/tensorboard."""
    sweep_dir = Path(sweep_dir)
    # each job's own config (an eval.py job's `saved` is the training run's, which logged elsewhere perhaps)
    configs = [Path(r.dir) / HYDRA_DIR / CONFIG_YAML for r in runs]
    loggers = [OmegaConf.select(OmegaConf.load(c), "logger", default=None) for c in configs if c.is_file()]
    loggers = [entry for entry in loggers if entry]
    if any("wandb" in entry for entry in loggers):
        _safely("W&B", sweep_dir, _wandb_sweep, sweep_dir, next(e.wandb for e in loggers if "wandb" in e), report)
    if any("tensorboard" in entry for entry in loggers):
        _safely("TensorBoard", sweep_dir, _tensorboard_sweep, sweep_dir)


def _wandb_sweep(sweep_dir: Path, entry: DictConfig, report: dict) -> None:
    import wandb

    from tunelab.resolvers import wandb_offline

    def setting(key: str) -> Any:  # the job's saved (unresolved) config: ${hydra:...} does not resolve here
        return OmegaConf.select(entry, key, default=None, throw_on_resolution_failure=False)

    offline = setting("offline")
    run = wandb.init(
        project=setting("project") or "tunelab", entity=setting("entity"), group=sweeps.wandb_group(entry, sweep_dir),
        name="sweep summary", job_type="sweep-summary", dir=str(sweep_dir), tags=["sweep-summary"],
        mode="offline" if (wandb_offline() if offline is None else offline) else "online",
        config={"sweep_dir": str(sweep_dir), "metric": report["metric"], "n_runs": report["n_runs"]},
    )
    columns, rows = sweep_table(report)
    run.log({"sweep/report": wandb.Table(columns=columns, data=rows),
             **{f"sweep/{png.stem}": wandb.Image(str(png)) for png in sorted(sweep_dir.glob("*.png"))}})
    best = report.get("best_vs_runner_up") or {}
    # tied configs share rank 1: all of them are "best", none above the others
    first = [c["config"] for c in report["configs"] if c.get("rank", 1) == 1] or [report["configs"][0]["config"]]
    run.summary.update({"best": " | ".join(first), **{k: v for k, v in best.items() if k != "best"}})
    run.save(str(sweep_dir / REPORT_MD), base_path=str(sweep_dir), policy="now")
    run.finish()


def _tensorboard_sweep(sweep_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(sweep_dir / TENSORBOARD_DIR))
    _tensorboard_write(writer, sorted(sweep_dir.glob("*.png")), "sweep/report", sweep_dir / REPORT_MD)
    writer.close()


def sweep_table(report: dict) -> tuple[list[str], list[list]]:
    """One row per config: rank, config, seeds, mean / std / 95% CI of the ranking metric and its test
    counterpart, and the p-values against the best config."""
    metrics = list(dict.fromkeys([report["metric"], at_stage(report["metric"], "test")]))  # test/ once
    columns = ["rank", "config", "n"]
    for m in metrics:
        columns += [f"{m} mean", f"{m} std", f"{m} ci95_low", f"{m} ci95_high"]
    columns += ["welch_p vs best", "paired_p vs best"]
    rows = []
    for c in report["configs"]:
        row = [c["rank"], c["config"], c["n"]]
        for m in metrics:
            s = c["stats"].get(m) or {}
            row += [s.get("mean"), s.get("std"), s.get("ci_low"), s.get("ci_high")]
        rows.append(row + [c["vs_best"].get("welch_p"), c["vs_best"].get("paired_p")])
    return columns, rows
