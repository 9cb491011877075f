"""Metrics whose per-step update never makes the host wait for the GPU. A training step that syncs
stalls the step pipeline (Python stops queueing kernels until the device drains); these updates are
pure tensor ops on the metric's device. tests/test_host_syncs.py audits every task's step."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MulticlassPrecision,
    MulticlassRecall,
)

from tunelab.losses import IGNORE_INDEX


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[num_classes, num_classes] counts (rows = true, columns = predicted) of class-index tensors, by
    scatter-add: torch.bincount (what torchmetrics uses) reads the input's max back to the host."""
    index = target.flatten().long() * num_classes + preds.flatten().long()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=index.device)
    return counts.scatter_add_(0, index, torch.ones_like(index)).view(num_classes, num_classes)


class _CountsFromConfusion:
    """For torchmetrics' multiclass metrics over class-index predictions (top_k=1, global average, no
    ignore_index): the update counts through `confusion_matrix`; states and compute() stay torchmetrics'."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        cm = confusion_matrix(preds, target, self.num_classes)
        if hasattr(self, "confmat"):  # confusion-matrix metrics (MCC)
            self.confmat += cm
            return
        tp = cm.diag()
        fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
        tn = cm.sum() - tp - fp - fn
        if self.average == "micro":
            tp, fp, tn, fn = tp.sum(), fp.sum(), tn.sum(), fn.sum()
        self._update_state(tp, fp, tn, fn)


class Accuracy(_CountsFromConfusion, MulticlassAccuracy):
    pass


class F1Score(_CountsFromConfusion, MulticlassF1Score):
    pass


class Precision(_CountsFromConfusion, MulticlassPrecision):
    pass


class Recall(_CountsFromConfusion, MulticlassRecall):
    pass


class MatthewsCorrCoef(_CountsFromConfusion, MulticlassMatthewsCorrCoef):
    pass


class ConfusionMatrix(_CountsFromConfusion, MulticlassConfusionMatrix):
    pass


class TokenAccuracy(Metric):
    """Accuracy over the positions whose label is not -100. (torchmetrics' ignore_index drops them by
    boolean indexing, whose data-dependent size syncs the GPU on every update.)"""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != IGNORE_INDEX
        self.correct += ((preds == target) & keep).sum()
        self.total += keep.sum()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class Perplexity(Metric):
    """exp of the mean next-token cross-entropy over all non-ignored tokens of the epoch (sum states,
    not a mean over the kept tokens selected by boolean indexing)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.nll_sum += nn.functional.cross_entropy(
            logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        self.tokens += (labels != IGNORE_INDEX).sum()

    def compute(self) -> torch.Tensor:
        return (self.nll_sum / self.tokens).exp()
