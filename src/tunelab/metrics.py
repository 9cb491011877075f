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
from torchmetrics.regression import PearsonCorrCoef as _PearsonCorrCoef

from tunelab.losses import IGNORE_INDEX
from tunelab.report_tables import expected_calibration_error, hamming_loss, macro_mean, prf


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[num_classes, num_classes] counts (rows = true, columns = predicted) of class-index tensors, by
    scatter-add: torch.bincount (what torchmetrics uses) reads the input's max back to the host."""
    index = target.flatten().long() * num_classes + preds.flatten().long()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=index.device)
    return counts.scatter_add_(0, index, torch.ones_like(index)).view(num_classes, num_classes)


class _CountsFromConfusion:
    """For torchmetrics' multiclass metrics over class-index predictions or logits (argmax: top_k=1, global
    average, no ignore_index). One state, the confusion matrix, counted by scatter-add; compute() is
    torchmetrics' own, over the true / false positives and negatives read off that matrix. Every such
    metric of a collection holds the same state, so MetricCollection updates them all as one compute group:
    one argmax and one scatter-add per batch, whatever the number of metrics."""

    def _create_state(self, size: int, multidim_average: str = "global") -> None:
        # in place of torchmetrics' tp / fp / tn / fn states (called from its __init__)
        n = self.num_classes
        self.add_state("confmat", torch.zeros(n, n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.is_floating_point():  # logits / probabilities: the predicted class is their argmax
            preds = preds.argmax(-1)
        self.confmat += confusion_matrix(preds, target, self.num_classes)

    def _final_state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # per class; torchmetrics' reductions sum them for average="micro"
        cm = self.confmat
        tp = cm.diag()
        fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
        return tp, fp, cm.sum() - tp - fp - fn, fn


class Accuracy(_CountsFromConfusion, MulticlassAccuracy):
    pass


class F1Score(_CountsFromConfusion, MulticlassF1Score):
    pass


class Precision(_CountsFromConfusion, MulticlassPrecision):
    pass


class Recall(_CountsFromConfusion, MulticlassRecall):
    pass


class MatthewsCorrCoef(_CountsFromConfusion, MulticlassMatthewsCorrCoef):
    """Gorodkin's multi-class MCC off the confusion matrix, 0 when all predictions (or all labels) are one
    class, as sklearn defines it (torchmetrics substitutes an epsilon for the zero denominator, which gives a
    model that predicts one class for everything a small negative correlation)."""

    def compute(self) -> torch.Tensor:
        cm = self.confmat.double()
        total, correct = cm.sum(), cm.trace()
        true, pred = cm.sum(1), cm.sum(0)
        denominator = (total**2 - (pred**2).sum()).sqrt() * (total**2 - (true**2).sum()).sqrt()
        mcc = (correct * total - (true * pred).sum()) / denominator
        return torch.where(denominator > 0, mcc, torch.zeros_like(mcc)).float()


class ConfusionMatrix(_CountsFromConfusion, MulticlassConfusionMatrix):
    pass


ECE_BINS = 15


def confidence_bins(confidence: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """The calibration bin of each top-label confidence: equal-width bins [k/n, (k+1)/n), confidence 1 in the last.
    One rule for the logged ECE and reliability diagram and for the ECE recomputed from predictions.jsonl."""
    # float32 edges whatever the default dtype (trainer.precision=bf16-true sets bf16 around each step: 1/15 -> 0.0669)
    edges = torch.linspace(0, 1, n_bins + 1, device=confidence.device, dtype=torch.float32)[1:-1]
    return torch.bucketize(confidence, edges, right=True)


class Calibration(Metric):
    """How well the softmax of the outputs matches the class frequencies, from [batch, classes] logits
    and class ids. `stat`: "ece" (expected calibration error, top-label, equal-width confidence bins
    [lo, hi), confidence 1 in the last), "brier" (mean over examples of sum over classes of
    (p - onehot)^2), "nll" (mean negative log-likelihood) or "bins" (a [3, n_bins] tensor: examples,
    summed confidence, correct predictions per bin, for the reliability diagram). Fixed-size sum states
    updated by scatter-add. Not torchmetrics' MulticlassCalibrationError: it keeps every example, and
    takes outputs that all lie in [0, 1] for probabilities, which square-loss outputs often do."""

    full_state_update = False
    higher_is_better = False
    STATS = ("ece", "brier", "nll", "bins")

    def __init__(self, stat: str = "ece", n_bins: int = ECE_BINS) -> None:
        super().__init__()
        if stat not in self.STATS:
            raise ValueError(f"stat={stat!r}: use one of {', '.join(self.STATS)}")
        self.stat, self.n_bins = stat, n_bins
        for name in ("count", "confidence", "correct"):
            self.add_state(name, default=torch.zeros(n_bins), dist_reduce_fx="sum")
        for name in ("brier", "nll", "examples"):
            self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits = logits.float()
        probs = logits.softmax(-1)
        confidence, pred = probs.max(-1)
        bins = confidence_bins(confidence, self.n_bins)
        self.count.scatter_add_(0, bins, torch.ones_like(confidence))
        self.confidence.scatter_add_(0, bins, confidence)
        self.correct.scatter_add_(0, bins, (pred == target).float())
        true_class = torch.zeros_like(probs).scatter_(-1, target[..., None], 1.0)
        self.brier += ((probs - true_class) ** 2).sum()
        self.nll += nn.functional.cross_entropy(logits, target, reduction="sum")
        self.examples += target.numel()

    def compute(self) -> torch.Tensor:
        if self.stat == "bins":
            return torch.stack([self.count, self.confidence, self.correct])
        n = self.examples.clamp(min=1)
        if self.stat == "ece":
            return expected_calibration_error(self.confidence, self.correct, n)
        return {"brier": self.brier, "nll": self.nll}[self.stat] / n


class MultiLabelCounts(Metric):
    """Multi-label metrics from [batch, labels] 0/1 predictions and targets, counted per label. `stat`:
    "f1_micro", "f1_macro" (mean of the per-label F1 over the labels that occur: report_tables.macro_mean),
    "subset_acc" (exact match of the whole label set), "hamming" (share of wrong label decisions: HammingLoss) or
    "counts" (the test report's state)."""

    full_state_update = False
    higher_is_better = True
    STATS = ("f1_micro", "f1_macro", "subset_acc", "hamming", "counts")

    def __init__(self, num_labels: int, stat: str = "f1_micro") -> None:
        super().__init__()
        if stat not in self.STATS:
            raise ValueError(f"stat={stat!r}: use one of {', '.join(self.STATS)}")
        self.stat = stat
        for name in ("tp", "pred", "gold"):
            self.add_state(name, default=torch.zeros(num_labels, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("exact", "examples"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = preds.long(), target.long()
        self.tp += (preds & target).sum(0)
        self.pred += preds.sum(0)
        self.gold += target.sum(0)
        self.exact += (preds == target).all(-1).sum()
        self.examples += target.shape[0]

    def compute(self) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.stat == "counts":
            return {"tp": self.tp, "pred": self.pred, "gold": self.gold, "exact": self.exact,
                    "examples": self.examples}
        if self.stat == "f1_micro":
            return prf(self.tp.sum(), self.pred.sum(), self.gold.sum())[2]
        if self.stat == "f1_macro":
            return macro_mean(prf(self.tp, self.pred, self.gold)[2], self.pred, self.gold)
        examples = self.examples.clamp(min=1)
        if self.stat == "subset_acc":
            return self.exact.float() / examples
        return hamming_loss(self.tp, self.pred, self.gold, examples).float()


class HammingLoss(MultiLabelCounts):
    higher_is_better = False

    def __init__(self, num_labels: int) -> None:
        super().__init__(num_labels, "hamming")


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


class MeanLoss(Metric):
    """A stage's epoch loss: the batch losses' mean weighted by what each averages (rows, tokens, class weights),
    summed across ranks at compute(). torchmetrics' MeanMetric checks every update for NaNs with `.any()` (a host sync) and
    turns a Python weight into a host-to-device copy; here an update is two ops on the device."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("rows", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, weight: int | torch.Tensor) -> None:
        """`weight`: what the batch loss is a mean over (Loss.batch_weight)."""
        self.total += loss.detach().float() * weight
        self.rows += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.rows


class PearsonCorrCoef(_PearsonCorrCoef):
    """torchmetrics leaves a correlation's direction unset (None); runs are ranked, checkpointed and stopped early
    on it (optimized_metric=val/pearson) as on Spearman's: higher is better."""

    higher_is_better = True
