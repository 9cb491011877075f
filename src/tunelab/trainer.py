"""The Lightning Trainer of a run: callbacks and loggers instantiated from conf/callbacks and conf/logger
(`monitor: auto` filled in with the run's monitored metric), the always-on Resilience callback, the
AdaLoRA schedule when peft=adalora, no profiling cost unless trainer.profiler names a profiler, and DDP /
FSDP under Hydra multirun."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from omegaconf import DictConfig, open_dict, read_write

from tunelab import peft_adapters, sweeps, tracking
from tunelab.errors import ConfigError
from tunelab.monitoring import callback_monitor
from tunelab.resilience import Resilience

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    callbacks = instantiate_group(cfg.get("callbacks"), cfg)
    # W&B: tags for the data/loss/optimizer choices; in a sweep, group = sweep and name = overrides
    loggers = instantiate_group(tracking.logger_group(cfg), group_name="logger")
    # nothing to monitor the learning rate into, or no lr to monitor: Adafactor's relative step (optimizer.lr=null)
    # keeps its step size inside the optimizer's state
    if not loggers or (cfg.get("train") and cfg.optimizer.get("lr") is None):
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a bar callback with the bar off
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if peft_adapters.is_adalora(cfg.get("peft")):
        from tunelab.adalora import AdaLoraSchedule

        # first: its rank update completes a step, before any callback saves that step (a SIGTERM checkpoint
        # written before it would resume without the step's importance update)
        callbacks.insert(0, AdaLoraSchedule(cfg.peft.tinit_ratio, cfg.peft.tfinal_ratio))
    # always on, whatever the callbacks group: graceful SIGTERM/SIGINT/SIGUSR2, exact mid-epoch resume, NaN guard
    callbacks.append(Resilience(on_nan=cfg.get("on_nan", "stop")))
    # the datamodule's batch sampler shards batches across ranks itself (keeps length grouping intact)
    profiler = {} if cfg.trainer.get("profiler") else {"profiler": NoProfiler()}
    trainer = built("trainer", cfg.trainer, callbacks=callbacks, logger=loggers or False, use_distributed_sampler=False,
                    **profiler)
    if isinstance(trainer.strategy, (DDPStrategy, FSDPStrategy)):  # one process per device, started at fit
        share_cores_between_cpu_ranks(trainer)
        if sweeps.is_multirun():
            launch_ddp_children_for_this_job_only(cfg)
            _SWEEP_JOB_STRATEGIES.append(trainer.strategy)
    tracking.log_config(trainer, cfg)
    return trainer


class NoProfiler(PassThroughProfiler):
    """Lightning's default when trainer.profiler is null (it times nothing), without the cost of timing
    nothing: Lightning enters `profiler.profile(name)` around every hook call of every callback and of the
    module, about 60 a training step, each a generator-based context manager of 8 Python calls. A GPU
    step replayed as a CUDA graph waits for the host, so it pays for every one of them."""

    _NOTHING = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._NOTHING


def strategy_name(strategy: str | DictConfig | None) -> str:
    """trainer.strategy as a lower-case name: "ddp", "auto", or the class of a configured strategy
    ("fsdpstrategy" for lightning.pytorch.strategies.FSDPStrategy)."""
    if isinstance(strategy, DictConfig):
        return str(strategy.get("_target_", "")).rsplit(".", 1)[-1].lower()
    return str(strategy or "auto").lower()


def share_cores_between_cpu_ranks(trainer: pl.Trainer) -> None:
    """DDP on CPU runs its ranks on one machine, and torch gives every process all cores by default: the
    ranks' OpenMP threads then spin against each other (two processes on two cores, two threads each,
    ran several times slower than one). Each rank gets its share of the cores instead. Decided on what
    Lightning resolved: trainer=ddp says accelerator auto, which is the CPU on a machine without a GPU."""
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))


def launch_ddp_children_for_this_job_only(cfg: DictConfig) -> None:
    """Lightning's DDP (and FSDP) launcher starts ranks 1..N-1 by re-running `sys.argv` with
    `hydra.run.dir=<HydraConfig run.dir>` appended. Under multirun, sys.argv is the whole sweep
    (`-m lr=1e-5,1e-4`), so every child would relaunch the sweep. Point both at this job instead:
    its own overrides, run in its own job dir, as a single run: an experiment or hparams_search config
    among those overrides sets hydra.mode=MULTIRUN and would start a sweep (an Optuna study) again. The
    checkpoint is the one rank 0 resolved: a single run reads ckpt_path=last as the newest of any job's."""
    hydra_cfg = HydraConfig.get()
    given = sweeps.command_line_overrides()
    overrides = [o for o in given if sweeps.override_key(o) != "ckpt_path"]
    if cfg.get("ckpt_path") is not None or len(overrides) < len(given):
        overrides.append("ckpt_path=null" if cfg.get("ckpt_path") is None else f"ckpt_path='{cfg.ckpt_path}'")
    _SWEEP_ARGV[:] = _SWEEP_ARGV or sys.argv  # given back at the job's end (the sweep's W&B summary records it)
    sys.argv = [sys.argv[0], *overrides, "hydra.mode=RUN"]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    log.info("multirun + DDP: child ranks run this job only (%s)", " ".join(sys.argv[1:]))


_SWEEP_JOB_STRATEGIES: list = []  # the strategies of this sweep job's trainers (multirun + DDP / FSDP)
_SWEEP_ARGV: list[str] = []  # the sweep's own command line while a job's child ranks are pointed at the job


def end_sweep_job_ranks(timeout: float = 120.0) -> None:
    """At the end of a sweep job trained under DDP / FSDP: wait for the job's child ranks (they finish its run on
    their own; one still running after `timeout`, say stuck in a collective after rank 0 failed, is killed), and take
    them from Lightning's child-process observer first: once a child exits non-zero, as a failed job's ranks do
    after rank 0 has moved on, it SIGKILLs its own process, the sweep with every later job."""
    if _SWEEP_ARGV:
        sys.argv = list(_SWEEP_ARGV)
        _SWEEP_ARGV.clear()
    while _SWEEP_JOB_STRATEGIES:
        launcher = getattr(_SWEEP_JOB_STRATEGIES.pop(), "launcher", None)
        procs = getattr(launcher, "procs", None)
        if not procs:
            continue
        children = list(procs)
        procs.clear()  # the observer's own list: empty, it ends quietly at its next look
        for child in children:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("a child rank of this job was still running %.0f s after it: stopped", timeout)
                child.kill()
                child.wait()


def check_trainer_settings(trainer: DictConfig, scheduled: bool) -> None:
    """What a training run's trainer.* settings must agree on, which each key's own rule (schema) cannot see: a run
    takes a step (else it would test and export its untrained weights as its result), a learning-rate schedule has
    a number of steps to span, and validation, which picks the best checkpoint, comes before the run ends."""
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if trainer.get(key) == 0 and not isinstance(trainer.get(key), bool):
            raise ConfigError(f"trainer.{key}=0 trains nothing, yet the run would test and export its untrained "
                              f"weights: set trainer.{key} above 0 (test a checkpoint with eval.py ckpt_path=...).")
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if scheduled and epochs == -1 and steps == -1:
        raise ConfigError("trainer.max_epochs=-1 trains without end, so the learning-rate schedule has no length to "
                          "span: set trainer.max_steps, or scheduler=none.")
    if (trainer.get("min_epochs") or 0) > (epochs if epochs is not None and epochs >= 0 else float("inf")):
        raise ConfigError(f"trainer.min_epochs={trainer.min_epochs} is more than trainer.max_epochs={epochs}: lower "
                          "min_epochs or raise max_epochs.")
    if trainer.get("gradient_clip_algorithm") == "value" and trainer.get("gradient_clip_val") is None:
        raise ConfigError("trainer.gradient_clip_algorithm=value clips at trainer.gradient_clip_val, which is null: "
                          "set it (e.g. 0.5).")
    every = trainer.get("check_val_every_n_epoch")
    if every and epochs is not None and 0 < epochs < every and steps == -1:
        raise ConfigError(f"trainer.check_val_every_n_epoch={every} never validates in trainer.max_epochs={epochs}: "
                          "no best checkpoint, no early stopping; set check_val_every_n_epoch <= max_epochs.")


def built(where: str, entry: DictConfig, **kwargs) -> object:
    """hydra's instantiate, with a class's refusal of its settings (trainer.accelerator=tpu without torch_xla,
    trainer.strategy=foo, callbacks.model_checkpoint.save_top_k=-2) as one line naming the group."""
    try:
        return instantiate(entry, **kwargs)
    except InstantiationException as err:
        cause = str(err.__cause__ or err).strip().splitlines()
        raise ConfigError(f"{where} refuses its settings: {cause[0] if cause else type(err.__cause__).__name__}"
                          ) from None


def instantiate_group(group: DictConfig | None, cfg: DictConfig | None = None, group_name: str = "callbacks") -> list:
    """Instantiate every entry of a callbacks/logger group that has a _target_; a checkpoint's or early stopping's
    `monitor: auto` / `mode: auto` become the run's monitored metric / the metric's direction (callback_monitor)."""
    objects = []
    for name, entry in (group or {}).items():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        if cfg is not None and entry.get("monitor") is not None and "auto" in (entry.monitor, entry.get("mode")):
            entry = entry.copy()
            with open_dict(entry):
                entry.monitor, entry.mode = callback_monitor(cfg, entry.monitor, entry.get("mode", "auto"),
                                                             f"callbacks.{name}")
        elif entry.get("monitor", "") is None and entry.get("mode") == "auto":  # monitor=null: no direction to take
            entry = entry.copy()
            with open_dict(entry):
                del entry["mode"]
        objects.append(built(f"{group_name}.{name}", entry))
    return objects


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint on a monitored metric (the last-state checkpoint monitors nothing)."""
    monitored = [c for c in trainer.checkpoint_callbacks if c.monitor is not None and c.best_model_path]
    if not monitored:
        log.info("no best checkpoint kept: testing the final weights")
        return None
    return monitored[0].best_model_path

