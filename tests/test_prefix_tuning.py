"""peft=prefix: the check before loading agrees with what the installed peft + transformers really do,
GPT-2 prefix tuning trains (only the prefix), saves, reloads and tests end to end, and encoder tasks are
refused with one honest line."""

from __future__ import annotations

import csv
import inspect
import math
from pathlib import Path

import peft
import pytest
import torch
import transformers
from omegaconf import OmegaConf
from transformers.utils.deprecation import deprecate_kwarg

from conftest import compose_cfg
from test_peft import TINY, VOCAB, batches, fit, make_module
from tunelab import peft_adapters
from tunelab.errors import ConfigError
from tunelab.module import TransformerModule
from tunelab.tasks import get_task

LM = ["data=tiny_shakespeare", "model=gpt2_tiny", "loss=next_token_cross_entropy"]


def tiny_config(model_type: str, num_labels: int = 2) -> transformers.PretrainedConfig:
    if model_type == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                       num_labels=num_labels, pad_token_id=0)  # fmt: skip
    return transformers.BertConfig(vocab_size=VOCAB, num_labels=num_labels, **TINY)


@pytest.mark.parametrize(
    "model_type,task",
    [("gpt2", "causal_lm"), ("gpt2", "classification"), ("bert", "classification"), ("bert", "regression"),
     ("bert", "token_classification")],
)  # fmt: skip
def test_check_agrees_with_what_peft_does(model_type: str, task: str) -> None:
    """prefix_tuning_refusal is None exactly when peft's prefix tuning runs this model for this task, and
    then the prefix really reaches the model (the logits change), not dropped into **kwargs."""
    t = get_task(task)
    config = tiny_config(model_type, num_labels=1 if task == "regression" else 3)
    refusal = peft_adapters.prefix_tuning_refusal(config, t)
    torch.manual_seed(0)
    model = getattr(transformers, t.auto_model).from_config(config).eval()
    ids = torch.randint(1, VOCAB, (2, 8))
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    wrapped = peft.get_peft_model(model, peft.PrefixTuningConfig(task_type=t.peft_task_type, num_virtual_tokens=4))
    with torch.no_grad():
        wrapped.prompt_encoder.default.embedding.weight.normal_()  # a prefix that must show in the output
    try:
        with torch.no_grad():
            prefixed = wrapped(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    except ValueError as e:
        assert refusal is not None, f"the check allows what peft refuses: {e}"
        assert "\n" not in refusal and "use peft=lora" in refusal
        return
    assert refusal is None, f"the check refuses what peft runs: {refusal}"
    assert prefixed.shape == plain.shape and not torch.allclose(prefixed, plain)


def test_past_key_values_target_follows_the_rename() -> None:
    """The argument a past_key_values= keyword reaches: the name itself, transformers' deprecated alias
    (past_key_values -> cache), or none at all (swallowed by **kwargs)."""

    def old(self, input_ids=None, past_key_values=None): ...

    @deprecate_kwarg("past_key_values", "99.0.0", new_name="cache")
    def renamed(self, input_ids=None, cache=None, **kwargs): ...

    @deprecate_kwarg("head_mask", "99.0.0", new_name="mask")
    def other_alias(self, input_ids=None, mask=None, **kwargs): ...

    def swallowed(self, input_ids=None, cache=None, **kwargs): ...

    target = peft_adapters._past_key_values_target
    assert (target(old), target(renamed), target(other_alias), target(swallowed)) == ("past_key_values", "cache", None, None)


def test_gpt2_prefix_passes_validation(tmp_path: Path) -> None:
    """The reported bug: peft=prefix was refused for GPT-2 causal LM too."""
    cfg = compose_cfg(tmp_path, *LM, "peft=prefix")
    assert peft_adapters._hf_config(cfg.model) is not None  # so validate really checked the model
    peft_adapters.validate(cfg)


@pytest.mark.parametrize("fast", [True, False])  # the tiny BERT of debug=quick; the default MiniLM
def test_encoder_classification_refused_in_one_line(tmp_path: Path, fast: bool) -> None:
    with pytest.raises(ConfigError) as e:
        peft_adapters.validate(compose_cfg(tmp_path, "peft=prefix", fast=fast))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("peft=prefix ") and "bert models for classification" in msg
    assert "past_key_values" in msg and "use peft=lora" in msg
    if "past_key_values" not in inspect.signature(transformers.BertModel.forward).parameters:  # renamed: versions
        assert f"peft {peft.__version__}" in msg and f"transformers {transformers.__version__}" in msg


def test_only_the_prefix_trains(tmp_path: Path) -> None:
    module = make_module(tmp_path, "causal_lm", "prefix")
    named = dict(module.model.named_parameters())
    prefix = [n for n, p in named.items() if p.requires_grad]
    assert prefix and all("prompt_encoder" in n for n in prefix)
    module.model(**next(iter(batches("causal_lm")))).loss.backward()
    assert all(named[n].grad.abs().sum() > 0 for n in prefix)
    assert all(p.grad is None for n, p in named.items() if n not in prefix)
    module.model.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in named.items()}
    fit(module, "causal_lm", max_steps=3)
    assert all(not torch.equal(before[n], named[n]) for n in prefix)
    assert all(torch.equal(before[n], p) for n, p in named.items() if n not in prefix)


def test_prefix_adapter_saves_and_reloads_to_the_same_logits(tmp_path: Path) -> None:
    task = get_task("causal_lm")
    base_dir = tmp_path / "base"
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(tiny_config("gpt2")).save_pretrained(base_dir)
    cfg = OmegaConf.create({"peft": {"name": "prefix", "_target_": "peft.PrefixTuningConfig", "num_virtual_tokens": 4,
                                     "save_adapter": True}, "paths": {"output_dir": str(tmp_path / "run")}})  # fmt: skip
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(base_dir)  # noqa: E731
    model = peft_adapters.apply_peft(load(), cfg.peft, task)
    with torch.no_grad():
        model.prompt_encoder.default.embedding.weight.normal_()
    adapter = peft_adapters.save_adapter(model, cfg)
    reloaded = peft_adapters.apply_peft(load(), {"adapter_path": str(adapter)}, task)
    ids = torch.randint(1, VOCAB, (2, 8))
    out = [m.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.detach() for m in (model, reloaded)]
    torch.testing.assert_close(out[1], out[0])
    assert not torch.allclose(out[0], load().eval()(input_ids=ids).logits.detach())  # the prefix counts


def test_gpt2_prefix_pipeline_run_loss_falls_saves_and_tests(run_cfg) -> None:
    """train.py's path: gpt2_tiny + peft=prefix on the tiny-shakespeare fixture, 20 steps."""
    metrics, run_dir = run_cfg(*LM, "peft=prefix", "data.block_size=32", "data.batch_size=16", "trainer.max_steps=20",
                               "trainer.log_every_n_steps=1", "trainer.limit_val_batches=2",
                               "trainer.limit_test_batches=2")  # fmt: skip
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 20 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    assert math.isfinite(metrics["test/loss"]) and 0 < metrics["params/trainable_ratio"] < 0.05
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    reloaded = TransformerModule.load_from_checkpoint(ckpt, map_location="cpu").model
    assert isinstance(reloaded, peft.PeftModel) and reloaded.active_peft_config.peft_type == peft.PeftType.PREFIX_TUNING


def test_generate_samples_are_skipped_under_prefix_tuning_because_generation_drops_the_prefix(caplog) -> None:
    """Why: with the installed transformers + peft, generate() ignores the prefix that the forward pass uses.
    So callbacks.generate logs no samples (they would be the base model's) and says why, once."""
    from types import SimpleNamespace

    from tunelab.callbacks import GenerateSample, generation_drops_the_prefix

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(tiny_config("gpt2")).eval()
    wrapped = peft.get_peft_model(model, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        wrapped.prompt_encoder.default.embedding.weight.normal_(std=5.0)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        generated = wrapped.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        @torch.no_grad()
        def greedy(forward) -> torch.Tensor:  # greedy decoding by repeated forward passes
            out = ids
            for _ in range(6):
                out = torch.cat([out, forward(input_ids=out).logits[:, -1:].argmax(-1)], 1)
            return out

        base = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(base, greedy(model))  # generate() is greedy decoding for the plain model
    assert not torch.equal(generated, greedy(wrapped))  # but not with the prefix training uses: the limitation
    assert generation_drops_the_prefix(wrapped) and not generation_drops_the_prefix(model)

    callback = GenerateSample()
    module = SimpleNamespace(task=get_task("causal_lm"), model=wrapped)
    trainer = SimpleNamespace(sanity_checking=False)
    with caplog.at_level("WARNING", logger="tunelab.callbacks"):
        callback.on_validation_epoch_end(trainer, module)
        callback.on_validation_epoch_end(trainer, module)
    assert callback.samples == []
    assert sum("logs no samples under peft=prefix" in r.message for r in caplog.records) == 1
