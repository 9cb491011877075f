"""From the label column to training targets: the label set (names and ids), multi-label lists, regression
targets and the training split's target statistics."""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

import torch

from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

SHOWN = 10  # names an error lists: a wrong delimiter can make thousands of "labels" (a 21 KB line)


class LabelSet:
    """A run's label names and ids: data.label_names, else the sorted labels of the training split (the
    names are stored in the checkpoint, so evaluation maps labels the same way)."""

    def __init__(self, configured: Sequence[str] | None, train_labels: Iterable[str], kind: str,
                 numeric_ids: bool = False, trained: bool = False) -> None:
        """`configured`: the names in their id order (data.label_names, or a trained model's: `trained`).
        `numeric_ids`: a file may give classes as ids 0..n-1 of those names (SST-2: 0/1 for negative/positive)."""
        self.configured, self.trained = bool(configured), trained
        self.names = [str(n) for n in configured] if configured else _sorted_labels(set(train_labels))
        self.kind = kind
        self.index = {n: i for i, n in enumerate(self.names)}
        # when a name is itself a number, a "0" the names lack is a wrong row, not class 0
        if numeric_ids and not any(_is_number(n) for n in self.names):
            self.index = {str(i): i for i in range(len(self.names))} | self.index
        if not self.configured:
            _warn_case_variants(self.names, kind)

    def id(self, label: str, where: str) -> int:
        single_label(label, where, self.kind)
        if label not in self.index:
            fix = ("the model was trained on these and cannot predict it: fix or drop the row" if self.trained
                   else f"fix the row or list every {self.kind} in data.label_names")
            raise ConfigError(f"{where}: {self.kind} {label!r} is not in the label set {shown(self.names)}; {fix}.")
        return self.index[label]

    def require_two(self, train_file: str, task: str, column: str) -> None:
        """Classification needs two classes: with one, training runs and only the test report fails."""
        if len(self.names) >= 2:
            return
        if self.configured:
            raise ConfigError(f"data.label_names={self.names} has one {self.kind}; {task} needs at least two: "
                              f"list every {self.kind} in data.label_names.")
        raise ConfigError(
            f"{train_file}: the training split has one {self.kind} ({self.names[0]!r}); {task} needs at least two: "
            f"check data.{column}, or list the {self.kind}s in data.label_names."
        )

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


def label_cell(cell: Any) -> str | list:
    """A label cell as read from a file: JSON lists stay lists (multi-label rows); anything else is its
    text without surrounding whitespace ("good " is "good"), a JSON number that is integral as an integer
    (0.0 is "0"), so neither makes an extra class."""
    if isinstance(cell, list):
        return cell
    if type(cell) is float and cell.is_integer():
        return str(int(cell))
    return str(cell).strip()


def split_labels(cell: str | list, separator: str) -> list[str]:
    """The labels of a multi-label cell ("sports, politics" -> ["sports", "politics"]; empty: none), or of
    a JSON list (JSON lines files)."""
    parts = [str(p) for p in cell] if isinstance(cell, list) else cell.split(separator)
    return [part.strip() for part in parts if part.strip()]


def single_label(cell: str | list, where: str, kind: str = "label") -> None:
    """A ConfigError naming file:line when a row of a single-label task holds a list of labels."""
    if isinstance(cell, list):
        raise ConfigError(f"{where}: the {kind} is a list {cell!r}; rows with several labels need "
                          "data.task=multilabel.")


def regression_target(cell: str, where: str) -> float:
    single_label(cell, where, "regression target")
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


def shown(names: Sequence[str], limit: int = SHOWN) -> str:
    """The names as a list for a one-line message: the first `limit`, then how many there are."""
    if len(names) <= limit:
        return repr(list(names))
    return "[" + ", ".join(repr(n) for n in names[:limit]) + f", ... ({len(names)} in all)]"


def _warn_case_variants(names: Sequence[str], kind: str) -> None:
    # "Not Good" and "not good" stay two classes (a data set may mean that), but it is most likely a typo
    spellings: dict[str, list[str]] = defaultdict(list)
    for name in names:
        spellings[name.casefold()].append(name)
    variants = [group for group in spellings.values() if len(group) > 1]
    if variants:
        log.warning("%ss that differ only in letter case are different classes: %s; if they are typos, fix the "
                    "rows.", kind, "; ".join(shown(group) for group in variants[:SHOWN]))


def _is_number(name: str) -> bool:
    try:
        float(name)
    except ValueError:
        return False
    return True


def _sorted_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)
