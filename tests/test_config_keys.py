"""A key that no code reads (a misspelled `+data.max_lenght=64`) is one line naming the fix before anything loads,
and no key that a shipped option sets is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from tunelab.errors import ConfigError
from tunelab.config_keys import ROOT_KEYS, check_keys
from tunelab.model import MODEL_KEYS
from tunelab.validation import validate

CONF = Path(__file__).resolve().parents[1] / "conf"
GPT2 = ["model=gpt2_tiny", "data=tiny_shakespeare", "loss=next_token_cross_entropy"]  # built from model.config


@pytest.mark.parametrize("overrides, message", [
    (["+data.max_lenght=64"], "unknown config key 'data.max_lenght': tunelab.data.TextDataModule takes no max_lenght; "
                              "did you mean data.max_length?"),
    (["data=conll2003", "loss=token_cross_entropy", "+data.label_all_subtoken=true"],
     "unknown config key 'data.label_all_subtoken': tunelab.data.TokenClassificationDataModule takes no "
     "label_all_subtoken; did you mean data.label_all_subtokens?"),
    (["+data.seed=3"],  # the run's seed is passed in: a data.seed would clash with it
     "data.seed is set by the run itself, from the root seed: drop data.seed."),
    (["+seeed=3"], "unknown config key 'seeed': the run config takes no seeed; did you mean seed?"),
    (["logger=wandb", "+logger.wandb.projct=x"],  # WandbLogger passes it on to wandb.init, which refused it late
     "unknown config key 'logger.wandb.projct': lightning.pytorch.loggers.WandbLogger takes no projct; did you mean "
     "logger.wandb.project?"),
    (["+oc=1"], "unknown config key 'oc': the run config takes no oc; its settings: callbacks, ckpt_path, data, "  # a
                "export, float32_matmul_precision, hydra, logger, loss, model, on_nan, optimized_metric, optimizer, "  # resolver
                "overwrite, paths, peft, plots, predict, scheduler, seed, tags, task_name, test, train, train_metrics, "
                "trainer."),
    (["+model.dropuot=0.2"], "unknown config key 'model.dropuot': the model config takes no dropuot; did you mean "
                             "model.dropout?"),
    (["+loss.label_smooting=0.1"], "unknown config key 'loss.label_smooting': tunelab.losses.CrossEntropyLoss takes no "
                                   "label_smooting; did you mean loss.label_smoothing?"),
    (["+trainer.max_epoch=2"], "unknown config key 'trainer.max_epoch': lightning.pytorch.Trainer takes no max_epoch; "
                               "did you mean trainer.max_epochs?"),
    (["peft=lora", "+peft.lora_alhpa=3"], "unknown config key 'peft.lora_alhpa': peft.LoraConfig takes no lora_alhpa; "
                                          "did you mean peft.lora_alpha?"),
    (["+peft.r=4"], "unknown config key 'peft.r': peft=none (choose peft=lora, adalora, ia3 or prefix for an adapter's "
                    "settings) takes no r; its settings: adapter_path, merge_on_save, modules_to_save, name, "
                    "save_adapter, target_modules_by_model_type."),
    (["peft=lora", "+peft.tinit_ratio=0.5"],  # AdaLoRA's own: LoRA trained without it
     "peft.tinit_ratio is a setting of peft=adalora, not of peft=lora: drop it, or choose peft=adalora."),
    (["+scheduler.num_warmup_steps=10"], "scheduler.num_warmup_steps is set by the run itself, from "
                                         "scheduler.warmup_steps or scheduler.warmup_ratio: drop "
                                         "scheduler.num_warmup_steps."),
    (["scheduler=none", "+scheduler.warmup_steps=5"],
     "unknown config key 'scheduler.warmup_steps': scheduler=none (choose scheduler=linear, cosine or "
     "constant_with_warmup for a schedule's settings) takes no warmup_steps; it has no settings."),
    (["callbacks=early_stopping", "+callbacks.early_stopping.patiance=2"],
     "unknown config key 'callbacks.early_stopping.patiance': lightning.pytorch.callbacks.EarlyStopping takes no "
     "patiance; did you mean callbacks.early_stopping.patience?"),
    (["+callbacks.early_stopping.patience=2"],  # callbacks=default has no early stopping to set
     "callbacks.early_stopping sets patience but names no _target_, so nothing builds it: choose the callbacks option "
     "that has early_stopping (callbacks=...), or add +callbacks.early_stopping._target_=<its class>."),
    # transformers keeps a field its architecture does not have without a word
    (["+model.config_overrides.hiden_dropout_prob=0.3"], "model.config_overrides.hiden_dropout_prob: BertConfig (bert) "
                                                         "has no field hiden_dropout_prob; did you mean "
                                                         "model.config_overrides.hidden_dropout_prob?"),
    (["+model.config_overrides.zzz=1"], "model.config_overrides.zzz: BertConfig (bert) has no field zzz: drop "
                                        "model.config_overrides.zzz."),
    ([*GPT2, "+model.config.n_layr=2"], "model.config.n_layr: GPT2Config (gpt2) has no field n_layr; did you mean "
                                        "model.config.n_layer?"),
    (["model.config_overrides.num_hidden_layers=-1"], "model.config_overrides.num_hidden_layers must be a whole number "
                                                      "of at least 0; got -1"),
    ([*GPT2, "model.config.n_head=0"], "model.config.n_head must be a whole number of at least 1; got 0"),
])
def test_a_key_no_code_reads_is_one_line_before_anything_loads(tmp_path, overrides, message) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(tmp_path, *overrides))
    assert str(err.value) == message


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_shipped_option_sets_only_keys_its_code_reads(tmp_path) -> None:
    """No false refusals: each option of each checked group, and every experiment, composes and passes."""
    overrides = [[f"{group}={name}"] for group in ("model", "loss", "trainer", "callbacks", "logger", "peft")
                 for name in _options(group)]
    overrides += [[f"data={name}"] for name in _options("data")]
    overrides += [[f"experiment={name}"] for name in _options("experiment")]
    # an experiment's settings of an entry the chosen option lacks stay behind unbuilt (sst2_minilm_gpu sets
    # callbacks.model_checkpoint.save_weights_only; callbacks=none has no model_checkpoint)
    overrides += [[f"experiment={name}", f"{group}={option}"] for name in _options("experiment")
                  for group in ("callbacks", "logger") for option in _options(group)]
    for override in overrides:
        check_keys(compose_cfg(tmp_path, *override, fast=False))
    roots = {"train": [], "eval": [], "predict": ["data.predict_file=x.csv"]}
    keys = set()
    for name, override in roots.items():
        cfg = compose_cfg(tmp_path, *override, config_name=name, fast=False)
        check_keys(cfg)
        keys |= set(cfg.keys())
        check_keys(compose_cfg(tmp_path, *override, "experiment=sst2_minilm_gpu", config_name=name, fast=False))
    assert keys == set(ROOT_KEYS)  # a root key added to a root config is named there too


def test_model_keys_are_the_keys_the_model_options_set() -> None:
    """MODEL_KEYS names what the model options define (a key added to conf/model but not there is refused)."""
    keys = set()
    for path in (CONF / "model").glob("*.yaml"):
        keys |= {str(k) for k in OmegaConf.load(path).keys() if k != "defaults"}
    assert keys == set(MODEL_KEYS)


def test_an_experiments_settings_of_a_schedule_or_adapter_switched_off_stay_behind_harmlessly(tmp_path) -> None:
    """experiment=sst2_minilm_lora peft=none (the full fine-tuning baseline) keeps the experiment's peft.r and
    save_adapter, and experiment=sst2_minilm scheduler=none its warmup_ratio: neither is the user's setting."""
    for overrides in (["experiment=sst2_minilm_lora", "peft=none"], ["experiment=sst2_minilm", "scheduler=none"]):
        validate(compose_cfg(tmp_path, *overrides, "model=tiny"))


@pytest.mark.parametrize("read", ["${mul:1e-4,${lr_scale}}", "${oc.select:lr_scale,1e-4}", "${..lr_scale}"])
def test_a_root_variable_an_interpolation_reads_is_no_unknown_key(tmp_path, read) -> None:
    """An experiment's own variable (sweep_optimizers' lr_scale) read by an interpolation: directly, through
    oc.select (with a default) or relatively. The last two were refused as unknown keys."""
    cfg = compose_cfg(tmp_path, "+lr_scale=2", f"optimizer.lr='{read}'")
    check_keys(cfg)
    assert cfg.optimizer.lr == pytest.approx(2e-4 if "mul" in read else 2)


def test_a_key_an_experiment_set_for_another_option_says_where_it_comes_from(tmp_path) -> None:
    """experiment=sst2_minilm_lora peft=ia3 (the same recipe, another adapter): LoRA's r was reported as if typed."""
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(tmp_path, "experiment=sst2_minilm_lora", "peft=ia3", "model=minilm", "~peft.lora_alpha"))
    assert str(err.value).startswith("unknown config key 'peft.r': peft.IA3Config takes no r; its settings: ")
    assert str(err.value).endswith(" It comes from experiment=sst2_minilm_lora, for another option: drop it with "
                                   "~peft.r.")


def test_an_experiments_own_variable_the_command_line_leaves_unread_is_no_unknown_key(tmp_path) -> None:
    """-m experiment=sweep_optimizers optimizer.lr=...: the experiment's lr_scale and optimizer_lr, read only by the
    optimizer.lr the command line replaces, were refused as keys the user never typed."""
    check_keys(compose_cfg(tmp_path, "experiment=sweep_optimizers", "optimizer.lr=1e-5"))
