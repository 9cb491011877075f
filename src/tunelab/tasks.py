"""The task abstraction: everything that differs between classification, multi-label classification,
regression, token classification and causal LM lives in a Task (model head, peft task type, the data modules
that serve it, the targets the loss sees, metrics and which of them is monitored, test report), so one
LightningModule and one pipeline serve them all. Here: the one-prediction-per-text tasks and the registry
(the per-token tasks are in tunelab.token_tasks, the base class in tunelab.task_base)."""

from __future__ import annotations

import copy
import logging
from typing import Any, Mapping, Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, SpearmanCorrCoef

from tunelab import prediction_metrics
from tunelab.errors import ConfigError
from tunelab.metrics import (Accuracy, Calibration, ConfusionMatrix, F1Score, HammingLoss, MatthewsCorrCoef,
                             MultiLabelCounts, PearsonCorrCoef, Precision, Recall)
from tunelab.report_tables import calibration_report, classification_report, multilabel_report
from tunelab.task_base import SequenceTask, Task, decimals
from tunelab.token_tasks import CausalLMTask, TokenClassificationTask

log = logging.getLogger(__name__)


class ClassificationTask(SequenceTask):
    name = "classification"
    default_loss = "cross_entropy"
    monitor = "acc"
    mode = "max"
    problem_type = "single_label_classification"
    loss_free_metrics = ("nll", "acc")

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

    # metric_inputs: the logits (Task's); the counting metrics take their argmax, the calibration ones their softmax

    def report_metric(self, num_labels: int) -> Metric:
        return MetricCollection({"confusion": ConfusionMatrix(num_labels, validate_args=False),
                                 "calibration": Calibration("bins")})

    def report(self, state: dict[str, torch.Tensor], label_names: list[str]) -> tuple[dict, str]:
        report, text = classification_report(state["confusion"], label_names)
        report["calibration"], calibration_text = calibration_report(state["calibration"])
        return report, f"{text}\n\n{calibration_text}"

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        return prediction_metrics.CLASSIFICATION

    def prediction_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        # pred is the metrics' argmax (not re-derived from rounded probabilities): the file recomputes them
        return {"pred": logits.argmax(-1), "probs": logits.float().softmax(-1)}

    def prediction_record(self, outputs: dict[str, Any], gold: Any, label_names: list[str]) -> dict[str, Any]:
        probs, pred = decimals(outputs["probs"]), int(outputs["pred"])
        record = {} if gold is None else {"gold": label_names[int(gold)]}
        return record | {"pred": label_names[pred], "probs": dict(zip(label_names, probs)), "confidence": probs[pred]}


class RegressionTask(SequenceTask):
    name = "regression"
    default_loss = "mse"
    monitor = "spearman"
    mode = "max"
    problem_type = "regression"
    loss_free_metrics = ("mse", "spearman")

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
        return {"num_labels": 1, "problem_type": self.problem_type}

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

    def metric_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_label_units(logits), labels.float()

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        return prediction_metrics.REGRESSION

    def prediction_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": self.to_label_units(logits)}

    def prediction_record(self, outputs: dict[str, Any], gold: Any, label_names: list[str]) -> dict[str, Any]:
        record = {} if gold is None else {"gold": decimals(gold)[0]}
        return record | {"pred": decimals(outputs["pred"])[0]}

    def prepare_export(self, model: torch.nn.Module) -> None:
        # to_label_units folded into the output layer: y = (w x + b) * std + mean. config.json records the units
        # and whether they are folded: predict.py and a run fine-tuning the model further read them
        out = self.output_layer(model)
        folded = out is not None and out.bias is not None  # GPT-2's score layer has no bias to add the mean to
        model.config.target_mean, model.config.target_std = self.target_mean, self.target_std
        model.config.target_units_folded = folded
        if not folded:
            log.warning("the exported model's outputs are z-scores (predict.py converts them): multiply by %g and "
                        "add %g for target units", self.target_std, self.target_mean)
            return
        with torch.no_grad():
            out.weight.mul_(self.target_std)
            out.bias.mul_(self.target_std).add_(self.target_mean)

    def exported_label_info(self, config: Any) -> dict[str, Any]:
        return {k: getattr(config, k) for k in ("target_mean", "target_std") if getattr(config, k, None) is not None}

    def adopt_head(self, model: torch.nn.Module, trained: Any, label_names: Sequence[str]) -> None:
        """An exported regression model gives target units (folded into its head): loaded by tunelab, whose task
        maps z-scores to units itself (exported_label_info, or a new run's own statistics), it is unfolded, or
        the units would be applied twice."""
        if not getattr(trained, "target_units_folded", False):
            return
        out = self.output_layer(model)
        with torch.no_grad():
            out.bias.sub_(trained.target_mean).div_(trained.target_std)
            out.weight.div_(trained.target_std)


class MultiLabelTask(SequenceTask):
    """Several labels per example (data.task=multilabel): one sigmoid per label, a label predicted when its
    probability exceeds data.threshold; the test report is per label."""

    name = "multilabel"
    default_loss = "bce"
    monitor = "f1_micro"
    problem_type = "multi_label_classification"
    loss_free_metrics = ("f1_micro", "hamming")
    mode = "max"
    threshold: float = 0.5

    def with_labels(self, label_names: Sequence[str], label_info: Mapping[str, Any] | None = None
                    ) -> "MultiLabelTask":
        task = copy.copy(self)
        threshold = (label_info or {}).get("threshold")  # None: data.threshold=null, the 0.5 default
        task.threshold = self.threshold if threshold is None else float(threshold)
        return task

    def metrics(self, num_labels: int) -> MetricCollection:
        # one state, counted once: MetricCollection's compute groups share it between the four
        stats = {stat: MultiLabelCounts(num_labels, stat) for stat in ("f1_micro", "f1_macro", "subset_acc")}
        return MetricCollection({**stats, "hamming": HammingLoss(num_labels)})

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch, labels] 0/1: the labels whose probability exceeds the threshold."""
        return self._decide(logits.float().sigmoid())

    def _decide(self, probs: torch.Tensor) -> torch.Tensor:
        return (probs > self.threshold).long()

    def metric_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict(logits), labels.long()

    def report_metric(self, num_labels: int) -> Metric:
        return MultiLabelCounts(num_labels, "counts")

    def report(self, state: dict[str, torch.Tensor], label_names: list[str]) -> tuple[dict, str]:
        return multilabel_report(state, label_names, self.threshold)

    def prepare_export(self, model: torch.nn.Module) -> None:
        # config.json carries the decision threshold: predict.py on hf_model / merged decides as this run tested
        model.config.multilabel_threshold = self.threshold

    def exported_label_info(self, config: Any) -> dict[str, Any]:
        threshold = getattr(config, "multilabel_threshold", None)
        return {} if threshold is None else {"threshold": threshold}

    def prediction_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        # the decisions themselves, not re-derived from the probabilities on the host: exactly the metrics'
        probs = logits.float().sigmoid()
        return {"probs": probs, "pred": self._decide(probs)}

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        return prediction_metrics.MULTILABEL

    def prediction_record(self, outputs: dict[str, Any], gold: Any, label_names: list[str]) -> dict[str, Any]:
        """{"gold", "pred": label names, "probs": {label: probability}} (no "gold" when predicting)."""
        record = {} if gold is None else {"gold": [n for n, g in zip(label_names, gold) if float(g) > 0]}
        record["pred"] = [n for n, p in zip(label_names, outputs["pred"]) if int(p)]
        record["probs"] = dict(zip(label_names, decimals(outputs["probs"])))
        return record


TASKS: dict[str, Task] = {
    t.name: t() for t in (ClassificationTask, RegressionTask, MultiLabelTask, TokenClassificationTask, CausalLMTask)
}


def check_data(task: Task, data_cfg: Any) -> None:
    """ConfigError when the configured data module cannot serve the task, naming the tasks it serves."""
    module = str(data_cfg.get("_target_", "")).rsplit(".", 1)[-1]
    if module and module not in task.data_modules:
        fits = sorted(t.name for t in TASKS.values() if module in t.data_modules)
        raise ConfigError(
            f"data={data_cfg.get('name')} ({module}) serves {' or '.join(fits)} data, not data.task={task.name}; "
            f"use data.task={fits[0]} or a data config for {task.name}."
        )


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"data.task={name!r} is unknown; use one of {', '.join(sorted(TASKS))}.")
    return TASKS[name]
