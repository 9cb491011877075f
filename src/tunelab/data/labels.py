"""From the label column to training targets: the label set (names and ids), multi-label lists, regression
targets and the training split's target statistics."""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

import torch

from tunelab.errors import ConfigError


class LabelSet:
    """A run's label names and ids: data.label_names, else the sorted labels of the training split (the
    names are stored in the checkpoint, so evaluation maps labels the same way)."""

    def __init__(self, configured: Sequence[str] | None, train_labels: Iterable[str], kind: str,
                 numeric_ids: bool = False) -> None:
        self.names = [str(n) for n in configured] if configured else _sorted_labels(set(train_labels))
        self.kind = kind
        self.index = {n: i for i, n in enumerate(self.names)}
        if numeric_ids:  # a file may give classes as ids 0..n-1 instead of names
            self.index = {str(i): i for i in range(len(self.names))} | self.index

    def id(self, label: str, where: str) -> int:
        _single(label, where, self.kind)
        if label not in self.index:
            raise ConfigError(
                f"{where}: {self.kind} {label!r} is not in the label set {self.names}; "
                f"fix the row or list every {self.kind} in data.label_names."
            )
        return self.index[label]

    def multi_hot(self, labels: Iterable[str], where: str) -> torch.Tensor:
        """A multi-label row as a 0/1 float vector over the label set."""
        target = torch.zeros(len(self.names))
        for label in labels:
            target[self.id(label, where)] = 1.0
        return target

    def counts(self, ids: Iterable[int]) -> list[int]:
        """How often each label id occurs (ids -100, positions that are not scored, are skipped)."""
        counted = Counter(ids)
        return [counted[i] for i in range(len(self.names))]


def split_labels(cell: str | list, separator: str) -> list[str]:
    """The labels of a multi-label cell ("sports, politics" -> ["sports", "politics"]; empty: none), or of
    a JSON list (JSON lines files)."""
    parts = [str(p) for p in cell] if isinstance(cell, list) else cell.split(separator)
    return [part.strip() for part in parts if part.strip()]


def _single(cell: str | list, where: str, kind: str) -> None:
    if isinstance(cell, list):
        raise ConfigError(f"{where}: the {kind} is a list {cell!r}; rows with several labels need "
                          "data.task=multilabel.")


def regression_target(cell: str, where: str) -> float:
    _single(cell, where, "regression target")
    try:
        value = float(cell)
    except ValueError:
        raise ConfigError(f"{where}: regression target {cell!r} is not a number; fix the row.") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: regression target {cell!r} is not a finite number; fix the row.")
    return value


def target_stats(targets: Sequence[float]) -> dict[str, float]:
    """{"target_mean", "target_std"} of the training targets (population std; 1 when they are constant,
    so standardizing stays a shift)."""
    mean = math.fsum(targets) / len(targets)
    std = math.sqrt(math.fsum((t - mean) ** 2 for t in targets) / len(targets))
    return {"target_mean": mean, "target_std": std if std > 0 else 1.0}


def _sorted_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)
