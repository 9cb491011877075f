"""Training objectives (conf/loss/*.yaml). Each loss takes the model's logits and the batch labels,
knows which tasks it fits (`tasks`) and does the reshaping its task needs, so the LightningModule
stays task-agnostic."""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


class Loss(nn.Module):
    """Base class: `name` is the config choice (loss=<name>), `tasks` the tasks it fits."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[str]]

    def __init__(self, class_weights: Sequence[float] | str | None = None) -> None:
        super().__init__()
        self.class_weights_spec = class_weights
        self.register_buffer("class_weights", None, persistent=False)

    def fit_class_weights(self, class_counts: Sequence[int] | None) -> None:
        """Resolve `class_weights` ("balanced" or an explicit list) once the label counts are known."""
        spec = self.class_weights_spec
        if spec is None:
            return
        if isinstance(spec, str):
            if spec != "balanced":
                raise ValueError(f"loss.class_weights={spec!r} is not supported; use null, 'balanced' or a list.")
            counts = torch.as_tensor(list(class_counts or []), dtype=torch.float)
            weights = counts.sum() / (len(counts) * counts.clamp(min=1))
        else:
            weights = torch.as_tensor(list(spec), dtype=torch.float)
        if class_counts is not None and len(weights) != len(class_counts):
            raise ValueError(
                f"loss.class_weights has {len(weights)} entries but the data has {len(class_counts)} labels; "
                "give one weight per label or use class_weights=balanced."
            )
        self.class_weights = weights


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
    """Focal loss (Lin et al. 2017): (1 - p_t)^gamma * CE; gamma=0 is plain (weighted) cross-entropy."""

    name = "focal"
    tasks = frozenset({"classification", "token_classification"})

    def __init__(self, gamma: float = 2.0, class_weights=None) -> None:
        super().__init__(class_weights)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, labels = logits.flatten(0, -2).float(), labels.flatten()
        # ignored positions get weight 0 (not dropped by boolean indexing: that syncs the GPU every step)
        keep = labels != IGNORE_INDEX
        labels = labels.clamp(min=0)
        log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        w = keep.float() if self.class_weights is None else self.class_weights[labels] * keep
        return (loss * w).sum() / w.sum()


class _RegressionLoss(Loss):
    tasks = frozenset({"regression"})

    def __init__(self) -> None:
        super().__init__(None)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits.squeeze(-1).float(), labels.float())


class MSELoss(_RegressionLoss):
    name = "mse"

    def criterion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)


class HuberLoss(_RegressionLoss):
    name = "huber"

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = delta

    def criterion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(pred, target, delta=self.delta)


class SmoothL1Loss(_RegressionLoss):
    name = "smooth_l1"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def criterion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(pred, target, beta=self.beta)


class NextTokenCrossEntropyLoss(Loss):
    """Causal LM objective. The one place where labels are shifted: logits at t predict token t+1."""

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


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions at position t with the token at t+1."""
    return logits[:, :-1, :], labels[:, 1:]
