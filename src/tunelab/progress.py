"""Rich progress bar that does not force a GPU sync on every training step."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's RichProgressBar reads the logged metrics (`.item()`, a host-device sync) after every
    training batch. This one advances the bar every batch but refreshes the metric columns every
    `metrics_every` batches, so the GPU can run ahead of Python."""

    def __init__(self, metrics_every: int = 25, **kwargs) -> None:
        super().__init__(**kwargs)
        self.metrics_every = max(1, metrics_every)

    def _update_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training and not trainer.sanity_checking and trainer.global_step % self.metrics_every:
            return
        super()._update_metrics(trainer, pl_module)
