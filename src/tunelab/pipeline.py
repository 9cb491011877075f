"""What train.py and eval.py run: compose the parts from the config, fit, test, write metrics."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from tunelab import checks
from tunelab.errors import ConfigError
from tunelab.module import TransformerModule
from tunelab.tasks import get_task

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test as the config says; returns the final metrics (also in <run dir>/metrics.json)."""
    checks.validate(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    task = get_task(cfg.data.task)
    datamodule = build_datamodule(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    if cfg.train:
        datamodule.prepare_data()
        datamodule.setup("fit")
        module = TransformerModule(**module_kwargs(cfg, datamodule))
    else:
        module = TransformerModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    trainer = build_trainer(cfg, task)
    log_config(trainer, cfg)

    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_metrics = _as_floats(trainer.callback_metrics)
    if cfg.test:
        best = _best_checkpoint(trainer) if cfg.train else ckpt_path
        trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False)
    metrics = fit_metrics | _as_floats(trainer.callback_metrics)
    write_metrics(cfg, metrics, trainer)
    return metrics


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    tokenizer = cfg.model.get("tokenizer") or cfg.model.name_or_path
    return instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.seed, _recursive_=False)


def module_kwargs(cfg: DictConfig, datamodule) -> dict[str, Any]:
    container = lambda c: OmegaConf.to_container(c, resolve=True) if c is not None else None  # noqa: E731
    return dict(
        model=container(cfg.model),
        task=cfg.data.task,
        loss=container(cfg.loss),
        optimizer=container(cfg.optimizer),
        scheduler=container(cfg.get("scheduler")) or None,
        label_names=list(datamodule.label_names),
        class_counts=datamodule.class_counts,
        vocab_size=getattr(datamodule, "vocab_size", None),
    )


def build_trainer(cfg: DictConfig, task) -> pl.Trainer:
    callbacks = instantiate_group(cfg.get("callbacks"), monitor=task)
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer_cfg = cfg.trainer
    if _is_multirun() and trainer_cfg.get("strategy") == "ddp":
        # Lightning's ddp launcher re-runs sys.argv in each child rank; under `-m` that would relaunch the
        # whole sweep. Spawned ranks run this job only.
        log.info("multirun: trainer.strategy=ddp -> ddp_spawn so child ranks do not relaunch the sweep")
        trainer_cfg = OmegaConf.merge(trainer_cfg, {"strategy": "ddp_spawn"})
    # the datamodule's sampler shards batches across ranks itself (keeps length grouping intact)
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, use_distributed_sampler=False)


def instantiate_group(group: DictConfig | None, monitor=None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a _target_; monitor-less
    checkpoint/early-stopping entries get the task's monitor metric."""
    objects = []
    for name, entry in (group or {}).items():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        if monitor is not None and "monitor" in entry and entry.monitor is None:
            entry = entry.copy()
            with open_dict(entry):
                entry.monitor = f"val/{monitor.monitor}"
                entry.mode = monitor.mode
        objects.append(instantiate(entry))
    return objects


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """ckpt_path=last picks the newest last.ckpt among this task's runs."""
    path = cfg.get("ckpt_path")
    if path is None:
        return None
    if path == "last":
        candidates = sorted(Path(cfg.paths.log_dir, cfg.task_name).glob("*/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(f"ckpt_path=last: no last.ckpt under {Path(cfg.paths.log_dir, cfg.task_name)}; pass a path.")
        return str(candidates[-1])
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path} does not exist; pass the path of a .ckpt file (or ckpt_path=last).")
    return str(path)


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if ckpt is None or not getattr(ckpt, "best_model_path", ""):
        log.info("no best checkpoint kept: testing the final weights")
        return None
    return ckpt.best_model_path


@rank_zero_only
def log_config(trainer: pl.Trainer, cfg: DictConfig) -> None:
    """The full resolved config as hyper-parameters of every logger (W&B, TensorBoard, CSV)."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def _as_floats(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
    return out


@rank_zero_only
def write_metrics(cfg: DictConfig, metrics: dict[str, float], trainer: pl.Trainer) -> None:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())},
        "best_checkpoint": _best_checkpoint(trainer) if cfg.train else cfg.ckpt_path,
        "global_step": trainer.global_step,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    log.info("metrics: %s", json.dumps(record["metrics"]))
