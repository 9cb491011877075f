"""model.pooling=mean: BERT's sequence head on the mean of the real tokens' last hidden states, its
refusals, and a training run with it (plain and under LoRA). The exported model: test_model_outputs."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from test_model import graphs_for_lengths
from tunelab.errors import ConfigError
from tunelab.mean_pooling import BertMeanPoolingForSequenceClassification
from tunelab.model import build_model
from tunelab.tasks import get_task

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny_model(tmp_path, config: transformers.PretrainedConfig, task: str = "classification", **model_cfg):
    config.save_pretrained(tmp_path)
    cfg = {"name_or_path": str(tmp_path), "from_scratch": True, "pooling": "mean", **model_cfg}
    return build_model(cfg, get_task(task), num_labels=2)


def test_head_reads_the_mean_of_the_real_tokens_and_no_pooler(tmp_path) -> None:
    torch.manual_seed(0)
    model = tiny_model(tmp_path, transformers.BertConfig(**TINY)).eval()
    assert isinstance(model, BertMeanPoolingForSequenceClassification) and model.config.pooling == "mean"
    assert model.bert.pooler is None and not any("pooler" in n for n, _ in model.named_parameters())
    ids = torch.randint(1, 64, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])  # the second text is 4 tokens, padded to 7
    with torch.no_grad():
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = model.classifier(torch.stack([hidden[0].mean(0), hidden[1, :4].mean(0)]))
        logits = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-4)  # padding changes nothing


def test_compiles_to_one_dynamic_graph_over_length_buckets() -> None:
    # the GPU recipes compile one dynamic-shape graph; the mean over the mask must not specialise on length
    assert graphs_for_lengths([16, 32, 48], compile_dynamic=True, compile_backend="aot_eager", pooling="mean") == 1


def test_labels_give_the_loss_transformers_would(tmp_path) -> None:
    model = tiny_model(tmp_path, transformers.BertConfig(**TINY))
    ids, labels = torch.randint(1, 64, (3, 5)), torch.tensor([0, 1, 1])
    out = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


@pytest.mark.parametrize(
    ("config", "task", "match"),
    [
        (transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2), "classification",
         "model.pooling=mean is built for BERT-style models \\(model_type bert\\), not gpt2: leave model.pooling unset "
         "for this model.$"),
        (transformers.BertConfig(**TINY), "token_classification",
         "model.pooling=mean averages a text into one vector for a sequence head; data.task=token_classification has no "
         "such head: leave model.pooling unset.$"),
    ],
)
def test_refused_where_there_is_no_bert_sequence_head(tmp_path, config, task, match) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny_model(tmp_path, config, task)


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_trains_through_the_pipeline(run_cfg, peft: str) -> None:
    metrics, _ = run_cfg("trainer=debug", "model.pooling=mean", f"peft={peft}")
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["test/loss"])
    assert (metrics["params/trainable_ratio"] == 1.0) if peft == "none" else metrics["params/trainable_ratio"] < 0.05
