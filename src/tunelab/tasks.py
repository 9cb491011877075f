"""The task abstraction: everything that differs between classification, regression, token
classification and causal LM lives here (model head, metrics, monitor, test report), so one
LightningModule serves them all."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

from tunelab.losses import shift_for_next_token
from tunelab.metrics import (
    Accuracy,
    ConfusionMatrix,
    F1Score,
    MatthewsCorrCoef,
    Perplexity,
    Precision,
    Recall,
    TokenAccuracy,
)
from tunelab.span_metrics import EntityCounts, entity_report, entity_types


class Task:
    """Base task. Subclasses set the HF auto class, the metrics and the metric that picks checkpoints."""

    name: ClassVar[str]
    auto_model: ClassVar[str]  # transformers Auto class that adds this task's head
    default_loss: ClassVar[str]
    monitor: ClassVar[str]  # metric name without the stage prefix
    mode: ClassVar[str]

    def num_model_outputs(self, num_labels: int) -> int:
        return num_labels

    def metrics(self, num_labels: int) -> MetricCollection:
        raise NotImplementedError

    def metric_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, targets) as the metrics expect them, with ignored positions dropped."""
        return logits, labels

    def report_metric(self, num_labels: int) -> Metric | None:
        """A metric accumulated over the test split from which `report` builds the test report."""
        return None

    def report(self, state: Any, label_names: list[str]) -> tuple[dict, str]:
        return {}, ""

    def with_labels(self, label_names: Sequence[str]) -> "Task":
        """The task bound to a run's label names (tasks whose metrics need the names override this)."""
        return self


class ClassificationTask(Task):
    name = "classification"
    auto_model = "AutoModelForSequenceClassification"
    default_loss = "cross_entropy"
    monitor = "acc"
    mode = "max"

    def metrics(self, num_labels: int) -> MetricCollection:
        # torchmetrics' metrics counting by scatter-add (tunelab.metrics: no GPU sync per update);
        # validate_args=False: predictions come from argmax, so the (syncing) input checks cannot fail
        n, kw = num_labels, {"validate_args": False}
        return MetricCollection(
            {
                "acc": Accuracy(n, average="micro", **kw),
                "f1_macro": F1Score(n, average="macro", **kw),
                "f1_micro": F1Score(n, average="micro", **kw),
                "precision": Precision(n, average="macro", **kw),
                "recall": Recall(n, average="macro", **kw),
                "mcc": MatthewsCorrCoef(n, **kw),
            }
        )

    def metric_inputs(self, logits, labels):
        # class ids, shape kept ([batch] or, for token classification, [batch, seq]: spans need sentence
        # boundaries); no boolean filtering of ignored labels here (a GPU sync): the metrics skip them
        return logits.argmax(-1), labels

    def report_metric(self, num_labels: int) -> Metric:
        return ConfusionMatrix(num_labels, validate_args=False)

    def report(self, state: torch.Tensor, label_names: list[str]) -> tuple[dict, str]:
        return classification_report(state, label_names)


class RegressionTask(Task):
    name = "regression"
    auto_model = "AutoModelForSequenceClassification"
    default_loss = "mse"
    monitor = "spearman"
    mode = "max"

    def num_model_outputs(self, num_labels: int) -> int:
        return 1

    def metrics(self, num_labels: int) -> MetricCollection:
        return MetricCollection(
            {
                "mse": MeanSquaredError(),
                "mae": MeanAbsoluteError(),
                "pearson": PearsonCorrCoef(),
                "spearman": SpearmanCorrCoef(),
            }
        )

    def metric_inputs(self, logits, labels):
        return logits.squeeze(-1).float(), labels.float()


class TokenClassificationTask(ClassificationTask):
    """NER-style tagging: entity-level precision/recall/F1 (strict IOB2 spans, tunelab.span_metrics)
    plus token accuracy; the test report is per entity type."""

    name = "token_classification"
    auto_model = "AutoModelForTokenClassification"
    default_loss = "token_cross_entropy"
    monitor = "f1"
    mode = "max"
    label_names: tuple[str, ...] = ()

    def with_labels(self, label_names: Sequence[str]) -> "TokenClassificationTask":
        # the span metrics decode BIO tags, so they need the names, not just the count
        task = copy.copy(self)
        task.label_names = tuple(label_names)
        return task

    def metrics(self, num_labels: int) -> MetricCollection:
        names = self.label_names
        return MetricCollection(
            {
                "f1": EntityCounts(names, "f1"),
                "precision": EntityCounts(names, "precision"),
                "recall": EntityCounts(names, "recall"),
                "acc": TokenAccuracy(),
            }
        )

    def report_metric(self, num_labels: int) -> Metric:
        return EntityCounts(self.label_names, "counts")

    def report(self, state: torch.Tensor, label_names: list[str]) -> tuple[dict, str]:
        return entity_report(state, entity_types(label_names))


class CausalLMTask(Task):
    name = "causal_lm"
    auto_model = "AutoModelForCausalLM"
    default_loss = "next_token_cross_entropy"
    monitor = "perplexity"
    mode = "min"

    def metrics(self, num_labels: int) -> MetricCollection:
        return MetricCollection({"perplexity": Perplexity()})

    def metric_inputs(self, logits, labels):
        return shift_for_next_token(logits, labels)


TASKS: dict[str, Task] = {
    t.name: t() for t in (ClassificationTask, RegressionTask, TokenClassificationTask, CausalLMTask)
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"data.task={name!r} is unknown; use one of {sorted(TASKS)}.")
    return TASKS[name]


def classification_report(confusion: torch.Tensor, label_names: list[str]) -> tuple[dict, str]:
    """Per-class precision/recall/F1/support and the confusion matrix (rows = true, cols = predicted)."""
    cm = confusion.double().cpu()
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    total = support.sum().item()
    classes = {
        name: {
            "precision": precision[i].item(),
            "recall": recall[i].item(),
            "f1": f1[i].item(),
            "support": int(support[i].item()),
        }
        for i, name in enumerate(label_names)
    }
    weights = support / max(total, 1)
    report = {
        "classes": classes,
        "accuracy": tp.sum().item() / max(total, 1),
        "macro_avg": {k: v.mean().item() for k, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "weighted_avg": {
            k: (v * weights).sum().item() for k, v in (("precision", precision), ("recall", recall), ("f1", f1))
        },
        "support": int(total),
        "labels": list(label_names),
        "confusion_matrix": cm.long().tolist(),
    }
    return report, format_classification_report(report)


def format_classification_report(report: dict) -> str:
    names = report["labels"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    for name, row in report["classes"].items():
        lines.append(
            f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:9d}"
        )
    lines.append("")
    lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {report['accuracy']:9.4f} {report['support']:9d}")
    for avg in ("macro_avg", "weighted_avg"):
        r = report[avg]
        lines.append(
            f"{avg.replace('_', ' '):>{width}} {r['precision']:9.4f} {r['recall']:9.4f} {r['f1']:9.4f} "
            f"{report['support']:9d}"
        )
    lines.append("")
    lines.append("confusion matrix (rows = true, columns = predicted):")
    lines.append(f"{'':>{width}} " + " ".join(f"{n[:9]:>9}" for n in names))
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name:>{width}} " + " ".join(f"{v:9d}" for v in row))
    return "\n".join(lines)
