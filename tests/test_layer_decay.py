"""optimizer.layer_decay: layer-wise learning-rate decay over the transformer layers, below a head at the full
rate; weight decay still on matrices only."""

from __future__ import annotations

import csv

import pytest
import torch

from tunelab.errors import ConfigError
from tunelab.module import TransformerModule
from tunelab.optim import build_optimizer, param_groups
from tunelab.validation import validate

from conftest import compose_cfg

ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.01, "layer_decay": 0.5}


def tiny_module(config: dict, task: str = "classification", peft: dict | None = None, **optimizer) -> TransformerModule:
    loss = "tunelab.losses.NextTokenCrossEntropyLoss" if task == "causal_lm" else "tunelab.losses.CrossEntropyLoss"
    return TransformerModule(model={"name_or_path": None, "from_scratch": True, "config": config}, task=task,
                             loss={"_target_": loss}, optimizer={**ADAMW, **optimizer}, peft=peft,
                             label_names=[] if task == "causal_lm" else ["neg", "pos"], vocab_size=32)


BERT = {"model_type": "bert", "vocab_size": 32, "hidden_size": 8, "num_hidden_layers": 3, "num_attention_heads": 2,
        "intermediate_size": 16}
GPT2 = {"model_type": "gpt2", "vocab_size": 32, "n_embd": 8, "n_layer": 3, "n_head": 2, "n_positions": 16}


def lr_by_parameter(module: TransformerModule) -> dict[str, tuple[float, float]]:
    optimizer = build_optimizer(module.hparams.optimizer, module)
    by_param = {p: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    names = dict(module.named_parameters())
    assert len(by_param) == sum(len(g["params"]) for g in optimizer.param_groups)  # each parameter once
    assert set(by_param) == {p for p in names.values() if p.requires_grad}
    return {name: by_param[p] for name, p in names.items() if p.requires_grad}


@pytest.mark.parametrize("config, embedding, layer, head", [
    (BERT, "model.bert.embeddings.word_embeddings.weight", "model.bert.encoder.layer.{}.attention.self.query.weight",
     ["model.bert.pooler.dense.weight", "model.classifier.weight"]),
    (GPT2, "model.transformer.wte.weight", "model.transformer.h.{}.attn.c_attn.weight",
     ["model.transformer.ln_f.weight", "model.score.weight"]),
])
def test_each_layer_trains_at_its_decayed_rate_below_a_full_rate_head(config, embedding, layer, head) -> None:
    lrs = lr_by_parameter(tiny_module(config))
    for name in head:  # above the layers (BERT's pooler, GPT-2's final LayerNorm) and the task head
        assert lrs[name][0] == pytest.approx(1e-3)
    for i in range(3):  # three layers: the last one level below the head
        assert lrs[layer.format(i)] == pytest.approx((1e-3 * 0.5 ** (3 - i), 0.01))
    assert lrs[embedding] == pytest.approx((1e-3 * 0.5 ** 4, 0.01))
    assert lrs[layer.format(0).replace("weight", "bias")] == pytest.approx((1e-3 * 0.5 ** 3, 0.0))  # no decay on 1-D


DEBERTA = {"model_type": "deberta-v2", "vocab_size": 32, "hidden_size": 8, "num_hidden_layers": 3,
           "num_attention_heads": 2, "intermediate_size": 16, "relative_attention": True, "position_buckets": 8}


def test_an_embedding_table_registered_after_the_layers_decays_with_the_embeddings() -> None:
    """DeBERTa's relative-position table is used by every layer but registered after them: embeddings, not head."""
    lrs = lr_by_parameter(tiny_module(DEBERTA))
    embedding = lrs["model.deberta.embeddings.word_embeddings.weight"][0]
    assert embedding == pytest.approx(1e-3 * 0.5 ** 4)
    assert lrs["model.deberta.encoder.rel_embeddings.weight"][0] == embedding


def test_freeze_embeddings_freezes_gpt2s_position_table_too() -> None:
    module = TransformerModule(model={"name_or_path": None, "from_scratch": True, "config": GPT2,
                                      "freeze_embeddings": True}, task="classification",
                               loss={"_target_": "tunelab.losses.CrossEntropyLoss"}, optimizer=ADAMW,
                               label_names=["neg", "pos"], vocab_size=32)
    frozen = {n for n, p in module.model.named_parameters() if not p.requires_grad}
    assert frozen == {"transformer.wte.weight", "transformer.wpe.weight"}


def test_layer_options_refuse_an_encoder_decoder_model() -> None:
    """T5's longest layer list is one block's sub-layers, BART's the encoder alone: there is no one stack."""
    bart = {"model_type": "bart", "vocab_size": 32, "d_model": 8, "encoder_layers": 2, "decoder_layers": 2,
            "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 16, "decoder_ffn_dim": 16}
    with pytest.raises(ConfigError, match=r"^optimizer.layer_decay needs one stack of transformer layers; bart is an "
                                          r"encoder-decoder with two: leave it unset for this model.$"):
        tiny_module(bart)


def test_causal_lm_ties_its_output_layer_to_the_embeddings_rate() -> None:
    """A causal LM's output projection is the input embedding matrix (tied): one parameter, one rate."""
    module = tiny_module(GPT2 | {"tie_word_embeddings": True}, task="causal_lm")
    lrs = lr_by_parameter(module)
    assert module.model.lm_head.weight is module.model.transformer.wte.weight
    assert lrs["model.transformer.wte.weight"][0] == pytest.approx(1e-3 * 0.5 ** 4)


def test_without_layer_decay_one_rate_in_the_decay_and_no_decay_pair() -> None:
    module = tiny_module(BERT, layer_decay=None)
    groups = build_optimizer(module.hparams.optimizer, module).param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.01), (1e-3, 0.0)]
    assert [len(g["params"]) for g in param_groups(module, 0.01)] == [len(g["params"]) for g in groups]


def test_adapters_train_their_layers_at_the_layers_rates() -> None:
    module = tiny_module(BERT, peft={"_target_": "peft.LoraConfig", "name": "lora", "r": 2, "lora_alpha": 4,
                                             "target_modules": ["query", "value"]})
    lrs = lr_by_parameter(module)
    lora = [n for n in lrs if "lora_A" in n and ".layer.2." in n]
    assert lora and all(lrs[n][0] == pytest.approx(1e-3 * 0.5) for n in lora)
    assert all(lrs[n][0] == pytest.approx(1e-3) for n in lrs if "classifier" in n)
    assert not any("word_embeddings" in n for n in lrs)  # frozen: in no group


def test_a_run_logs_each_layers_rate(run_cfg) -> None:
    _, run_dir = run_cfg("optimizer.layer_decay=0.5", "optimizer.lr=1e-3", "scheduler=none", "trainer.max_steps=2",
                         "data.train_limit=32", "data.batch_size=8", "trainer.log_every_n_steps=1")
    row = next(r for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get("lr-AdamW/head"))
    # conf/model/tiny: two layers below the head
    expected = {"head": 1e-3, "layer1": 5e-4, "layer0": 2.5e-4, "embeddings": 1.25e-4}
    for name, lr in expected.items():
        assert float(row[f"lr-AdamW/{name}"]) == pytest.approx(lr)
        assert float(row[f"lr-AdamW/{name}.no_decay"]) == pytest.approx(lr)


def test_layer_decay_needs_a_fixed_learning_rate(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"optimizer.layer_decay scales optimizer.lr per layer: set optimizer.lr"):
        validate(compose_cfg(tmp_path, "optimizer=adafactor", "optimizer.lr=null", "optimizer.relative_step=true",
                             "optimizer.layer_decay=0.8"))
    validate(compose_cfg(tmp_path, "optimizer=adafactor", "optimizer.layer_decay=0.8"))


def test_a_model_without_a_layer_stack_is_refused_naming_the_option() -> None:
    with pytest.raises(ConfigError, match="optimizer.layer_decay needs a model with a stack of transformer layers: "
                                          "leave it unset for this model.$"):
        tiny_module(BERT | {"num_hidden_layers": 0})


def test_the_optimizer_never_sees_the_setting() -> None:
    module = tiny_module(BERT)
    assert isinstance(build_optimizer(module.hparams.optimizer, module), torch.optim.AdamW)



@pytest.mark.parametrize("peft", [
    {"_target_": "peft.IA3Config", "name": "ia3", "target_modules": ["key", "value", "output.dense"],
     "feedforward_modules": ["output.dense"]},
    {"_target_": "peft.AdaLoraConfig", "name": "adalora", "init_r": 2, "target_r": 1, "lora_alpha": 4,
     "target_modules": ["query", "value"], "total_step": 10},
], ids=["ia3", "adalora"])
def test_peft_gain_vectors_take_no_weight_decay(peft: dict) -> None:
    """(IA)^3's gains and AdaLoRA's singular values are vectors stored as (d, 1): decayed, they would shrink toward
    switching channels off. Like LayerNorm weights they take none; the adapters' matrices do."""
    lrs = lr_by_parameter(tiny_module(BERT, peft=peft, layer_decay=None))
    vectors = [n for n in lrs if ".ia3_l." in n or ".lora_E." in n]
    assert vectors and all(lrs[n][1] == 0.0 for n in vectors)
    matrices = [n for n in lrs if ".lora_A." in n]
    assert all(lrs[n][1] == 0.01 for n in matrices)
