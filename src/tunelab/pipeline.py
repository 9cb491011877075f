"""What train.py and eval.py run: compose the parts from the config, fit, test, write metrics."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from tunelab import checks, checkpoints, plots, sweeps
from tunelab.errors import ConfigError
from tunelab import peft_adapters
from tunelab.module import TransformerModule
from tunelab.resilience import Resilience, find_resilience
from tunelab.tasks import get_task

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test as the config says; returns the final metrics (also in <run dir>/metrics.json)."""
    if not sweeps.is_multirun():
        return _run(cfg)
    environ = dict(os.environ)
    try:
        return _run(cfg)
    finally:
        # a sweep runs its jobs in one process: DDP leaves LOCAL_RANK/WORLD_SIZE/MASTER_PORT and a process
        # group behind, which would make the next job believe its ranks were launched already
        os.environ.clear()
        os.environ.update(environ)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(cfg: DictConfig) -> dict[str, float]:
    checks.validate(cfg)
    claim_run_dir(cfg)
    peft_adapters.validate(cfg)
    peft_adapters.apply_lr(cfg)  # peft.lr -> optimizer.lr
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision") or "highest")
    task = get_task(cfg.data.task)
    sweeps.check_sweeper_direction(cfg, task.monitor, task.mode)
    datamodule = build_datamodule(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    checkpoints.check_checkpoint(ckpt_path, cfg)  # not a checkpoint / another task or label set: one line
    if cfg.train:
        datamodule.prepare_data()
        datamodule.setup("fit")
        module = TransformerModule(**module_kwargs(cfg, datamodule))
    elif peft_adapters.is_adapter_dir(ckpt_path):  # base model from cfg.model + a saved adapter
        datamodule.prepare_data()
        datamodule.setup("fit")
        module = TransformerModule(**peft_adapters.adapter_module_kwargs(module_kwargs(cfg, datamodule), ckpt_path))
        ckpt_path = None
    else:
        module = TransformerModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    trainer = build_trainer(cfg, task)
    log_config(trainer, cfg)

    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_metrics = _as_floats(trainer.callback_metrics)
    guard = find_resilience(trainer)
    if guard is not None and guard.skipped_batches:
        fit_metrics["train/skipped_batches"] = float(guard.skipped_batches)
    if guard is not None and guard.interrupted_checkpoint:
        # stopped by SIGTERM/SIGINT: no test on half-trained weights; the run resumes from last.ckpt
        log.warning("run interrupted; resume with ckpt_path=%s", guard.interrupted_checkpoint)
        return fit_metrics
    if cfg.test:
        best = _best_checkpoint(trainer) if cfg.train else ckpt_path
        trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False)
    metrics = fit_metrics | _as_floats(trainer.callback_metrics) | peft_adapters.parameter_counts(module.model)
    if cfg.train and trainer.is_global_zero:  # the tested (best) weights: peft.save_adapter / merge_on_save
        peft_adapters.save(module.model, cfg, datamodule.tokenizer)
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
        peft=container(cfg.get("peft")),
    )


def build_trainer(cfg: DictConfig, task) -> pl.Trainer:
    callbacks = instantiate_group(cfg.get("callbacks"), monitor=task)
    # W&B: tags for the data/loss/optimizer choices; in a sweep, group = sweep and name = overrides
    loggers = instantiate_group(sweeps.with_wandb_identity(cfg.get("logger")))
    if not loggers:  # nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if sweeps.is_multirun() and str(cfg.trainer.get("strategy", "")).startswith("ddp"):
        launch_ddp_children_for_this_job_only()
    # always on, whatever the callbacks group: graceful SIGTERM/SIGINT, exact mid-epoch resume, NaN guard
    callbacks.append(Resilience(on_nan=cfg.get("on_nan", "stop")))
    # the datamodule's sampler shards batches across ranks itself (keeps length grouping intact)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, use_distributed_sampler=False)


def launch_ddp_children_for_this_job_only() -> None:
    """Lightning's DDP launcher starts ranks 1..N-1 by re-running `sys.argv` with
    `hydra.run.dir=<HydraConfig run.dir>` appended. Under multirun, sys.argv is the whole sweep
    (`-m lr=1e-5,1e-4`), so every child would relaunch the sweep. Point both at this job instead:
    its own overrides, run in its own job dir."""
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    log.info("multirun + DDP: child ranks run this job only (%s)", " ".join(sys.argv[1:]))


def instantiate_group(group: DictConfig | None, monitor=None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a _target_; `monitor: auto`
    (checkpoint, early stopping) becomes the task's monitor metric and mode."""
    objects = []
    for entry in (group or {}).values():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        if monitor is not None and entry.get("monitor") == "auto":
            entry = entry.copy()
            with open_dict(entry):
                entry.monitor = f"val/{monitor.monitor}"
                entry.mode = monitor.mode
        objects.append(instantiate(entry))
    return objects


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
    if peft_adapters.is_adapter_dir(path):  # <run dir>/adapter from peft.save_adapter
        return str(path)
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path} does not exist; pass the path of a .ckpt file (or ckpt_path=last).")
    return str(path)


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint on a monitored metric (the last-state checkpoint monitors nothing)."""
    monitored = [c for c in trainer.checkpoint_callbacks if c.monitor is not None and c.best_model_path]
    ckpt = monitored[0] if monitored else None
    if ckpt is None:
        log.info("no best checkpoint kept: testing the final weights")
        return None
    return ckpt.best_model_path


@rank_zero_only
def log_config(trainer: pl.Trainer, cfg: DictConfig) -> None:
    """The full resolved config as hyper-parameters of every logger (W&B, TensorBoard, CSV)."""
    hparams = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
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
    tmp = out / f"metrics.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out / "metrics.json")  # atomic: a reader never sees half a file
    log.info("metrics: %s", json.dumps(record["metrics"]))
    sweeps.record_job(cfg, record)  # one line in <sweep dir>/results.jsonl
    if cfg.get("plots", True):
        plots.write_run_plots(out)  # learning curves, confusion matrix (never fails the run)


SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password)", re.IGNORECASE)


def redact_secrets(value: Any, key: str = "") -> Any:
    """Config values under secret-looking keys, and the W&B key from the environment, become ***."""
    if isinstance(value, dict):
        return {k: redact_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_secrets(v, key) for v in value]
    env_key = os.environ.get("WANDB_API_KEY")
    if SECRET_KEY.search(key) and value not in (None, ""):
        return "***"
    if env_key and isinstance(value, str) and env_key in value:
        return value.replace(env_key, "***")
    return value


def claim_run_dir(cfg: DictConfig) -> None:
    """Never mix two runs in one dir: refuse a dir that already holds a run (unless overwrite=true or
    resuming from a checkpoint inside it) and take it with an exclusive marker file, so two runs
    started at the same instant cannot share it. DDP child ranks use rank 0's dir."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    out = Path(cfg.paths.output_dir)
    ckpt = cfg.get("ckpt_path")
    resuming_here = bool(ckpt) and ckpt != "last" and out.resolve() in Path(ckpt).resolve().parents
    allowed = bool(cfg.get("overwrite")) or resuming_here
    used = (out / "metrics.json").exists() or any((out / "checkpoints").glob("*.ckpt"))
    if used and not allowed:
        raise ConfigError(f"run dir {out} already holds a run; pass overwrite=true to replace it or choose another hydra.run.dir.")
    out.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(out / ".tunelab_run", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        if not allowed:
            raise ConfigError(f"run dir {out} is taken by another run; choose another hydra.run.dir.") from None
