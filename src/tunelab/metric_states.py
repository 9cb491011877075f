"""Metric states beyond one update: kept float32 under half-precision training, and carried in a checkpoint saved
mid-epoch so that a resumed run's epoch metrics cover the whole epoch."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric


def keep_float32_states(module: torch.nn.Module) -> None:
    """trainer.precision=bf16-true / 16-true converts the whole module to half precision, metric states included: a
    bf16 sum counts exactly only to 256, and the float32 updates no longer scatter into it. Each floating state (and
    its reset default) goes back to float32; integer counts were left alone and stay exact."""
    for metric in module.modules():
        if not isinstance(metric, Metric):
            continue
        for name, default in metric._defaults.items():
            setattr(metric, name, _float32(getattr(metric, name)))
            metric._defaults[name] = _float32(default)


def _float32(value: Any) -> Any:
    if isinstance(value, list):
        return [_float32(v) for v in value]
    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value


def epoch_states(metrics: dict[str, Metric]) -> dict[str, dict]:
    """The metrics' states accumulated so far this epoch, summed over the ranks (a collective: every rank calls
    it, as every rank saves a checkpoint), for a checkpoint saved mid-epoch: a resumed run's epoch metrics then
    cover the whole epoch, not the batches after the resume. `restore_epoch_states` puts them back."""
    saved = {}
    for name, metric in metrics.items():
        with metric.sync_context():
            saved[name] = {"updates": metric._update_count, "states": {
                key: [t.detach().cpu().clone() for t in value] if isinstance(value, list) else value.detach().cpu().clone()
                for key, value in metric.metric_state.items()}}
    return saved


def restore_epoch_states(metrics: dict[str, Metric], saved: dict[str, dict], device: torch.device, rank: int) -> None:
    """Rank 0 takes the saved (summed) states, the other ranks start from zero: the ranks' sum is the whole again."""
    if rank != 0:
        return
    for name, entry in saved.items():
        metric = metrics.get(name)
        if metric is None:
            continue
        for key, value in entry["states"].items():
            setattr(metric, key, [t.to(device) for t in value] if isinstance(value, list) else value.to(device))
        metric._update_count = entry["updates"]
