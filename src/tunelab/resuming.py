"""Resuming continues the run a checkpoint holds: what the resumed run must share with it (model, data, loss,
optimizer, scheduler, adapter, seed), checked before anything loads beyond the data config, and what may change."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from tunelab import run_layout as layout
from tunelab.checkpoints import hydra_dir_of, training_config
from tunelab.errors import ConfigError

log = logging.getLogger(__name__)


# what a resumed run must share with the run its checkpoint comes from: its model, data and the settings below; the
# trainer's limits may change, and so may what does not change what trains (compiling, loading batches)
RESUMED_SETTINGS = ("peft", "loss", "optimizer", "scheduler")  # peft first: it sets its own optimizer.lr
MAY_CHANGE = {"model": {"compile", "compile_dynamic", "compile_scope", "compile_mode", "compile_backend", "compile_eval",
                        "compile_cache_dir", "gradient_checkpointing"},
              "data": {"num_workers", "pin_memory", "eval_batch_size", "cache_dir", "predict_file"}}
# what sets a run's number of optimizer steps, which the scheduler spans
RUN_LENGTH = ("trainer.max_steps", "trainer.max_epochs", "trainer.limit_train_batches",
              "trainer.accumulate_grad_batches", "data.batch_size", "data.train_limit")


def check_resume(path: str | Path, trained: Mapping[str, Any], now: Mapping[str, Any], cfg: DictConfig) -> None:
    """Resuming continues the checkpoint's run, with its optimizer and scheduler state: a command line that
    names another model, data, loss, optimizer, scheduler, adapter or seed would record the continued run
    under settings it did not train with (and sweeps and comparisons would pair it so), or fail to load the
    weights. Another length (training longer after a max_steps stop) is allowed, with a warning: the schedule
    is rebuilt for it."""
    trained_cfg = training_config(path)
    for key, before, after in _resume_differences(trained, now, trained_cfg, cfg):
        if before != after:
            run_overrides = _run_overrides(path)
            raise ConfigError(f"ckpt_path={path} was trained with {key}={before}, this run says {after}: resuming "
                              "continues that run, so pass its settings (its .hydra/overrides.yaml"
                              f"{': ' + run_overrides if run_overrides else ''}), or train from scratch without "
                              "ckpt_path.")
    if trained_cfg is None or not now.get("scheduler"):
        return
    changed = [f"{key}={OmegaConf.select(trained_cfg, key, default=None)} -> {OmegaConf.select(cfg, key, default=None)}"
               for key in RUN_LENGTH if OmegaConf.select(trained_cfg, key, default=None) != OmegaConf.select(cfg, key, default=None)]
    if changed:
        log.warning("ckpt_path=%s was trained for another length (%s): the learning-rate schedule is rebuilt for this "
                    "run's steps from where the checkpoint left off, so the result differs from a run trained to this "
                    "length from the start", path, ", ".join(changed))


def _resume_differences(trained: Mapping[str, Any], now: Mapping[str, Any], trained_cfg: DictConfig | None,
                        cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """(key, trained, now) for every setting a resumed run must share: the module's hyper-parameters (resolved),
    and the run's seed and data config (as written: ${paths.data_dir}/..., with paths.data_dir)."""
    differences = []
    for group in ("model", *RESUMED_SETTINGS):
        before, after = trained.get(group) or {}, now.get(group) or {}
        keys = sorted({*before, *after} - MAY_CHANGE.get(group, set()))
        differences += [(f"{group}.{key}", before.get(key), after.get(key)) for key in keys]
    if trained_cfg is not None:
        differences.append(("seed", trained_cfg.get("seed"), cfg.seed))
        written = [OmegaConf.to_container(c, resolve=False) for c in (trained_cfg, cfg)]
        before, after = ({**c.get("data", {}), "data_dir": (c.get("paths") or {}).get("data_dir")} for c in written)
        keys = {*before, *after} - MAY_CHANGE["data"] - {k.split(".")[1] for k in RUN_LENGTH if k.startswith("data.")}
        differences += [("paths.data_dir" if key == "data_dir" else f"data.{key}", before.get(key), after.get(key))
                        for key in sorted(keys)]
    return differences


def _run_overrides(path: str | Path) -> str:
    """The command-line overrides of the run that wrote `path` (but its ckpt_path), as one string ('' without)."""
    hydra_dir = hydra_dir_of(path)
    file = hydra_dir / layout.OVERRIDES_YAML if hydra_dir is not None else None
    if file is None or not file.is_file():
        return ""
    return " ".join(str(o) for o in OmegaConf.load(file) if not str(o).lstrip("+~").startswith("ckpt_path="))
