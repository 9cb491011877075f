"""Always-on training safety: graceful stop on SIGTERM/SIGINT/SIGUSR2 with a resumable checkpoint, exact
mid-epoch resume, and a guard against non-finite losses."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from tunelab import run_layout as layout
from tunelab.errors import ConfigError, TrainingError
from tunelab.rundir import newest_checkpoint

log = logging.getLogger(__name__)

LOOP_POSITION_KEY = "tunelab_loop_position"
# SIGUSR2: submitit's pre-emption notice (SLURM --signal=USR2@<s>), sent before SLURM stops the job
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class Interrupted(Exception):
    """Raised out of Trainer.fit by Resilience once a stop signal's last.ckpt is written; the pipeline ends
    the run there (no test on half-trained weights)."""


class Resilience(pl.Callback):
    """* SIGTERM, SIGINT or SIGUSR2 (submitit's pre-emption notice): finish the current optimizer step (with
      gradient accumulation: the step the current batches add up to), write <run dir>/checkpoints/last.ckpt
      and end fit at once (Interrupted). Resume with ckpt_path=last (or the path). Under DDP / FSDP the
      ranks agree on stopping (a signal may reach one rank only) every `stop_check_every` batches and at
      each epoch's last, the same batches on every rank: the agreement is a collective and a host sync,
      so not every step.
    * Mid-epoch resume: checkpoints record how many batches of the epoch were consumed; on resume
      the sampler skips exactly those (same order, from (seed, epoch)), so the run continues as if
      uninterrupted.
    * on_nan=stop: a non-finite training loss stops the run naming the step and the last good
      checkpoint; on_nan=skip drops that batch (no optimizer step) and counts it in train/skipped_batches.
      On an accelerator the stop check is deferred (`defer_nan_check`): reading the loss on the host
      every step is a device sync that stalls the step pipeline, so the flag accumulates on the device
      and is read every `nan_check_every` steps, at epoch end and before any checkpoint is written
      (a checkpoint never holds weights updated from a non-finite loss). Under DDP / FSDP it is deferred
      on CPUs too, and the ranks read their flags together: a rank that stopped alone would leave the
      others waiting in a collective. on_nan=skip needs a single process (validation refuses it).
    """

    def __init__(self, on_nan: str = "stop", handle_signals: bool = True, defer_nan_check: bool | None = None,
                 nan_check_every: int = 50, stop_check_every: int = 10) -> None:
        if on_nan not in {"stop", "skip", "off"}:
            raise ValueError(f"on_nan={on_nan!r}: use stop, skip or off.")
        self.on_nan = on_nan
        self.defer_nan_check = defer_nan_check  # None = defer on accelerators, check at once on CPU
        self.nan_check_every = max(1, nan_check_every)
        self._first_bad_step: torch.Tensor | None = None  # on the device; -1 while every loss was finite
        self.handle_signals = handle_signals
        self.stop_check_every = max(1, stop_check_every)
        self._batches = 0  # training batches this process ran in this fit: equal on every rank
        self._step_seen = 0  # the global step at the previous batch end
        self._stopping = False  # a stop was requested (agreed by every rank): at the next optimizer step
        self.stop_signal: int | None = None
        self.interrupted_checkpoint: str | None = None
        self.skipped_batches = 0
        self._resume_position: dict | None = None
        self._previous_handlers: dict[int, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # validation checked the config; devices="auto" / -1 only resolve here
            check_skip_runs_alone(self.on_nan, trainer.world_size)

    # ---- signals ---------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._skip_consumed_batches(trainer)
        self._step_seen = trainer.global_step
        if not self.handle_signals:
            return
        installed = True
        for sig in STOP_SIGNALS:
            try:
                self._previous_handlers[sig] = signal.signal(sig, self._request_stop)
            except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
                installed = False
                break
        # one collective at the start: every rank skips Lightning's broadcast, or none. None when a SIGTERM
        # came before this handler (sanity check): Lightning's flag is set, its broadcast stops every rank
        if trainer.world_size > 1:
            ours = installed and not getattr(trainer, "received_sigterm", False)
            if trainer.strategy.reduce_boolean_decision(ours, all=True):
                _skip_lightning_sigterm_broadcast(trainer)

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.stop_signal = signum
        log.warning("received %s: stopping after this step with a resumable checkpoint", signal.Signals(signum).name)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        stepped = trainer.global_step != self._step_seen  # this batch ended an optimizer step
        self._step_seen = trainer.global_step
        if not self._stopping:
            stop = self.stop_signal is not None
            if trainer.world_size > 1:  # every rank must stop at the same step
                last_of_epoch = batch_idx + 1 >= trainer.num_training_batches  # a late signal is not lost
                if self._batches % self.stop_check_every and not last_of_epoch:
                    return
                stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            self._stopping = stop
        # only after an optimizer step: mid-accumulation, the checkpoint would lose the gradients summed so far
        if self._stopping and stepped:
            path = layout.last_checkpoint(trainer.default_root_dir)
            trainer.save_checkpoint(path)  # Lightning writes atomically (temp file + rename)
            self.interrupted_checkpoint = str(path)
            log.warning("interrupted at step %d: resume with ckpt_path=%s", trainer.global_step, path)
            # Lightning writes a step's logged values (train/loss_step, grad_norm) after the batch-end hooks, which
            # this stop skips: written here, or the checkpoint's own step would be missing from the history for good
            trainer._logger_connector.update_train_step_metrics()
            # ends fit here (on every rank: the stop was agreed). trainer.should_stop would not: Lightning
            # trains on to min_epochs, then validates and lets the checkpoint callbacks rewrite last.ckpt
            # with the epoch marked done, so a resume would skip the rest of it
            raise Interrupted(str(path))

    # ---- mid-epoch position ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_batches": self.skipped_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_batches = state_dict.get("skipped_batches", 0)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.flush_nan_check(trainer)  # raising here aborts the save: no checkpoint of NaN weights
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        checkpoint[LOOP_POSITION_KEY] = {"epoch": trainer.current_epoch, "batches_done": progress.processed}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._resume_position = checkpoint.get(LOOP_POSITION_KEY)

    def _skip_consumed_batches(self, trainer: pl.Trainer) -> None:
        # called from on_train_start: Lightning does not call on_train_epoch_start for an epoch it
        # resumes mid-way, and the sampler is iterated only after on_train_start
        position, self._resume_position = self._resume_position, None
        sampler = getattr(trainer.datamodule, "train_sampler", None)
        if position and sampler is not None and position["epoch"] == trainer.current_epoch:
            sampler.skip_batches = position["batches_done"]
            log.info("resuming epoch %d after its first %d batches", trainer.current_epoch, position["batches_done"])

    # ---- non-finite losses -----------------------------------------------------------------------
    def check_loss(self, trainer: pl.Trainer, loss: torch.Tensor) -> bool:
        """True if the step may proceed. on_nan=skip must decide now (one host sync per step)."""
        if self.on_nan == "off":
            return True
        # ranks must stop together (deferred checks are read by all at once): a rank stopping alone leaves
        # the others in a collective
        defer = trainer.world_size > 1 or (
            self.defer_nan_check if self.defer_nan_check is not None else loss.device.type != "cpu")
        if self.on_nan == "stop" and defer:
            self._record_deferred(trainer, loss.detach())
            return True
        if bool(torch.isfinite(loss)):
            return True
        if self.on_nan == "skip":
            self.skipped_batches += 1
            log.warning("non-finite loss at step %d: batch skipped (%d so far)", trainer.global_step, self.skipped_batches)
            return False
        self._stop_for_nan(trainer, trainer.global_step, f"({float(loss.detach())}) ")

    def _record_deferred(self, trainer: pl.Trainer, loss: torch.Tensor) -> None:
        # device-side only (a Python scalar in torch.where needs no host-to-device copy)
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        first_bad = self._first_bad_step
        self._first_bad_step = torch.where((first_bad < 0) & ~torch.isfinite(loss), trainer.global_step, first_bad)
        if (trainer.global_step + 1) % self.nan_check_every == 0:
            self.flush_nan_check(trainer)

    def flush_nan_check(self, trainer: pl.Trainer) -> None:
        """Read the deferred flag (one sync) and stop if a loss since the last read was non-finite. Under
        DDP / FSDP every rank flushes at the same points (each records every step), gathers the ranks'
        flags and stops, naming the earliest bad step, if any rank saw one."""
        if self._first_bad_step is None:
            return
        first_bad, self._first_bad_step = self._first_bad_step, None
        if trainer.world_size > 1:
            first_bad = trainer.strategy.all_gather(first_bad)
        first_bad = first_bad.reshape(-1)  # one entry per rank
        bad = first_bad[first_bad >= 0]
        if bad.numel():
            self._stop_for_nan(trainer, int(bad.min()))

    def _stop_for_nan(self, trainer: pl.Trainer, step: int, value: str = "") -> None:
        last = newest_checkpoint(Path(trainer.default_root_dir) / layout.CHECKPOINTS_DIR)
        raise TrainingError(
            f"non-finite training loss {value}at step {step} (epoch {trainer.current_epoch}); "
            f"last good checkpoint: {last or 'none yet'}. Lower optimizer.lr, set trainer.gradient_clip_val, "
            "or use on_nan=skip."
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush_nan_check(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(trainer)
        self.flush_nan_check(trainer)
        # a signal after the last training step (during the last validation): the run still stops before test
        # and export, as a signal promises; resumed from this last.ckpt, it goes straight to them
        late = self.stop_signal is not None and self.interrupted_checkpoint is None
        if trainer.world_size > 1:
            late = trainer.strategy.reduce_boolean_decision(late, all=False)
        if late:
            path = layout.last_checkpoint(trainer.default_root_dir)
            trainer.save_checkpoint(path)
            self.interrupted_checkpoint = str(path)
            log.warning("interrupted after the last step: resume with ckpt_path=%s to test", path)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore(trainer)

    def _restore(self, trainer: pl.Trainer) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()
        vars(trainer.fit_loop.epoch_loop).pop(_LIGHTNING_BROADCAST, None)  # Lightning's own method again


_LIGHTNING_BROADCAST = "_broadcast_sigterm_tensor"


def _skip_lightning_sigterm_broadcast(trainer: pl.Trainer) -> None:
    """Lightning (>= 2.5.2) broadcasts rank 0's SIGTERM flag before every DDP / FSDP batch and reads it with
    `.item()`: a collective and a device sync per step (Lightning-AI/pytorch-lightning#21487). The flag is set
    by Lightning's SIGTERM handler, which Resilience's replaces, so it stays 0 and the broadcast only costs;
    the ranks agree on stopping every stop_check_every batches instead. A Lightning without the method is
    left as it is."""
    loop = trainer.fit_loop.epoch_loop
    if callable(getattr(loop, _LIGHTNING_BROADCAST, None)):
        setattr(loop, _LIGHTNING_BROADCAST, lambda: None)


def pass_on_preemption(signum: int) -> None:
    """After a SIGUSR2 stop has written last.ckpt: the handler that was there before the run's (submitit's, which
    requeues the job and exits) runs now, as it would have at the signal, but without losing the steps since the
    last periodic checkpoint. Other signals, or no Python handler: nothing (the caller exits 128 + signum)."""
    handler = signal.getsignal(signum)
    if signum == signal.SIGUSR2 and callable(handler):
        handler(signum, None)


def check_skip_runs_alone(on_nan: str, processes: int) -> None:
    """on_nan=skip drops a batch on one rank, leaving the others waiting for its gradients (Lightning: a None
    training_step is unsupported with several devices)."""
    if on_nan == "skip" and processes > 1:
        raise ConfigError(f"on_nan=skip needs one process, not {processes}; use on_nan=stop, which stops every rank "
                          "at a non-finite loss.")


def find_resilience(trainer: pl.Trainer) -> Resilience | None:
    return next((c for c in trainer.callbacks if isinstance(c, Resilience)), None)
