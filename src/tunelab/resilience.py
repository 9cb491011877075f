"""Always-on training safety: graceful stop on SIGTERM/SIGINT with a resumable checkpoint, exact
mid-epoch resume, and a guard against non-finite losses."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from tunelab.errors import TrainingError

log = logging.getLogger(__name__)

LOOP_POSITION_KEY = "tunelab_loop_position"


class Resilience(pl.Callback):
    """* SIGTERM (what SLURM sends before preemption) or SIGINT: finish the current optimizer step,
      write <run dir>/checkpoints/last.ckpt, stop. Resume with ckpt_path=last (or the path).
    * Mid-epoch resume: checkpoints record how many batches of the epoch were consumed; on resume
      the sampler skips exactly those (same order, from (seed, epoch)), so the run continues as if
      uninterrupted.
    * on_nan=stop: a non-finite training loss stops the run naming the step and the last good
      checkpoint; on_nan=skip drops that batch (no optimizer step) and counts it in train/skipped_batches.
    """

    def __init__(self, on_nan: str = "stop", handle_signals: bool = True) -> None:
        if on_nan not in {"stop", "skip", "off"}:
            raise ValueError(f"on_nan={on_nan!r}: use stop, skip or off.")
        self.on_nan = on_nan
        self.handle_signals = handle_signals
        self.stop_signal: int | None = None
        self.interrupted_checkpoint: str | None = None
        self.skipped_batches = 0
        self._resume_position: dict | None = None
        self._previous_handlers: dict[int, Any] = {}

    # ---- signals ---------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._skip_consumed_batches(trainer)
        if not self.handle_signals:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous_handlers[sig] = signal.signal(sig, self._request_stop)
            except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
                return

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.stop_signal = signum
        log.warning("received %s: stopping after this step with a resumable checkpoint", signal.Signals(signum).name)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.stop_signal is not None
        if trainer.world_size > 1:  # every rank must stop at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and not trainer.should_stop:
            path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            trainer.save_checkpoint(path)  # Lightning writes atomically (temp file + rename)
            self.interrupted_checkpoint = str(path)
            trainer.should_stop = True
            log.warning("interrupted at step %d: resume with ckpt_path=%s", trainer.global_step, path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    # ---- mid-epoch position ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_batches": self.skipped_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_batches = state_dict.get("skipped_batches", 0)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
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
        """True if the step may proceed. One host sync per step; on_nan=off skips the check."""
        if self.on_nan == "off" or bool(torch.isfinite(loss)):
            return True
        if self.on_nan == "skip":
            self.skipped_batches += 1
            log.warning("non-finite loss at step %d: batch skipped (%d so far)", trainer.global_step, self.skipped_batches)
            return False
        last = _last_good_checkpoint(trainer)
        raise TrainingError(
            f"non-finite training loss ({float(loss)}) at step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"last good checkpoint: {last or 'none yet'}. Lower optimizer.lr, set trainer.gradient_clip_val, "
            "or use on_nan=skip."
        )


def _last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    folder = Path(trainer.default_root_dir) / "checkpoints"
    ckpts = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return str(ckpts[-1]) if ckpts else None


def find_resilience(trainer: pl.Trainer) -> Resilience | None:
    return next((c for c in trainer.callbacks if isinstance(c, Resilience)), None)
