"""Test metrics recomputed from a run's predictions.jsonl, written so that any re-weighting of the test
examples is one matrix product: `features(records)` turns each example into a row of statistics and
`value(weights, features)` gives the metric for each row of a [replicates, examples] weight matrix.
Weights of ones are the test set itself; a bootstrap replicate is how often it drew each example.
Each task lists its metrics in `Task.prediction_metrics()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from tunelab.errors import ConfigError
from tunelab.metrics import ECE_BINS, confidence_bins
from tunelab.report_tables import expected_calibration_error, hamming_loss, macro_mean, prf
from tunelab.span_metrics import spans


@dataclass(frozen=True)
class ExampleMetric:
    """A metric that is a function of weighted sums of per-example statistics."""

    features: Callable[[Sequence[dict]], np.ndarray]  # records -> [n, k]
    of_sums: Callable[[np.ndarray], np.ndarray]  # weighted sums [r, k] -> metric [r]
    higher_is_better: bool = True

    def value(self, weights: np.ndarray, features: np.ndarray) -> np.ndarray:
        return self.of_sums(weights @ features)

    def __call__(self, records: Sequence[dict]) -> float:
        """The metric on the test set itself."""
        return self.unweighted(self.features(records))

    def unweighted(self, features: np.ndarray) -> float:
        """The metric from per-example features, every example counted once."""
        return float(self.value(np.ones((1, len(features))), features)[0])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (an empty class or no entities, as torchmetrics and seqeval score it)."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _mean_of(per_example: Callable[[Sequence[dict]], np.ndarray], higher_is_better: bool) -> ExampleMetric:
    """The weighted mean of one per-example value (accuracy, Brier, NLL, squared error, ...)."""
    return ExampleMetric(lambda records: np.stack([per_example(records), np.ones(len(records))], 1),
                         lambda sums: sums[:, 0] / sums[:, 1], higher_is_better)


# ---- classification ----------------------------------------------------------------------------
def _classes(records: Sequence[dict]) -> list[str]:
    names = {r["gold"] for r in records} | {r["pred"] for r in records}
    return sorted(names | {name for r in records for name in r.get("probs") or {}})


def _confusion_features(records: Sequence[dict]) -> np.ndarray:
    """Per example: one-hot columns of true positives, predictions and gold labels per class."""
    index = {name: i for i, name in enumerate(_classes(records))}
    gold = np.eye(len(index))[[index[r["gold"]] for r in records]]
    pred = np.eye(len(index))[[index[r["pred"]] for r in records]]
    return np.concatenate([gold * pred, pred, gold], 1)


def _macro_f1(sums: np.ndarray) -> np.ndarray:
    tp, pred, gold = np.split(sums, 3, axis=1)
    return macro_mean(prf(tp, pred, gold)[2], pred, gold)


def _correct(records: Sequence[dict]) -> np.ndarray:
    return np.array([r["pred"] == r["gold"] for r in records], dtype=float)


def _probs(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """[n, classes] probabilities and the one-hot gold labels, columns in `_classes` order."""
    classes = _classes(records)
    _require_probs(records)
    probs = np.array([[r["probs"].get(c, 0.0) for c in classes] for r in records], dtype=float)
    gold = np.array([[r["gold"] == c for c in classes] for r in records], dtype=float)
    return probs, gold


def _require_probs(records: Sequence[dict]) -> None:
    if any(not r.get("probs") for r in records):
        raise ConfigError("calibration metrics (ece, brier, nll) need `probs` in every predictions.jsonl record; "
                         "re-test the runs (python eval.py ckpt_path=<their checkpoint>) or pass --metric acc or f1_macro")


def _calibration_features(records: Sequence[dict]) -> np.ndarray:
    """Per example: its confidence and correctness in the column of its confidence bin (the bins of the logged
    test/ece), and a 1 for the bin shares."""
    _require_probs(records)
    confidence = np.array([r.get("confidence", max(r["probs"].values())) for r in records], dtype=float)
    onehot = np.eye(ECE_BINS)[confidence_bins(torch.as_tensor(confidence, dtype=torch.float32)).numpy()]
    return np.concatenate([onehot * confidence[:, None], onehot * _correct(records)[:, None],
                           np.ones((len(records), 1))], 1)


def _ece(sums: np.ndarray) -> np.ndarray:
    return expected_calibration_error(sums[:, :ECE_BINS], sums[:, ECE_BINS: -1], sums[:, -1])


def _brier(records: Sequence[dict]) -> np.ndarray:
    """Sum over classes of (p - one-hot gold)^2 (Brier 1950: 0 best, 2 worst)."""
    probs, gold = _probs(records)
    return ((probs - gold) ** 2).sum(1)


def _nll(records: Sequence[dict]) -> np.ndarray:
    probs, gold = _probs(records)
    return -np.log(np.clip((probs * gold).sum(1), 1e-12, None))


CLASSIFICATION = {
    "acc": _mean_of(_correct, True),
    "f1_macro": ExampleMetric(_confusion_features, _macro_f1),
    "ece": ExampleMetric(_calibration_features, _ece, higher_is_better=False),
    "brier": _mean_of(_brier, False),
    "nll": _mean_of(_nll, False),
}


# ---- regression --------------------------------------------------------------------------------
def _pairs(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r["pred"] for r in records], dtype=float), np.array([r["gold"] for r in records], dtype=float))


def _moment_features(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x - x.mean(), y - y.mean()  # centred: the weighted sums below lose no precision to large means
    return np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], 1)


def _pearson(sums: np.ndarray) -> np.ndarray:
    w, sx, sy, sxx, syy, sxy = sums.T
    cov, vx, vy = sxy - sx * sy / w, sxx - sx * sx / w, syy - sy * sy / w
    return _ratio(cov, np.sqrt(np.clip(vx * vy, 0, None)))


def _weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For each weight row: the mid-rank each example's copies get among all copies, ties averaged
    (what scipy's rankdata gives on the data repeated by the weights)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(np.r_[True, sorted_values[1:] != sorted_values[:-1]]) - 1
    per_group = np.add.reduceat(weights[:, order], starts, axis=1)
    midrank = np.cumsum(per_group, 1) - per_group + (per_group + 1) / 2
    ranks = np.empty_like(weights, dtype=float)
    ranks[:, order] = midrank[:, group]
    return ranks


@dataclass(frozen=True)
class _Spearman(ExampleMetric):
    """Pearson correlation of the weighted mid-ranks (ranks change with the weights: no fixed sums)."""

    def value(self, weights: np.ndarray, features: np.ndarray) -> np.ndarray:
        x, y = features[:, 0], features[:, 1]
        rx, ry = _weighted_ranks(x, weights), _weighted_ranks(y, weights)
        rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
        sums = [(weights * v).sum(1) for v in (np.ones_like(rx), rx, ry, rx * rx, ry * ry, rx * ry)]
        return _pearson(np.stack(sums, 1))


REGRESSION = {
    "spearman": _Spearman(lambda records: np.stack(_pairs(records), 1), None),
    "pearson": ExampleMetric(lambda records: _moment_features(*_pairs(records)), _pearson),
    "mse": _mean_of(lambda records: np.subtract(*_pairs(records)) ** 2, False),
    "mae": _mean_of(lambda records: np.abs(np.subtract(*_pairs(records))), False),
}


# ---- multi-label -------------------------------------------------------------------------------
def _label_features(records: Sequence[dict]) -> np.ndarray:
    """Per example: per-label columns of true positives, predictions and gold labels (every label of the run's
    set: the keys of `probs`), then whether the whole set is right, then a 1."""
    labels = sorted({n for r in records for n in (*(r.get("probs") or {}), *r["gold"], *r["pred"])})
    index = {name: i for i, name in enumerate(labels)}
    gold, pred = np.zeros((2, len(records), len(labels)))
    for i, r in enumerate(records):
        gold[i, [index[n] for n in r["gold"]]] = 1
        pred[i, [index[n] for n in r["pred"]]] = 1
    exact = (gold == pred).all(1, keepdims=True)
    return np.concatenate([gold * pred, pred, gold, exact, np.ones((len(records), 1))], 1)


def _label_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """tp, pred, gold per label ([r, labels]), exact matches and examples ([r]) from _label_features' sums."""
    labels = (sums.shape[1] - 2) // 3
    tp, pred, gold = np.split(sums[:, :3 * labels], 3, axis=1)
    return tp, pred, gold, sums[:, -2], sums[:, -1]


def _f1_micro(sums: np.ndarray) -> np.ndarray:
    tp, pred, gold, _, _ = _label_sums(sums)
    return prf(tp.sum(1), pred.sum(1), gold.sum(1))[2]


def _f1_macro(sums: np.ndarray) -> np.ndarray:
    tp, pred, gold, _, _ = _label_sums(sums)
    return _macro_f1(np.concatenate([tp, pred, gold], 1))


def _subset_accuracy(sums: np.ndarray) -> np.ndarray:
    _, _, _, exact, examples = _label_sums(sums)
    return exact / examples


def _hamming(sums: np.ndarray) -> np.ndarray:
    tp, pred, gold, _, examples = _label_sums(sums)
    return hamming_loss(tp, pred, gold, examples)


MULTILABEL = {
    "f1_micro": ExampleMetric(_label_features, _f1_micro),
    "f1_macro": ExampleMetric(_label_features, _f1_macro),
    "subset_acc": ExampleMetric(_label_features, _subset_accuracy),
    "hamming": ExampleMetric(_label_features, _hamming, higher_is_better=False),
}


# ---- token classification (entity level, strict IOB2) ------------------------------------------
def _entity_features(records: Sequence[dict]) -> np.ndarray:
    """Per sentence: correct, predicted and gold entities (micro-averaged over entity types). Words past
    data.max_length (null in both lists) are left out, as the logged metric leaves out their label -100."""
    rows = []
    for r in records:
        scored = [(g, p) for g, p in zip(r["gold"], r["pred"]) if g is not None]
        gold, pred = spans([g for g, _ in scored]), spans([p for _, p in scored])
        rows.append([len(gold & pred), len(pred), len(gold)])
    return np.array(rows, dtype=float).reshape(-1, 3)


def _entity_score(stat: str) -> Callable[[np.ndarray], np.ndarray]:
    def score(sums: np.ndarray) -> np.ndarray:
        precision, recall, f1 = prf(*sums.T)
        return {"precision": precision, "recall": recall, "f1": f1}[stat]

    return score


TOKEN_CLASSIFICATION = {stat: ExampleMetric(_entity_features, _entity_score(stat))
                        for stat in ("f1", "precision", "recall")}
