"""Entry point shared by train.py and eval.py: run the pipeline, turn user errors into one line."""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from tunelab.errors import ConfigError
from tunelab.pipeline import run
from tunelab.tasks import get_task

log = logging.getLogger("tunelab")


def main_entry(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except ConfigError as err:
        # one clear line instead of a traceback: the message names the fix
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    name = cfg.get("optimized_metric") or f"val/{get_task(cfg.data.task).monitor}"
    return metrics.get(name)
