"""A resumed run's CSV log goes on from its checkpoint: the CSV logger starts a fresh metrics.csv, so the rows its
checkpoint's run logged up to the checkpoint are read before the loggers start and written back after."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from tunelab import run_layout as layout
from tunelab.checkpoints import hydra_dir_of, load_checkpoint_header


def csv_history(ckpt_path: str) -> dict[Path, tuple[list[str], list[dict]]]:
    """What the CSV loggers of a checkpoint's run logged up to the checkpoint (step <= its global step), by the
    file's path in the run dir; read before this run's loggers start, which remove the files of their dirs (the
    same files, when a sweep resumes in place). Rows logged after the checkpoint are left out: the resumed run
    logs them anew."""
    hydra_dir = hydra_dir_of(ckpt_path)
    if hydra_dir is None or Path(ckpt_path).is_dir() or rank_zero_only.rank != 0:
        return {}
    step, history = int(load_checkpoint_header(ckpt_path).get("global_step", 0)), {}
    for path in hydra_dir.parent.glob(f"*/{layout.CSV_METRICS}"):
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            rows = [r for r in reader if int(float(r.get("step") or 0)) <= step]
            history[path.relative_to(hydra_dir.parent)] = (list(reader.fieldnames or []), rows)
    return history


def restore_csv_history(loggers: Sequence[Any], output_dir: str | Path,
                        history: dict[Path, tuple[list[str], list[dict]]]) -> None:
    """A resumed run's csv/metrics.csv begins with its checkpoint's history (csv_history): the CSV logger starts
    a fresh file, and the learning curves would begin at the resume."""
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        try:
            rel = Path(logger.log_dir).resolve().relative_to(Path(output_dir).resolve()) / layout.CSV_METRICS
        except ValueError:  # a logger writing outside the run dir: no counterpart in the old run
            continue
        if rel not in history:
            continue
        keys, rows = history[rel]
        writer = logger.experiment
        with open(writer.metrics_file_path, "w", newline="") as file:
            out = csv.DictWriter(file, fieldnames=keys)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = keys  # later rows append under this header (a new key rewrites it, rows kept)
