"""The tasks that predict per token: NER-style tagging scored on entity spans, and causal language modelling
scored on the next token (see tunelab.tasks for the registry)."""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from torchmetrics import Metric, MetricCollection

from tunelab import prediction_metrics
from tunelab.losses import shift_for_next_token
from tunelab.metrics import Perplexity, TokenAccuracy
from tunelab.report_tables import entity_report
from tunelab.span_metrics import EntityCounts, entity_types
from tunelab.task_base import Task


class TokenClassificationTask(Task):
    """NER-style tagging: entity-level precision/recall/F1 (strict IOB2 spans, tunelab.span_metrics)
    plus token accuracy; the test report is per entity type."""

    name = "token_classification"
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    data_modules = frozenset({"TokenClassificationDataModule"})
    default_loss = "token_cross_entropy"
    monitor = "f1"
    loss_free_metrics = ("f1",)
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

    def metric_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # tag ids, shape [batch, seq] kept (spans need sentence boundaries); no boolean filtering of ignored
        # labels here (a GPU sync): the metrics skip them
        return logits.argmax(-1), labels

    def report_metric(self, num_labels: int) -> Metric:
        return EntityCounts(self.label_names, "counts")

    def report(self, state: torch.Tensor, label_names: list[str]) -> tuple[dict, str]:
        return entity_report(state, entity_types(label_names))

    def prediction_metrics(self) -> dict[str, prediction_metrics.ExampleMetric]:
        return prediction_metrics.TOKEN_CLASSIFICATION

    def prediction_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": logits.argmax(-1)}

    def prediction_record(self, outputs: dict[str, Any], gold: Any, label_names: list[str]) -> dict[str, Any]:
        """One tag per word, read at the word's first sub-token; a word without one (cut off by data.max_length,
        or tokenized into nothing) was neither seen nor scored: null."""
        starts = outputs["word_starts"]

        def tags(ids: torch.Tensor) -> list[str | None]:
            ids = ids.tolist()
            return [label_names[ids[i]] if i >= 0 else None for i in starts]

        return ({} if gold is None else {"gold": tags(gold)}) | {"pred": tags(outputs["pred"])}


class CausalLMTask(Task):
    name = "causal_lm"
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    data_modules = frozenset({"LanguageModelingDataModule"})
    default_loss = "next_token_cross_entropy"
    monitor = "perplexity"
    loss_free_metrics = ("perplexity",)
    mode = "min"
    generates_text = True
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

    def metric_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return shift_for_next_token(logits, labels)
