"""Rich progress bar that does not force a GPU sync on every training step."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's RichProgressBar reads the logged metrics (`.item()`, a host-device sync) after every
    training batch. This one advances the bar every batch but refreshes the metric columns every
    `metrics_every` batches, so the GPU can run ahead of Python. The training loss is logged without
    prog_bar (Lightning would convert it to a number every batch); the bar reads it at its refreshes."""

    def __init__(self, metrics_every: int = 25, **kwargs) -> None:
        super().__init__(**kwargs)
        self.metrics_every = max(1, metrics_every)

    def _update_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training and not trainer.sanity_checking and trainer.global_step % self.metrics_every:
            return
        super()._update_metrics(trainer, pl_module)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss_step" if trainer.training else "train/loss_epoch")
        if loss is not None:
            items["train/loss"] = float(loss)
        return items
