"""The Task base class: what every task answers (model head, peft task type, data check, metric directions,
test report, predictions) with defaults; the tasks and their registry are in tunelab.tasks and tunelab.token_tasks."""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torchmetrics import Metric, MetricCollection

from tunelab.errors import ConfigError
from tunelab.prediction_metrics import ExampleMetric
from tunelab.run_layout import is_loss_metric

log = logging.getLogger(__name__)


_DEFAULT_NAME = re.compile(r"LABEL_\d+")  # transformers' id2label of a head nobody named


class Task:
    """Base task. Subclasses set the HF auto class, the metrics and the metric that picks checkpoints."""

    name: ClassVar[str]
    auto_model: ClassVar[str]  # transformers Auto class that adds this task's head
    peft_task_type: ClassVar[str]  # peft's TaskType: picks the PeftModel subclass (prefix tuning needs it)
    data_modules: ClassVar[frozenset[str]]  # tunelab.data classes that can serve this task
    default_loss: ClassVar[str]
    monitor: ClassVar[str]  # metric name without the stage prefix
    mode: ClassVar[str]
    # transformers' problem_type of a sequence head, which tells an exported model's task (None: another head)
    problem_type: ClassVar[str | None] = None
    generates_text: ClassVar[bool] = False  # callbacks.generate samples text from the model during validation
    # what to rank on instead of */loss when configs train different losses: metrics every loss of the task logs
    # on one scale (classification's score the softmax, regression's the targets' units)
    loss_free_metrics: ClassVar[tuple[str, ...]] = ()

    def model_head(self, num_labels: int) -> dict[str, Any]:
        """Settings of the model config that shape this task's head (transformers config kwargs)."""
        return {"num_labels": num_labels} | ({"problem_type": self.problem_type} if self.problem_type else {})

    def trained_head(self, model: torch.nn.Module) -> list[str]:
        """The task head trained in full under an adapter: the top-level modules with parameters outside
        the backbone (BERT: classifier, GPT-2: score)."""
        backbone = getattr(model, "base_model_prefix", "")
        return [n for n, m in model.named_children() if n != backbone and any(True for _ in m.parameters())]

    def output_layer(self, model: torch.nn.Module) -> torch.nn.Linear | None:
        """The head's last linear layer: one row (and bias) per label."""
        layers = [m for name in self.trained_head(model) for m in getattr(model, name).modules()
                  if isinstance(m, torch.nn.Linear)]
        return layers[-1] if layers else None

    def adopt_head(self, model: torch.nn.Module, trained: Any, label_names: Sequence[str]) -> None:
        """`model` was loaded from a model fine-tuned for this task (an exported hf_model; `trained`: its config as
        saved): its head's rows are put in this run's label order (config.json's id2label names them). Another
        label set keeps the rows by position, with a warning."""
        saved = [str(trained.id2label[i]) for i in range(trained.num_labels)] if trained.id2label else []
        if not label_names or saved == list(label_names) or all(_DEFAULT_NAME.fullmatch(n) for n in saved):
            return
        if sorted(saved) != sorted(label_names):
            log.warning("the head of %s was trained for the labels %s; this run's %s take its outputs by position",
                        trained.name_or_path, saved, list(label_names))
            return
        out, order = self.output_layer(model), [saved.index(n) for n in label_names]
        with torch.no_grad():
            out.weight.copy_(out.weight[order])
            if out.bias is not None:
                out.bias.copy_(out.bias[order])
        log.info("the head of %s put in this run's label order %s (it had %s)", trained.name_or_path,
                 list(label_names), saved)

    def metric_mode(self, name: str) -> str:
        """"max" or "min": whether a larger value of a logged metric (`val/acc`, `test/loss`) is better."""
        leaf = name.rsplit("/", 1)[-1]
        if leaf == self.monitor:
            return self.mode
        if is_loss_metric(leaf):
            return "min"
        metrics = dict(self.metrics(2).items())
        metric = metrics.get(leaf)
        if metric is None or metric.higher_is_better is None:
            stage = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
            known = sorted(["loss", *(k for k, m in metrics.items() if m.higher_is_better is not None)])
            raise ConfigError(f"{name} is not a metric of {self.name} runs; use one of "
                              f"{', '.join(stage + k for k in known)}.")
        return "max" if metric.higher_is_better else "min"

    def metrics(self, num_labels: int) -> MetricCollection:
        raise NotImplementedError

    def metric_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, targets) as the metrics expect them, with ignored positions dropped."""
        return logits, labels

    def loss_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The batch labels as the loss sees them (regression: standardized targets)."""
        return labels

    def report_metric(self, num_labels: int) -> Metric | None:
        """A metric accumulated over the test split from which `report` builds the test report."""
        return None

    def report(self, state: Any, label_names: list[str]) -> tuple[dict, str]:
        return {}, ""

    def prediction_metrics(self) -> dict[str, ExampleMetric]:
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

    def with_labels(self, label_names: Sequence[str], label_info: Mapping[str, Any] | None = None) -> "Task":
        """The task bound to a run's label names and the data's label info (TextDataModule.label_info:
        target mean / std, decision threshold); tasks whose metrics need them override this."""
        return self

    def prepare_export(self, model: torch.nn.Module) -> None:
        """Make a plain transformers copy of the trained model (peft.merge_on_save) predict on its own as the
        task does (in place); nothing to do for most tasks."""

    def exported_label_info(self, config: Any) -> dict[str, Any]:
        """The label info prepare_export left in an exported model's config.json, for predict.py on that dir."""
        return {}


class SequenceTask(Task):
    """One prediction per text (or text pair): a head on the pooled sequence, served by TextDataModule. Three
    tasks share the head class, so config.json carries the problem_type (transformers reads it in forward)."""

    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    data_modules = frozenset({"TextDataModule"})


def decimals(values: torch.Tensor) -> list[float]:
    """float32 values as the shortest decimals that read back to them (4.8, not 4.800000190734863)."""
    return [float(str(v)) for v in values.float().reshape(-1).numpy()]
