"""The names of what a run writes into its dir, and a sweep into its sweep dir, and of the metrics it logs: written
here once and imported by whatever writes, finds or removes them (a renamed file cannot leave a reader looking for
the old name)."""

from __future__ import annotations

from pathlib import Path

# Hydra's record of the run: the composed config, the command-line overrides, the group choices
HYDRA_DIR = ".hydra"
CONFIG_YAML = "config.yaml"
OVERRIDES_YAML = "overrides.yaml"
HYDRA_YAML = "hydra.yaml"
MULTIRUN_YAML = "multirun.yaml"  # in a sweep dir: the sweep's config

CHECKPOINTS_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
METRICS_FILE = "metrics.json"  # the run's final metrics, the best checkpoint and the overrides
PREDICTIONS_FILE = "predictions.jsonl"  # one record per test example, written by every test
TEST_REPORT_JSON = "test_report.json"
TEST_REPORT_TXT = "test_report.txt"
CSV_METRICS = "metrics.csv"  # the CSV logger's history, in its log dir (csv/)

HF_MODEL_DIR = "hf_model"  # exported model, loadable with from_pretrained
MERGED_DIR = "merged"  # PEFT adapter merged into the base model
ADAPTER_DIR = "adapter"  # the PEFT adapter alone
EXPORTED_DIRS = (HF_MODEL_DIR, MERGED_DIR, ADAPTER_DIR)

LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
RELIABILITY_DIAGRAM = "reliability_diagram.png"
IMAGES = (LEARNING_CURVES, CONFUSION_MATRIX, RELIABILITY_DIAGRAM)

CSV_DIR, TENSORBOARD_DIR, WANDB_DIR = "csv", "tensorboard", "wandb"  # conf/logger's save dirs in the run dir
LOGGER_DIRS = (CSV_DIR, TENSORBOARD_DIR, WANDB_DIR)

# what a run writes besides Hydra's .hydra/ and log (rewritten by the new run). overwrite=true removes them first:
# a stale best-*.ckpt beside the new last.ckpt, or an old predictions.jsonl after a test=false run, would pass for
# the new run's
RUN_OUTPUTS = (CHECKPOINTS_DIR, METRICS_FILE, PREDICTIONS_FILE, TEST_REPORT_TXT, TEST_REPORT_JSON, *EXPORTED_DIRS,
               *LOGGER_DIRS, *IMAGES)

# in a sweep dir
RESULTS_FILE = "results.jsonl"  # one row per finished job
REPORT_MD, REPORT_JSON, REPORT_CSV = "report.md", "report.json", "report.csv"  # the sweep report (tunelab.report)
RUNS_CSV = "runs.csv"  # one row per run


def hydra_file(run_dir: str | Path, name: str) -> Path:
    """<run dir>/.hydra/<name>."""
    return Path(run_dir) / HYDRA_DIR / name


def last_checkpoint(run_dir: str | Path) -> Path:
    """<run dir>/checkpoints/last.ckpt (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINTS_DIR / LAST_CKPT


# ---- metric keys: <stage>/<name> (val/acc, test/loss_epoch) -----------------------------------------------
def is_loss_metric(metric: str) -> bool:
    """`val/loss`, `test/loss_epoch`, ...: a run's own training loss, in the units of the loss it trains."""
    return metric.rsplit("/", 1)[-1].split("_")[0] == "loss"


def at_stage(metric: str, stage: str) -> str:
    """The same metric logged at another stage: at_stage("val/acc", "test") is test/acc."""
    return f"{stage}/{metric.split('/', 1)[-1]}"
