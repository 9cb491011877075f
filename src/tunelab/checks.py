"""Configuration checks that run before anything heavy (model load, tokenization, training)."""

from __future__ import annotations

import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from tunelab import schema
from tunelab.errors import ConfigError
from tunelab.tasks import TASKS, get_task


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError (one line naming the fix) for combinations that cannot train."""
    schema.check(cfg)  # types and ranges of every value first: the checks below rely on them
    if cfg.data.task not in TASKS:
        raise ConfigError(f"data.task={cfg.data.task!r} is unknown; use one of {sorted(TASKS)}.")
    task = get_task(cfg.data.task)
    loss_cls = get_class(cfg.loss._target_)
    if task.name not in loss_cls.tasks:
        needs = " or ".join(sorted(loss_cls.tasks))
        raise ConfigError(
            f"loss={loss_cls.name} needs a {needs} task; got data={cfg.data.name} ({task.name}). "
            f"Use loss={task.default_loss}."
        )
    if cfg.get("train") and cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be at least 1.")
    _check_devices(cfg)
    if not cfg.get("train") and not cfg.get("ckpt_path"):
        raise ConfigError("train=false tests a checkpoint: pass ckpt_path=<path to .ckpt>.")


def _check_devices(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    devices, accelerator = trainer.get("devices", 1), trainer.get("accelerator", "auto")
    if not isinstance(devices, int) or devices < 1:
        return  # "auto", -1 or a list of ids: Lightning resolves and validates them
    gpus = torch.cuda.device_count()
    if accelerator in {"gpu", "cuda"} and devices > gpus:
        raise ConfigError(
            f"trainer.devices={devices} but {gpus} GPU(s) are available; lower trainer.devices "
            "or use trainer.accelerator=cpu."
        )
