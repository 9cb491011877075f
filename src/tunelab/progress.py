"""Training progress without a GPU sync per step: a rich bar on a terminal, plain log lines when stdout is a
file or pipe (`make train > train.log`, SLURM, nohup), where the bar would draw nothing."""

from __future__ import annotations

import logging
import math
import sys
import time
from datetime import timedelta

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar

log = logging.getLogger(__name__)


def progress_bar(metrics_every: int = 25, every_s: float = 30.0) -> ProgressBar:
    """conf/callbacks/progress_bar.yaml: the rich bar when stdout is a terminal, else log lines."""
    if sys.stdout.isatty():
        return ThrottledRichProgressBar(metrics_every)
    return LogProgress(metrics_every, every_s)


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's RichProgressBar reads the logged metrics (`.item()`, a host-device sync) after every
    training batch. This one advances the bar every batch but refreshes the metric columns every
    `metrics_every` batches, so the GPU can run ahead of Python. The training loss is logged without
    prog_bar (Lightning would convert it to a number every batch) and only on logging steps; the bar
    shows the last batch's loss (training_step's output) at its refreshes."""

    def __init__(self, metrics_every: int = 25, **kwargs) -> None:
        super().__init__(**kwargs)
        self.metrics_every = max(1, metrics_every)
        self._loss = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._loss = step_loss(outputs)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _update_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training and not trainer.sanity_checking and trainer.global_step % self.metrics_every:
            return
        super()._update_metrics(trainer, pl_module)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        loss = self._loss if trainer.training else trainer.callback_metrics.get("train/loss_epoch")
        if loss is not None:
            items["train/loss"] = float(loss)
        return items


def step_loss(outputs):
    """The loss training_step returned (Lightning passes it to on_train_batch_end as {"loss": ...});
    None for a batch the NaN guard skipped."""
    return outputs.get("loss") if isinstance(outputs, dict) else outputs


class LogProgress(ProgressBar):
    """One log line every `every_steps` optimizer steps and at least every `every_s` seconds: epoch,
    step/total, loss, samples/s, elapsed and ETA; one line of validation metrics per validation. The
    loss is read only when a line is printed (the one sync), samples are counted from batch shapes."""

    def __init__(self, every_steps: int = 25, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_steps, self.every_s = max(1, every_steps), every_s
        self._enabled = True
        self._start = self._last = 0.0
        self._first_step = self._last_step = 0
        self._samples = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = self._last_step = trainer.global_step  # a resumed run times only its own steps
        self._samples = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._samples += len(batch["input_ids"])
        step, now = trainer.global_step, time.monotonic()
        due = step != self._last_step and step % self.every_steps == 0
        if self._enabled and (due or now - self._last >= self.every_s):
            self._last, self._last_step = now, step
            log.info("%s", self.train_line(trainer, now, step_loss(outputs)))

    def train_line(self, trainer: pl.Trainer, now: float, loss=None) -> str:
        total = trainer.estimated_stepping_batches
        step, elapsed = trainer.global_step, now - self._start
        done = step - self._first_step
        parts = [f"epoch {trainer.current_epoch + 1}/{_count(trainer.max_epochs)}",
                 f"step {step}/{_count(total)}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts += [f"{self._samples / max(elapsed, 1e-9):.1f} samples/s", f"elapsed {_duration(elapsed)}"]
        if done > 0 and math.isfinite(total):
            parts.append(f"eta {_duration(elapsed / done * max(total - step, 0))}")
        return " | ".join(parts)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val/")}
        values = " | ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        log.info("epoch %d/%s validation | step %d | %s", trainer.current_epoch + 1, _count(trainer.max_epochs),
                 trainer.global_step, values)


def _count(n: float | int | None) -> str:
    return "?" if n is None or n < 0 or not math.isfinite(n) else str(int(n))


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
