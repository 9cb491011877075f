"""Training objectives (conf/loss/*.yaml). Each loss takes the model's logits and the batch labels,
knows which tasks it fits (`tasks`) and does the reshaping its task needs, so the LightningModule
stays task-agnostic."""

from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import ConfigError

IGNORE_INDEX = -100


class Loss(nn.Module):
    """Base class: `name` is the config choice (loss=<name>), `tasks` the tasks it fits. Integer labels
    are class ids (classification, token classification), float labels targets (regression values,
    multi-label 0/1 vectors): a loss that fits several tasks tells them apart by that."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[str]]
    weights_key: ClassVar[str] = "class_weights"  # the config key of the per-label weights
    # settings that only some of its tasks read (key -> those tasks): typed for another task, refused (validation)
    task_keys: ClassVar[Mapping[str, frozenset[str]]] = {}

    def __init__(self, class_weights: Sequence[float] | str | None = None) -> None:
        super().__init__()
        self.class_weights_spec = class_weights
        self.register_buffer("class_weights", None, persistent=False)

    def fit_class_weights(self, class_counts: Sequence[int] | None, examples: int | None = None) -> None:
        """Resolve the weights ("balanced" or an explicit list) once the training split's label counts (and,
        for multi-label data, its number of examples) are known."""
        spec, key = self.class_weights_spec, self.weights_key
        if spec is None:
            return
        if spec == "balanced":  # schema.RULES admits "balanced" or a list
            weights = self.balanced_weights(torch.as_tensor(list(class_counts or []), dtype=torch.float), examples)
        else:
            weights = torch.as_tensor(list(spec), dtype=torch.float)
        if class_counts is not None and len(weights) != len(class_counts):
            raise ConfigError(f"loss.{key} has {len(weights)} entries but the data has {len(class_counts)} labels; "
                              f"give one weight per label or use loss.{key}=balanced.")
        self.class_weights = weights

    def balanced_weights(self, counts: torch.Tensor, examples: int | None) -> torch.Tensor:
        """Inverse training-set frequency, total / (labels x count): each label weighs the same in total."""
        return counts.sum() / (len(counts) * counts.clamp(min=1))

    def batch_weight(self, targets: torch.Tensor) -> int | torch.Tensor:
        """What the batch loss is a mean over, so an epoch loss weighted by it is that mean over the whole epoch
        whatever the batches' sizes: the rows of float targets (regression values, multi-label vectors; every row
        has the same number of outputs), the scored class ids (ignored sub-tokens and padding left out) or, with
        class weights, their weights (F.cross_entropy's `weight` normalization). Counted on the device: no sync."""
        if targets.is_floating_point():
            return targets.shape[0]
        scored = targets != IGNORE_INDEX
        if self.class_weights is None:
            return scored.sum()
        return (self.class_weights[targets.clamp(min=0)] * scored).sum()


class CrossEntropyLoss(Loss):
    name = "cross_entropy"
    tasks = frozenset({"classification"})

    def __init__(self, label_smoothing: float = 0.0, class_weights=None) -> None:
        super().__init__(class_weights)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.flatten(0, -2).float(),
            labels.flatten(),
            weight=self.class_weights,
            label_smoothing=self.label_smoothing,
            ignore_index=IGNORE_INDEX,
        )


class TokenCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy per token; sub-tokens and special tokens carry label -100 and are ignored."""

    name = "token_cross_entropy"
    tasks = frozenset({"token_classification"})


class FocalLoss(Loss):
    """Focal loss (Lin et al. 2017): (1 - p_t)^gamma * CE; gamma=0 is plain (weighted) cross-entropy.
    Multi-label (0/1 targets): the sigmoid focal loss per label, mean over labels and examples (gamma=0:
    loss=bce); class_weights then weight each label's term."""

    name = "focal"
    tasks = frozenset({"classification", "token_classification", "multilabel"})

    def __init__(self, gamma: float = 2.0, class_weights=None) -> None:
        super().__init__(class_weights)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.is_floating_point():
            return self._sigmoid_focal(logits.float(), labels.float())
        logits, labels = logits.flatten(0, -2).float(), labels.flatten()
        # ignored positions get weight 0 (not dropped by boolean indexing: that syncs the GPU every step)
        keep = labels != IGNORE_INDEX
        labels = labels.clamp(min=0)
        log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        w = keep.float() if self.class_weights is None else self.class_weights[labels] * keep
        return (loss * w).sum() / w.sum()

    def _sigmoid_focal(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        loss = (1 - torch.exp(-bce)) ** self.gamma * bce  # exp(-bce) = p_t, the probability of the target
        return (loss if self.class_weights is None else loss * self.class_weights).mean()


class BCELoss(Loss):
    """Multi-label classification: an independent sigmoid per label, binary cross-entropy against the
    label's 0/1 target, mean over labels and examples. `pos_weight` multiplies each label's positive
    term: a list, or "balanced" (negatives / positives of each label in the training split)."""

    name = "bce"
    tasks = frozenset({"multilabel"})
    weights_key = "pos_weight"

    def __init__(self, pos_weight: Sequence[float] | str | None = None) -> None:
        super().__init__(pos_weight)

    def balanced_weights(self, counts: torch.Tensor, examples: int | None) -> torch.Tensor:
        return (float(examples or 0) - counts) / counts.clamp(min=1)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=self.class_weights)


class _SquareLoss(Loss):
    """The square-loss family on either task. Regression (float targets): the output against the target.
    Classification (class ids): every output regresses onto the one-hot target, as in Hui & Belkin (ICLR
    2021): per example (1/C) [k (f_c - M)^2 + sum_{i != c} f_i^2] with k = `scale_k` weighting the true
    class c and M = `scale_m` its target value (k = M = 1: plain square loss; the paper rescales for
    many classes). Predictions are the argmax of the outputs."""

    tasks = frozenset({"regression", "classification"})
    task_keys = {"scale_k": frozenset({"classification"}), "scale_m": frozenset({"classification"})}

    def __init__(self, scale_k: float = 1.0, scale_m: float = 1.0) -> None:
        super().__init__(None)
        self.scale_k, self.scale_m = scale_k, scale_m

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.is_floating_point():  # regression targets
            return self.criterion(logits.squeeze(-1).float(), labels.float()).mean()
        logits = logits.float()
        # one-hot by scatter (F.one_hot validates the ids on the host: a GPU sync per step)
        true_class = torch.zeros_like(logits).scatter_(-1, labels[..., None], 1.0)
        weight = 1 + (self.scale_k - 1) * true_class
        return (weight * self.criterion(logits, self.scale_m * true_class)).mean()

    def criterion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Element-wise loss (reduction="none")."""
        raise NotImplementedError


class MSELoss(_SquareLoss):
    name = "mse"

    def criterion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target, reduction="none")


class HuberLoss(_SquareLoss):
    name = "huber"

    def __init__(self, delta: float = 1.0, scale_k: float = 1.0, scale_m: float = 1.0) -> None:
        super().__init__(scale_k, scale_m)
        self.delta = delta

    def criterion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(pred, target, delta=self.delta, reduction="none")


class SmoothL1Loss(_SquareLoss):
    name = "smooth_l1"

    def __init__(self, beta: float = 1.0, scale_k: float = 1.0, scale_m: float = 1.0) -> None:
        super().__init__(scale_k, scale_m)
        self.beta = beta

    def criterion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(pred, target, beta=self.beta, reduction="none")


class NextTokenCrossEntropyLoss(Loss):
    """Causal LM objective: logits at t predict token t+1 (shift_for_next_token, the one definition of that
    alignment, which the causal LM task's metrics use too)."""

    name = "next_token_cross_entropy"
    tasks = frozenset({"causal_lm"})

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__(None)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, labels = shift_for_next_token(logits, labels)
        return F.cross_entropy(
            logits.flatten(0, -2).float(),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )

    def batch_weight(self, targets: torch.Tensor) -> int | torch.Tensor:
        return super().batch_weight(next_token_targets(targets))


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """The tokens predicted: every one but the first."""
    return labels[:, 1:]


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions at position t with the token at t+1."""
    return logits[:, :-1, :], next_token_targets(labels)
