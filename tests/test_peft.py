"""conf/peft: every adapter trains with every task, heads stay trainable, adapters save / reload /
merge to the same logits, and AdaLoRA's schedule runs at the right point of the Lightning loop."""

from __future__ import annotations

import json
import logging
import math
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import transformers
from omegaconf import OmegaConf
from peft import PeftModel
from torch.utils.data import DataLoader

from conftest import FIXTURES, ROOT, compose_cfg, read_metrics
from tunelab import peft_adapters
from tunelab.adalora import AdaLoraSchedule, regularization
from tunelab.errors import ConfigError
from tunelab.module import TransformerModule
from tunelab.pipeline import run

PEFT = sorted(p.stem for p in (ROOT / "conf" / "peft").glob("*.yaml"))
ADAPTERS = [p for p in PEFT if p != "none"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
VOCAB = 64


def test_all_options_exist() -> None:
    assert set(PEFT) == {"none", "lora", "adalora", "ia3", "prefix"}


# ---- helpers: a module trained by a bare Lightning Trainer on random token batches -------------------


def plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def make_module(tmp_path: Path, task: str, peft: str, *overrides: str, model_dir: Path | None = None) -> TransformerModule:
    """task=causal_lm: a 2-layer GPT-2 from a GPT2Config; otherwise a tiny random BERT with the task head."""
    loss = {"causal_lm": "next_token_cross_entropy", "token_classification": "token_cross_entropy"}.get(task, "cross_entropy")
    cfg = compose_cfg(tmp_path, f"loss={loss}", f"peft={peft}", *overrides)
    if model_dir is None:
        model_dir = tmp_path / f"base_{task}"
        if task == "causal_lm":
            config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2)
        else:
            config = transformers.BertConfig(vocab_size=VOCAB, **TINY)
        config.save_pretrained(model_dir)
    labels = [] if task == "causal_lm" else (["O", "B-x", "I-x"] if task == "token_classification" else ["neg", "pos"])
    return TransformerModule(
        model={"name_or_path": str(model_dir), "from_scratch": True},
        task=task,
        loss=plain(cfg.loss),
        optimizer={**plain(cfg.optimizer), "lr": 1e-2},
        scheduler=None,
        label_names=labels,
        vocab_size=VOCAB if task == "causal_lm" else None,
        peft=plain(cfg.peft),
    )


def batches(task: str, n: int = 4, size: int = 4, length: int = 12) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n * size):
        ids = torch.randint(1, VOCAB, (length,), generator=g)
        labels = {
            "causal_lm": ids,
            "token_classification": torch.randint(0, 3, (length,), generator=g),
            "classification": torch.randint(0, 2, (), generator=g),
        }[task]
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return DataLoader(rows, batch_size=size)


def fit(module: TransformerModule, task: str, callbacks=(), **trainer_kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks), **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=batches(task), val_dataloaders=batches(task, n=1))
    return trainer


# ---- every option x task -----------------------------------------------------------------------------


@pytest.mark.parametrize("peft", PEFT)
def test_classification_fast_dev_run(run_cfg, caplog, peft: str) -> None:
    """The real pipeline (tiny BERT, SST-2 fixture rows); prefix tuning is refused for BERT before loading."""
    if peft == "prefix":
        with pytest.raises(ConfigError, match="past_key_values.*use peft=lora"):
            run_cfg("trainer=debug", "peft=prefix")
        return
    with caplog.at_level(logging.INFO, logger="tunelab.peft_adapters"):
        metrics, _ = run_cfg("trainer=debug", f"peft={peft}")
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["test/loss"])
    # trainable / total parameters: logged at start and in metrics.json
    assert any(f"peft={peft}:" in r.message and "trainable of" in r.message for r in caplog.records)
    ratio = metrics["params/trainable_ratio"]
    assert ratio == 1.0 if peft == "none" else ratio < 0.05


@pytest.mark.parametrize("peft", PEFT)
def test_causal_lm_fast_dev_run(tmp_path: Path, peft: str) -> None:
    module = make_module(tmp_path, "causal_lm", peft)
    assert peft == "none" or isinstance(module.model, PeftModel)
    trainer = fit(module, "causal_lm", fast_dev_run=True)
    assert math.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))


@pytest.mark.parametrize("peft", ["lora", "ia3"])
@pytest.mark.parametrize("task", ["classification", "token_classification"])
def test_head_stays_trainable(tmp_path: Path, task: str, peft: str) -> None:
    """The new head (`classifier`) trains in full beside the adapter; the pretrained weights stay put."""
    module = make_module(tmp_path, task, peft)
    named = dict(module.model.named_parameters())
    head = [n for n in named if ".classifier.modules_to_save." in n]
    frozen = [n for n in named if "base_layer.weight" in n]  # the pretrained weights under the adapter
    assert head and frozen and all(named[n].requires_grad for n in head)
    before = {n: named[n].detach().clone() for n in head + frozen}
    fit(module, task, max_steps=2)
    assert all(not torch.equal(before[n], named[n]) for n in head)
    assert all(torch.equal(before[n], named[n]) for n in frozen)


def test_regression_with_lora(run_cfg) -> None:
    metrics, _ = run_cfg("trainer=debug", "peft=lora", "data=stsb", "loss=mse")
    assert math.isfinite(metrics["test/loss"]) and metrics["params/trainable_ratio"] < 0.05


def test_each_adapter_sets_its_lr_and_the_command_line_wins(tmp_path: Path) -> None:
    """conf/peft/*.yaml set optimizer.lr by composition, whatever optimizer is chosen; optimizer.lr on the
    command line overrides it through Hydra; peft=none keeps the optimizer's own lr."""
    lr = lambda *o: compose_cfg(tmp_path, *o).optimizer.lr  # noqa: E731
    assert lr("peft=lora") == lr("peft=lora", "optimizer=sgd") == 1e-3
    assert lr("peft=prefix") == 1e-2 and lr("peft=ia3") == 3e-3
    assert lr("peft=lora", "optimizer.lr=0.03") == lr("optimizer.lr=0.03", "peft=adalora") == 0.03
    assert lr("peft=none") == lr() != 1e-3


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["peft=prefix", "data=stsb", "loss=mse"], "past_key_values.*use peft=lora"),
        (["peft=prefix", "peft.merge_on_save=true"], "cannot be merged"),
        (["peft=lora", "peft.save_adapter=true"], "from_scratch"),
        # an architecture neither conf/peft's table nor peft's own knows (funnel): the modules must be named
        (["peft=lora", "model=hf", "model.name_or_path=FUNNEL"], r"model_type=funnel; set peft.target_modules"),
        (["peft=ia3", "model=hf", "model.name_or_path=FUNNEL", "peft.target_modules=[query]"],
         r"set peft.feedforward_modules"),
    ],
)
def test_config_errors_before_training(tmp_path: Path, overrides: list[str], match: str) -> None:
    transformers.FunnelConfig().save_pretrained(tmp_path / "funnel")
    with pytest.raises(ConfigError, match=match):
        peft_adapters.validate(compose_cfg(tmp_path, *(o.replace("FUNNEL", str(tmp_path / "funnel")) for o in overrides)))


# ---- saving, reloading, merging ----------------------------------------------------------------------


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("peft", ["lora", "adalora"])
def test_adapter_save_reload_merge_same_logits(run_cfg, cache_dir, pretrained_tiny_bert: Path, peft: str) -> None:
    """Train 4 steps with peft.save_adapter + merge_on_save; then the Lightning checkpoint, the adapter
    on the base, the merged model and `eval.py ckpt_path=<run>/adapter` all give the same outputs."""
    model_args = ["model=hf", f"model.name_or_path={pretrained_tiny_bert}"]
    train_args = ["trainer.max_steps=4", "data.train_limit=64", "data.batch_size=16", "peft.save_adapter=true",
                  "peft.merge_on_save=true"]  # fmt: skip
    if peft == "adalora":  # ranks re-allocated every step: the saved adapter is resized to its rank pattern
        train_args += ["peft.init_r=4", "peft.target_r=2", "peft.deltaT=1"]
    metrics, run_dir = run_cfg(*model_args, f"peft={peft}", *train_args)
    adapter, merged = run_dir / "adapter", run_dir / "merged"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not list(adapter.glob("model*.safetensors"))  # adapter only, no base weights
    assert adapter.stat().st_size < 10_000_000

    ckpt = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]  # what the run tested
    from_ckpt = TransformerModule.load_from_checkpoint(ckpt, map_location="cpu").model
    tokenizer = transformers.AutoTokenizer.from_pretrained(adapter)
    batch = dict(tokenizer(["a gripping , funny film", "dull and far too long"], padding=True, return_tensors="pt"))
    expected = logits(from_ckpt, batch)

    base = transformers.AutoModelForSequenceClassification.from_pretrained(pretrained_tiny_bert, num_labels=2)
    reloaded = PeftModel.from_pretrained(base, adapter)
    torch.testing.assert_close(logits(reloaded, batch), expected)
    plain_model = transformers.AutoModelForSequenceClassification.from_pretrained(merged)
    assert not isinstance(plain_model, PeftModel)
    torch.testing.assert_close(logits(plain_model, batch), expected, atol=1e-5, rtol=1e-4)
    assert plain_model.config.id2label == {0: "negative", 1: "positive"}  # pipelines answer label names
    assert not (run_dir / "hf_model").exists()  # adapter runs export through merge_on_save

    if peft == "lora":  # eval.py: base (cfg.model) + adapter dir gives the training run's test metrics
        cfg = compose_cfg(run_dir / "eval", *model_args, f"ckpt_path={adapter}", f"paths.data_dir={FIXTURES}",
                          "trainer.accelerator=cpu", config_name="eval", fast=False, cache=cache_dir)
        evaluated = run(cfg)
        assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-6)
        assert evaluated["test/acc"] == metrics["test/acc"]
        assert read_metrics(run_dir / "eval")["test/acc"] == metrics["test/acc"]


# ---- AdaLoRA in the Lightning loop ------------------------------------------------------------------


class StepProbe(pl.Callback):
    """Snapshots the adapter weights just before each optimizer step."""

    def __init__(self) -> None:
        self.before_step: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before_step = {n: p.detach().clone() for n, p in pl_module.named_parameters() if "lora_A" in n}


def test_adalora_allocates_after_optimizer_step_and_shrinks_ranks(tmp_path: Path, monkeypatch) -> None:
    steps = 12
    module = make_module(
        tmp_path, "classification", "adalora", "peft.init_r=4", "peft.target_r=1", "peft.deltaT=1",
        "peft.tinit_ratio=0.1", "peft.tfinal_ratio=0.25",
    )  # fmt: skip
    tuner = module.model.base_model
    probe, calls = StepProbe(), []
    allocate = tuner.rankallocator.update_and_allocate

    def spy(model, global_step, force_mask=False):
        named = dict(module.named_parameters())
        lora_a = {n: p for n, p in named.items() if "lora_A" in n}
        calls.append(
            {
                "step": global_step,
                "has_grads": all(p.grad is not None for p in lora_a.values())
                and any(p.grad.abs().sum() > 0 for p in lora_a.values()),
                "stepped": any(not torch.equal(probe.before_step[n], p) for n, p in lora_a.items()),
                "trainer_step": module.trainer.global_step,
            }
        )
        budget, pattern = allocate(model, global_step, force_mask)
        calls[-1]["budget"] = budget
        return budget, pattern

    monkeypatch.setattr(tuner.rankallocator, "update_and_allocate", spy)
    fit(module, "classification", callbacks=[probe, AdaLoraSchedule(tinit_ratio=0.1, tfinal_ratio=0.25)], max_steps=steps)

    conf = tuner.peft_config["default"]
    assert (conf.total_step, conf.tinit, conf.tfinal) == (steps, 1, 3)  # from trainer.estimated_stepping_batches
    # once per optimizer step, after optimizer.step() (weights moved) and before zero_grad (grads still there)
    assert [c["step"] for c in calls] == list(range(steps - conf.tfinal + 1))  # then the pattern is fixed
    assert all(c["has_grads"] and c["stepped"] for c in calls)
    assert all(c["trainer_step"] == c["step"] + 1 for c in calls)  # the 0-based index of the step just taken
    # the rank budget shrinks from init_r to target_r per matrix during the run
    init_bgt, target_bgt = tuner.rankallocator.init_bgt, tuner.rankallocator.target_bgt
    budgets = [c["budget"] for c in calls]
    assert budgets[0] == init_bgt > target_bgt == budgets[-1]
    assert budgets == sorted(budgets, reverse=True) and len(set(budgets)) > 2
    live = sum(int((p != 0).sum()) for n, p in module.model.named_parameters() if "lora_E" in n)
    assert live == target_bgt == sum(sum(v) for v in conf.rank_pattern.values())


def test_adalora_orthogonal_regularization_matches_peft(tmp_path: Path) -> None:
    """tunelab adds the same orthogonality penalty that peft adds to an HF-computed loss, to the training loss."""
    module = make_module(tmp_path, "classification", "adalora")
    peft_model = module.model
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.normal_()  # away from the orthogonal-ish init so the penalty is large
    batch = next(iter(batches("classification")))
    peft_model.eval()
    with torch.no_grad():
        with_reg = peft_model(**batch).loss  # peft: HF loss + orth_reg_weight * penalty
        plain_loss = peft_model.base_model.model(**batch).loss  # the HF model alone
    ours = regularization(peft_model)
    assert ours is not None and ours > 0
    torch.testing.assert_close(ours, with_reg - plain_loss, atol=1e-4, rtol=1e-4)
    assert regularization(make_module(tmp_path, "classification", "lora").model) is None


def test_adalora_resume_equals_uninterrupted_run(run_cfg) -> None:
    """Resuming mid-schedule restores AdaLoRA's rank allocator (importance EMAs, budget step) too: the
    resumed run ends with exactly the uninterrupted run's weights and rank pattern."""
    args = ("peft=adalora", "peft.init_r=4", "peft.target_r=1", "peft.deltaT=1", "peft.tinit_ratio=0.1",
            "peft.tfinal_ratio=0.25", "data.train_limit=96", "data.batch_size=16", "seed=3", "trainer.max_epochs=3")
    _, full = run_cfg(*args, "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.monitor=step",
                      "callbacks.model_checkpoint.mode=max")
    first_epoch = full / "checkpoints" / "best-epoch00-step000006.ckpt"  # 6 of 18 steps: budget still shrinking
    _, resumed = run_cfg(*args, f"ckpt_path={first_epoch}")
    load = lambda p: torch.load(p, map_location="cpu", weights_only=False)  # noqa: E731
    a, b, mid = (load(p)["state_dict"] for p in (full / "checkpoints" / "last.ckpt",
                                                   resumed / "checkpoints" / "last.ckpt", first_epoch))
    live = lambda sd: sum(int((v != 0).sum()) for k, v in sd.items() if "lora_E" in k)  # noqa: E731
    assert live(a) < live(mid), "the rank budget did not shrink after the resume point"
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume by {(a[k] - b[k]).abs().max()}"


def test_adalora_resumes_exactly_from_a_sigterm_checkpoint(run_cfg, monkeypatch) -> None:
    """A SIGTERM checkpoint is written after the step's rank update (AdaLoraSchedule runs before Resilience):
    written before it, the resumed run missed one importance update and ended with other weights and ranks."""
    from tunelab.errors import RunInterrupted
    from tunelab.resilience import Resilience

    args = ("peft=adalora", "peft.init_r=4", "peft.target_r=1", "peft.deltaT=1", "peft.tinit_ratio=0.1",
            "peft.tfinal_ratio=0.25", "data.train_limit=96", "data.batch_size=16", "seed=3", "trainer.max_epochs=2")
    _, full = run_cfg(*args)
    at_step = Resilience.on_train_batch_end

    def sigterm_at_step_4(self, trainer, *rest):
        if trainer.global_step == 4 and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM
        return at_step(self, trainer, *rest)

    monkeypatch.setattr(Resilience, "on_train_batch_end", sigterm_at_step_4)
    with pytest.raises(RunInterrupted) as stopped:
        run_cfg(*args)
    monkeypatch.undo()
    _, resumed = run_cfg(*args, f"ckpt_path={stopped.value.checkpoint}")
    load = lambda p: torch.load(p / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)  # noqa: E731
    a, b = load(full)["state_dict"], load(resumed)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume by {(a[k] - b[k]).abs().max()}"


@pytest.mark.parametrize("peft", ["lora", "adalora", "ia3"])
def test_token_classification_with_adapter_through_the_pipeline(run_cfg, peft: str) -> None:
    """NER + an adapter end to end (WNUT-17 fixture rows): the token head trains with the adapter,
    the entity metrics and per-type test report come out."""
    metrics, run_dir = run_cfg("data=wnut17", "loss=token_cross_entropy", f"peft={peft}", "trainer=debug",
                               "data.batch_size=8")
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["test/loss"])
    assert {"val/f1", "test/f1", "test/acc"} <= set(metrics)
    assert 0 < metrics["params/trainable_ratio"] < 0.5
    assert (run_dir / "test_report.json").is_file()


def test_an_adapter_run_says_where_its_reusable_model_is(run_cfg, caplog) -> None:
    """export=true promises a model to reuse; a PEFT run writes no hf_model and says which setting writes one."""
    with caplog.at_level(logging.WARNING, logger="tunelab.export"):
        _, run_dir = run_cfg("trainer=debug", "peft=lora")
    assert not (run_dir / "hf_model").exists()
    assert "peft=lora writes no hf_model (its model is the base plus an adapter): peft.merge_on_save=true" in caplog.text


def test_lora_on_an_architecture_without_a_table_entry_takes_peft_defaults_and_bad_names_are_one_line(
        tmp_path, run_cfg) -> None:
    """DeBERTa-v2 is not in conf/peft/lora.yaml's table: peft's own defaults apply (query_proj, value_proj).
    target_modules that name no module of the model are one line listing its linear layers."""
    from conftest import save_tiny_model

    deberta = save_tiny_model(tmp_path / "deberta", transformers.DebertaV2Config(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2))
    metrics, _ = run_cfg("model=hf", f"model.name_or_path={deberta}", "peft=lora", "trainer=debug")
    assert 0 < metrics["params/trainable_ratio"] < 1
    with pytest.raises(ConfigError) as err:
        run_cfg("model=hf", f"model.name_or_path={deberta}", "peft=lora", "peft.target_modules=[q_proj]",
                "trainer=debug")
    assert str(err.value).startswith("peft.target_modules=['q_proj'] matches no module of this deberta-v2 model; its "
                                     "linear layers: ")
    assert "query_proj" in str(err.value)
    with pytest.raises(ConfigError) as err:  # one string is peft's regex, not a list of its letters
        run_cfg("model=hf", f"model.name_or_path={deberta}", "peft=lora", "peft.target_modules=query_proj",
                "trainer=debug")
    assert str(err.value).startswith("peft.target_modules='query_proj' (one string: a regex matched against whole "
                                     "module paths; a list names modules) matches no module")



def test_a_merge_peft_cannot_do_leaves_the_runs_results(run_cfg, monkeypatch, caplog) -> None:
    """peft's merge fails for some method / architecture pairs (IA3 on RoBERTa: an AttributeError inside peft);
    the run's metrics.json and checkpoints are written all the same, and the log says what was not."""
    import peft.tuners.lora

    def unmergeable(self, *args, **kwargs):
        raise AttributeError("'Linear' object has no attribute 'is_feedforward'")

    monkeypatch.setattr(peft.tuners.lora.LoraModel, "merge_and_unload", unmergeable)
    with caplog.at_level(logging.ERROR, logger="tunelab.export"):
        _, run_dir = run_cfg("trainer=debug", "peft=lora", "peft.merge_on_save=true")
    assert (run_dir / "metrics.json").is_file() and not (run_dir / "merged").exists()
    assert "peft.merge_on_save: peft could not merge the adapter (AttributeError:" in caplog.text
