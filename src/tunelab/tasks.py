"""The task abstraction: everything that differs between classification, multi-label classification,
regression, token classification and causal LM lives here (model head, peft task type, the data modules that
serve it, the targets the loss sees, metrics and which of them is monitored, test report), so one
LightningModule and one pipeline serve them all."""

from __future__ import annotations

import copy
import logging
from typing import Any, Mapping, Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

from tunelab import prediction_metrics
from tunelab.errors import ConfigError
from tunelab.losses import IGNORE_INDEX, shift_for_next_token
from tunelab.metrics import (
    Accuracy,
    Calibration,
    ConfusionMatrix,
    F1Score,
    HammingLoss,
    MatthewsCorrCoef,
    MultiLabelCounts,
    Perplexity,
    Precision,
    Recall,
    TokenAccuracy,
)
from tunelab.report_tables import calibration_report, classification_report, entity_report, multilabel_report
from tunelab.span_metrics import EntityCounts, entity_types
from tunelab.task_base import SequenceTask, Task, decimals

log = logging.getLogger(__name__)


class ClassificationTask(SequenceTask):
    name = "classification"
    default_loss = "cross_entropy"
    monitor = "acc"
    mode = "max"

    def metrics(self, num_labels: int) -> MetricCollection:
        # torchmetrics' metrics over one confusion matrix counted by scatter-add (tunelab.metrics: no GPU
        # sync per update; the six share it, one compute group); validate_args=False: predictions come
        # from argmax, so the (syncing) input checks cannot fail.
        # Calibration scores the softmax of the outputs, whatever the loss (square loss included).
        n, kw = num_labels, {"validate_args": False}
        return MetricCollection(
            {
                "acc": Accuracy(n, average="micro", **kw),
                "f1_macro": F1Score(n, average="macro", **kw),
                "f1_micro": F1Score(n, average="micro", **kw),
                "precision": Precision(n, average="macro", **kw),
                "recall": Recall(n, average="macro", **kw),
                "mcc": MatthewsCorrCoef(n, **kw),
                "ece": Calibration("ece"),
                "brier": Calibration("brier"),
                "nll": Calibration("nll"),
            }
        )

    def metric_inputs(self, logits, labels):
        # the logits: the counting metrics take their argmax, the calibration metrics their softmax
        return logits, labels

    def report_metric(self, num_labels: int) -> Metric:
        return MetricCollection({"confusion": ConfusionMatrix(num_labels, validate_args=False),
                                 "calibration": Calibration("bins")})

    def report(self, state: dict[str, torch.Tensor], label_names: list[str]) -> tuple[dict, str]:
        report, text = classification_report(state["confusion"], label_names)
        report["calibration"], calibration_text = calibration_report(state["calibration"])
        return report, f"{text}\n\n{calibration_text}"

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        return prediction_metrics.CLASSIFICATION

    def prediction_outputs(self, logits):
        # pred is the metrics' argmax (not re-derived from rounded probabilities): the file recomputes them
        return {"pred": logits.argmax(-1), "probs": logits.float().softmax(-1)}

    def prediction_record(self, outputs, gold, label_names):
        probs, pred = decimals(outputs["probs"]), int(outputs["pred"])
        record = {} if gold is None else {"gold": label_names[int(gold)]}
        return record | {"pred": label_names[pred], "probs": dict(zip(label_names, probs)), "confidence": probs[pred]}


class RegressionTask(SequenceTask):
    name = "regression"
    default_loss = "mse"
    monitor = "spearman"
    mode = "max"

    # z-scores of the training split's targets, learnt by the loss (data.standardize_targets); 0 / 1: raw
    target_mean: float = 0.0
    target_std: float = 1.0

    def with_labels(self, label_names: Sequence[str], label_info: Mapping[str, Any] | None = None
                    ) -> "RegressionTask":
        task = copy.copy(self)
        task.target_mean = float((label_info or {}).get("target_mean", self.target_mean))
        task.target_std = float((label_info or {}).get("target_std", self.target_std))
        return task

    def model_head(self, num_labels: int) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def loss_targets(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels.float() - self.target_mean) / self.target_std

    def to_label_units(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's [batch, 1] outputs as [batch] predictions in the targets' original units: the one
        mapping used by the metrics and by anything that writes predictions."""
        return logits.squeeze(-1).float() * self.target_std + self.target_mean

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
        return self.to_label_units(logits), labels.float()

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        return prediction_metrics.REGRESSION

    def prediction_outputs(self, logits):
        return {"pred": self.to_label_units(logits)}

    def prediction_record(self, outputs, gold, label_names):
        record = {} if gold is None else {"gold": decimals(gold)[0]}
        return record | {"pred": decimals(outputs["pred"])[0]}

    def prepare_export(self, model: torch.nn.Module) -> None:
        # to_label_units folded into the output layer: y = (w x + b) * std + mean
        layers = [m for name in self.trained_head(model) for m in getattr(model, name).modules()
                  if isinstance(m, torch.nn.Linear)]
        out = layers[-1] if layers else None
        if out is None or out.bias is None:  # e.g. GPT-2's bias-free score layer: nowhere to add the mean
            log.warning("the exported model's outputs are z-scores: multiply by %g and add %g for target units",
                        self.target_std, self.target_mean)
            return
        with torch.no_grad():
            out.weight.mul_(self.target_std)
            out.bias.mul_(self.target_std).add_(self.target_mean)


class MultiLabelTask(SequenceTask):
    """Several labels per example (data.task=multilabel): one sigmoid per label, a label predicted when its
    probability exceeds data.threshold; the test report is per label."""

    name = "multilabel"
    default_loss = "bce"
    monitor = "f1_micro"
    mode = "max"
    threshold: float = 0.5

    def with_labels(self, label_names: Sequence[str], label_info: Mapping[str, Any] | None = None
                    ) -> "MultiLabelTask":
        task = copy.copy(self)
        threshold = (label_info or {}).get("threshold")  # None: data.threshold=null, the 0.5 default
        task.threshold = self.threshold if threshold is None else float(threshold)
        return task

    def model_head(self, num_labels: int) -> dict[str, Any]:
        return {"num_labels": num_labels, "problem_type": "multi_label_classification"}

    def metrics(self, num_labels: int) -> MetricCollection:
        # one state, counted once: MetricCollection's compute groups share it between the four
        stats = {stat: MultiLabelCounts(num_labels, stat) for stat in ("f1_micro", "f1_macro", "subset_acc")}
        return MetricCollection({**stats, "hamming": HammingLoss(num_labels)})

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch, labels] 0/1: the labels whose probability exceeds the threshold."""
        return self._decide(logits.float().sigmoid())

    def _decide(self, probs: torch.Tensor) -> torch.Tensor:
        return (probs > self.threshold).long()

    def metric_inputs(self, logits, labels):
        return self.predict(logits), labels.long()

    def report_metric(self, num_labels: int) -> Metric:
        return MultiLabelCounts(num_labels, "counts")

    def report(self, state: dict[str, torch.Tensor], label_names: list[str]) -> tuple[dict, str]:
        return multilabel_report(state, label_names, self.threshold)

    def prepare_export(self, model: torch.nn.Module) -> None:
        # config.json carries the decision threshold: predict.py on hf_model / merged decides as this run tested
        model.config.multilabel_threshold = self.threshold

    def prediction_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        # the decisions themselves, not re-derived from the probabilities on the host: exactly the metrics'
        probs = logits.float().sigmoid()
        return {"probs": probs, "pred": self._decide(probs)}

    def prediction_record(self, outputs: Mapping[str, Any], gold: Any, label_names: Sequence[str]) -> dict:
        """{"gold", "pred": label names, "probs": {label: probability}} (no "gold" when predicting)."""
        record = {} if gold is None else {"gold": [n for n, g in zip(label_names, gold) if float(g) > 0]}
        record["pred"] = [n for n, p in zip(label_names, outputs["pred"]) if int(p)]
        record["probs"] = dict(zip(label_names, decimals(outputs["probs"])))
        return record


class TokenClassificationTask(ClassificationTask):
    """NER-style tagging: entity-level precision/recall/F1 (strict IOB2 spans, tunelab.span_metrics)
    plus token accuracy; the test report is per entity type."""

    name = "token_classification"
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    data_modules = frozenset({"TokenClassificationDataModule"})
    default_loss = "token_cross_entropy"
    monitor = "f1"
    mode = "max"
    label_names: tuple[str, ...] = ()

    def with_labels(self, label_names: Sequence[str], label_info: Mapping[str, Any] | None = None
                    ) -> "TokenClassificationTask":
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

    def loss_weight(self, labels):
        return (labels != IGNORE_INDEX).sum()  # a device tensor: no sync

    def metric_inputs(self, logits, labels):
        # tag ids, shape [batch, seq] kept (spans need sentence boundaries); no boolean filtering of ignored
        # labels here (a GPU sync): the metrics skip them
        return logits.argmax(-1), labels

    def report_metric(self, num_labels: int) -> Metric:
        return EntityCounts(self.label_names, "counts")

    def report(self, state: torch.Tensor, label_names: list[str]) -> tuple[dict, str]:
        return entity_report(state, entity_types(label_names))

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        return prediction_metrics.TOKEN_CLASSIFICATION

    def prediction_outputs(self, logits):
        return {"pred": logits.argmax(-1)}

    def prediction_record(self, outputs, gold, label_names):
        """One tag per word, read at the word's first sub-token; words cut off by data.max_length were
        neither seen nor scored: null."""
        starts, missing = outputs["word_starts"], [None] * (len(outputs["tokens"]) - len(outputs["word_starts"]))

        def tags(ids: torch.Tensor) -> list[str | None]:
            ids = ids.tolist()
            return [label_names[ids[i]] for i in starts] + missing

        return ({} if gold is None else {"gold": tags(gold)}) | {"pred": tags(outputs["pred"])}


class CausalLMTask(Task):
    name = "causal_lm"
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    data_modules = frozenset({"LanguageModelingDataModule"})
    default_loss = "next_token_cross_entropy"
    monitor = "perplexity"
    mode = "min"
    resizes_vocab = True  # the embedding matrix follows the tokenizer the datamodule built or loaded

    def model_head(self, num_labels: int) -> dict[str, Any]:
        # encoder architectures (BERT, model=tiny) mask the future only as decoders
        return {"is_decoder": True}

    def trained_head(self, model: torch.nn.Module) -> list[str]:
        # the pretrained LM head stays, tied to the input embeddings: training it would train the whole
        # vocabulary matrix
        return []

    def metrics(self, num_labels: int) -> MetricCollection:
        return MetricCollection({"perplexity": Perplexity()})

    def metric_inputs(self, logits, labels):
        return shift_for_next_token(logits, labels)

    def loss_weight(self, labels):
        return (labels[:, 1:] != IGNORE_INDEX).sum()  # the next-token targets (shift_for_next_token)


TASKS: dict[str, Task] = {
    t.name: t() for t in (ClassificationTask, RegressionTask, MultiLabelTask, TokenClassificationTask, CausalLMTask)
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"data.task={name!r} is unknown; use one of {', '.join(sorted(TASKS))}.")
    return TASKS[name]
