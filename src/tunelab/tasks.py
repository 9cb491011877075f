"""The task abstraction: everything that differs between classification, regression, token
classification and causal LM lives here (model head, peft task type, the data modules that serve it,
metrics and which of them is monitored, test report), so one LightningModule and one pipeline serve
them all."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

from tunelab.errors import ConfigError
from tunelab import prediction_metrics
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
from tunelab.report_tables import classification_report, entity_report
from tunelab.span_metrics import EntityCounts, entity_types


class Task:
    """Base task. Subclasses set the HF auto class, the metrics and the metric that picks checkpoints."""

    name: ClassVar[str]
    auto_model: ClassVar[str]  # transformers Auto class that adds this task's head
    peft_task_type: ClassVar[str]  # peft's TaskType: picks the PeftModel subclass (prefix tuning needs it)
    data_modules: ClassVar[frozenset[str]]  # tunelab.data classes that can serve this task
    default_loss: ClassVar[str]
    monitor: ClassVar[str]  # metric name without the stage prefix
    mode: ClassVar[str]

    def model_head(self, num_labels: int) -> dict[str, Any]:
        """Settings of the model config that shape this task's head (transformers config kwargs)."""
        return {"num_labels": num_labels}

    def trained_head(self, model: torch.nn.Module) -> list[str]:
        """The task head trained in full under an adapter: the top-level modules with parameters outside
        the backbone (BERT: classifier, GPT-2: score)."""
        backbone = getattr(model, "base_model_prefix", "")
        return [n for n, m in model.named_children() if n != backbone and any(True for _ in m.parameters())]

    def check_data(self, data_cfg: Any) -> None:
        """ConfigError when the configured data module cannot serve this task."""
        module = str(data_cfg.get("_target_", "")).rsplit(".", 1)[-1]
        if module and module not in self.data_modules:
            fits = sorted(t.name for t in TASKS.values() if module in t.data_modules)
            raise ConfigError(
                f"data={data_cfg.get('name')} ({module}) serves {' or '.join(fits)} data, not data.task={self.name}; "
                f"use data.task={fits[0]} or a data config for {self.name}."
            )

    def metric_mode(self, name: str) -> str:
        """"max" or "min": whether a larger value of a logged metric (`val/acc`, `test/loss`) is better."""
        leaf = name.rsplit("/", 1)[-1]
        if leaf == self.monitor:
            return self.mode
        if leaf.split("_")[0] == "loss":
            return "min"
        metrics = dict(self.metrics(2).items())
        metric = metrics.get(leaf)
        if metric is None or metric.higher_is_better is None:
            known = sorted(["loss", *metrics])
            raise ConfigError(f"{name} is not a metric of {self.name} runs; use one of {', '.join(known)} (val/ or test/).")
        return "max" if metric.higher_is_better else "min"

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

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        """The test metrics recomputed from predictions.jsonl (tunelab.compare), by name."""
        return {}

    def prediction_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Per-example tensors kept (on the device) at test / predict time for predictions.jsonl; None:
        the task writes no predictions (causal LM)."""
        return None

    def prediction_record(self, outputs: dict[str, Any], gold: Any, label_names: list[str]) -> dict[str, Any]:
        """The predictions.jsonl fields of one example from its row of `prediction_outputs` (host tensors,
        merged with the example's own fields) and its gold target as the batch held it (None: predicting)."""
        raise NotImplementedError

    def writes_predictions(self) -> bool:
        return type(self).prediction_outputs is not Task.prediction_outputs

    resizes_vocab: ClassVar[bool] = False

    def with_labels(self, label_names: Sequence[str]) -> "Task":
        """The task bound to a run's label names (tasks whose metrics need the names override this)."""
        return self


class ClassificationTask(Task):
    name = "classification"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    data_modules = frozenset({"TextDataModule"})
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

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        return prediction_metrics.CLASSIFICATION

    def prediction_outputs(self, logits):
        # pred is the metrics' argmax (not re-derived from rounded probabilities): the file recomputes them
        return {"pred": logits.argmax(-1), "probs": logits.float().softmax(-1)}

    def prediction_record(self, outputs, gold, label_names):
        probs, pred = decimals(outputs["probs"]), int(outputs["pred"])
        record = {} if gold is None else {"gold": label_names[int(gold)]}
        return record | {"pred": label_names[pred], "probs": dict(zip(label_names, probs)), "confidence": probs[pred]}


class RegressionTask(Task):
    name = "regression"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    data_modules = frozenset({"TextDataModule"})
    default_loss = "mse"
    monitor = "spearman"
    mode = "max"

    def model_head(self, num_labels: int) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

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

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        return prediction_metrics.REGRESSION

    def prediction_outputs(self, logits):
        return {"pred": logits.squeeze(-1).float()}

    def prediction_record(self, outputs, gold, label_names):
        record = {} if gold is None else {"gold": decimals(gold)[0]}
        return record | {"pred": decimals(outputs["pred"])[0]}


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


def decimals(values: torch.Tensor) -> list[float]:
    """float32 values as the shortest decimals that read back to them (4.8, not 4.800000190734863)."""
    return [float(str(v)) for v in values.float().reshape(-1).numpy()]


TASKS: dict[str, Task] = {
    t.name: t() for t in (ClassificationTask, RegressionTask, TokenClassificationTask, CausalLMTask)
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"data.task={name!r} is unknown; use one of {', '.join(sorted(TASKS))}.")
    return TASKS[name]
