"""The callbacks entries before anything loads: each importable, its monitor a metric the run logs, and what it
needs of the trainer and the task (early stopping a validation, text samples a causal LM, FSDP a best checkpoint)."""

from __future__ import annotations

import importlib

from hydra.utils import get_class
from lightning.pytorch.callbacks import EarlyStopping, WeightAveraging
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import DictConfig

from tunelab.callbacks import GenerateSample
from tunelab.errors import ConfigError
from tunelab.monitoring import callback_monitor, monitor
from tunelab.task_base import Task
from tunelab.token_tasks import CausalLMTask
from tunelab.trainer import strategy_name


def check_callbacks(cfg: DictConfig, task: Task) -> None:
    """ConfigError for a callbacks entry that cannot work with this run (one line naming the fix)."""
    _check_fsdp_keeps_a_best_checkpoint(cfg)
    _check_early_stopping_can_validate(cfg)
    _check_generate_has_a_language_model(cfg, task)
    _check_callback_monitors(cfg)


def _is_fsdp(cfg: DictConfig) -> bool:
    strategy = cfg.trainer.get("strategy")
    target = strategy.get("_target_") if isinstance(strategy, DictConfig) else None
    return issubclass(get_class(target), FSDPStrategy) if target else strategy_name(strategy).startswith("fsdp")


def _check_callback_monitors(cfg: DictConfig) -> None:
    """A callback's own monitor must be a metric the run logs, with a direction (mode auto takes the metric's);
    on the run's metric (monitor auto) a mode can only agree with the run's direction."""
    for name, entry in (cfg.get("callbacks") or {}).items():
        if not isinstance(entry, DictConfig) or entry.get("monitor") is None:
            continue
        try:
            callback_monitor(cfg, entry.monitor, entry.get("mode", "auto"), f"callbacks.{name}")
        except ConfigError as err:
            if entry.monitor == "auto":  # a mode against the run's metric: the line names the key already
                raise
            raise ConfigError(f"callbacks.{name}.monitor={entry.monitor}: {err}") from None


def _check_generate_has_a_language_model(cfg: DictConfig, task: Task) -> None:
    generating = _callbacks_of(cfg, GenerateSample)
    if generating and not isinstance(task, CausalLMTask):
        raise ConfigError(f"callbacks.{generating[0]} samples text from a causal LM, but data={cfg.data.name} is a "
                          f"{task.name} task: drop it (callbacks=default).")


def _check_early_stopping_can_validate(cfg: DictConfig) -> None:
    stopping = _callbacks_of(cfg, EarlyStopping)
    if cfg.get("train") and stopping and cfg.trainer.get("limit_val_batches") == 0:
        raise ConfigError(f"callbacks.{stopping[0]} stops on {monitor(cfg)[0]}, but trainer.limit_val_batches=0 runs "
                          "no validation: let validation run, or drop it (callbacks=default).")


def _check_fsdp_keeps_a_best_checkpoint(cfg: DictConfig) -> None:
    # FSDP leaves the trained module wrapped: the test and the export load the best checkpoint into a fresh
    # module (tunelab.pipeline), so one must be kept
    if not _is_fsdp(cfg):
        return
    checkpoint = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if cfg.get("train") and (cfg.get("test") or cfg.get("export")) and not (checkpoint and checkpoint.get("monitor")):
        raise ConfigError("trainer=fsdp tests and exports the best checkpoint (Lightning cannot reuse the module "
                          "it trained under FSDP): keep callbacks.model_checkpoint with a monitor, or set "
                          "test=false export=false.")


def check_weight_averaging(cfg: DictConfig) -> None:
    # Lightning's WeightAveraging copies the whole module before the strategy wraps it, then zips the copy's
    # parameters with the wrapped module's: FSDP's flat shards would be averaged into the wrong tensors
    averaging = _callbacks_of(cfg, WeightAveraging)
    if averaging and cfg.get("train") and _is_fsdp(cfg):
        raise ConfigError(f"callbacks.{averaging[0]} averages a full copy of the weights, which FSDP shards: use "
                          "trainer=ddp, or drop the weight averaging (callbacks=default).")


def _callbacks_of(cfg: DictConfig, cls: type) -> list[str]:
    """The callbacks entries whose _target_ is `cls` or a subclass (a factory function is neither)."""
    return [name for name, target in _callback_targets(cfg).items() if isinstance(target, type) and issubclass(target, cls)]


def _callback_targets(cfg: DictConfig) -> dict[str, object]:
    """What each callbacks entry's _target_ names (a class, or a function that builds one)."""
    targets = {}
    for name, entry in (cfg.get("callbacks") or {}).items():
        if not (isinstance(entry, DictConfig) and entry.get("_target_")):
            continue
        module, _, attribute = entry._target_.rpartition(".")
        try:  # importlib, not hydra's locate: that logs a three-line error of its own first
            targets[name] = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError, ValueError) as err:
            raise ConfigError(f"callbacks.{name}._target_={entry._target_} cannot be imported ({err}): fix the "
                              f"path, or drop callbacks.{name}.") from None
    return targets
