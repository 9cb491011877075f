"""The typed config: every value users set, declared once with its type and range, checked before
anything heavy is imported (no torch / lightning / transformers here), so a wrong value is one line
naming the fix instead of a traceback deep inside training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tunelab.errors import ConfigError
from tunelab.schema_rules import (BATCHES, COUNT, COUNT_OR_NULL, DROPOUT, FLAG, FLAG_OR_NULL, FRACTION, NAMES,
                                  NON_NEGATIVE, POSITIVE, WEIGHTS, Rule, integer, is_int, number, one_of)

_ABSENT = object()


# Every user-set value the project reads, by dotted key. Keys a config does not define are skipped.
RULES: dict[str, Rule] = {
    "seed": Rule("int", low=0, high=2**32 - 1, label="an integer in [0, 4294967295]"),  # numpy's seed range
    "tags": NAMES,
    "ckpt_path": Rule("text", nullable=True),
    "train": FLAG,
    "test": FLAG,
    "overwrite": FLAG,
    "plots": FLAG,
    "train_metrics": FLAG,
    "export": FLAG,
    "predict": FLAG,
    "on_nan": one_of("stop", "skip", "off"),
    "float32_matmul_precision": one_of("highest", "high", "medium", nullable=True),
    # data
    "data.batch_size": COUNT,
    "data.eval_batch_size": COUNT_OR_NULL,
    "data.max_length": COUNT,
    "data.block_size": integer(2, label="an integer >= 2 (a token and its successor)"),
    "data.val_fraction": number(0, 1, open_low=True, open_high=True),  # 0 would still carve one row
    "data.test_fraction": number(0, 1, open_low=True, open_high=True),
    "data.split_seed": integer(),
    "data.train_limit": COUNT_OR_NULL,
    "data.num_workers": integer(0, nullable=True),
    "data.pin_memory": FLAG_OR_NULL,
    "data.group_by_length": FLAG,
    "data.pad_to_multiple_of": COUNT_OR_NULL,
    "data.drop_last": FLAG,
    "data.packing": FLAG,
    "data.token_column": integer(),
    "data.tag_column": integer(),
    "data.label_all_subtokens": FLAG,
    "data.text_column": Rule("text"),
    "data.label_column": Rule("text"),
    "data.label_names": Rule("names", nullable=True),
    "data.encoding": Rule("encoding"),
    "data.standardize_targets": FLAG,
    "data.label_separator": Rule("separator"),
    "data.delimiter": Rule("separator", nullable=True),  # null: any whitespace
    "data.threshold": number(0, 1, open_low=True, open_high=True, nullable=True),  # null: 0.5, or as trained
    "data.predict_file": Rule("text"),
    # callbacks
    "callbacks.progress_bar.metrics_every": COUNT,
    "callbacks.progress_bar.every_s": POSITIVE,
    "callbacks.garbage_collection.every_n_batches": COUNT,
    "callbacks.ema.multi_avg_fn.decay": number(0, 1, open_low=True, open_high=True),
    "callbacks.early_stopping.patience": integer(0),
    "callbacks.early_stopping.min_delta": NON_NEGATIVE,
    "callbacks.generate.max_new_tokens": COUNT,
    "callbacks.generate.temperature": POSITIVE,
    # model
    "model.from_scratch": FLAG,
    "model.trust_remote_code": FLAG,
    "model.dropout": number(0, 1, open_high=True, nullable=True),
    "model.freeze_embeddings": FLAG,
    "model.freeze_layers": integer(0),
    "model.gradient_checkpointing": FLAG,
    "model.compile": FLAG,
    "model.compile_dynamic": FLAG_OR_NULL,
    "model.compile_eval": FLAG,
    "model.compile_cache_dir": Rule("text", nullable=True),
    "model.pooling": one_of("mean", nullable=True),
    "model.compile_backend": one_of("inductor", "cudagraphs", "aot_eager", "eager"),
    "model.compile_scope": one_of("model", "layers"),
    "model.compile_mode": one_of("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs",
                                 nullable=True),
    # loss
    "loss.label_smoothing": number(0, 1, open_high=True),  # 1 would train toward uniform targets: nothing
    "loss.gamma": NON_NEGATIVE,
    "loss.delta": POSITIVE,
    "loss.beta": NON_NEGATIVE,
    "loss.scale_k": POSITIVE,
    "loss.scale_m": POSITIVE,
    "loss.class_weights": WEIGHTS,
    "loss.pos_weight": WEIGHTS,
    # optimizer (Adafactor with relative_step takes lr=null)
    "optimizer.lr": number(0, open_low=True, nullable=True),
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": number(0, 1, open_high=True),  # 1 or more: the updates grow without bound
    "optimizer.nesterov": FLAG,
    "optimizer.layer_decay": number(0, 1, open_low=True, nullable=True),
    # scheduler
    "scheduler.warmup_ratio": FRACTION,
    "scheduler.warmup_steps": integer(0, nullable=True),
    # peft
    "peft.r": COUNT,
    "peft.lora_alpha": POSITIVE,
    "peft.lora_dropout": DROPOUT,
    "peft.init_r": COUNT,
    "peft.target_r": COUNT,
    "peft.tinit_ratio": FRACTION,
    "peft.tfinal_ratio": FRACTION,
    "peft.deltaT": COUNT,
    "peft.num_virtual_tokens": COUNT,
    "peft.save_adapter": FLAG,
    "peft.merge_on_save": FLAG,
    # trainer (Lightning: -1 = no limit)
    "trainer.max_epochs": integer(-1, nullable=True),
    "trainer.min_epochs": integer(0, nullable=True),
    "trainer.max_steps": integer(-1),
    "trainer.num_nodes": COUNT,
    "trainer.devices": Rule("devices"),
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.gradient_clip_val": number(0, nullable=True),
    "trainer.gradient_clip_algorithm": one_of("norm", "value", nullable=True),
    "trainer.log_every_n_steps": integer(0, nullable=True, label="a number of steps (0: no per-step values)"),
    "trainer.check_val_every_n_epoch": COUNT_OR_NULL,
    "trainer.num_sanity_val_steps": integer(-1),
    "trainer.precision": one_of("16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true", "16", "32",
                                "64", "bf16", 16, 32, 64, "transformer-engine", "transformer-engine-float16",
                                nullable=True),
    "trainer.deterministic": one_of(True, False, "warn", nullable=True),
    "trainer.benchmark": FLAG_OR_NULL,
    "trainer.enable_progress_bar": FLAG_OR_NULL,
    "trainer.enable_model_summary": FLAG_OR_NULL,
    "trainer.enable_checkpointing": FLAG_OR_NULL,
    "trainer.fast_dev_run": Rule("bool_or_count"),
    "trainer.limit_train_batches": BATCHES,
    "trainer.limit_val_batches": BATCHES,
    "trainer.limit_test_batches": BATCHES,
    "trainer.overfit_batches": Rule("batches"),
    "trainer.val_check_interval": Rule("interval", nullable=True),
}


def check(cfg: DictConfig) -> None:
    """Raise ConfigError (one line naming the key, what it accepts and the value given) for the first
    value outside its declared type or range, then for lengths beyond the model's positions."""
    for key, rule in RULES.items():
        value = _value(cfg, key)
        if value is _ABSENT or (value is None and rule.nullable):
            continue
        if not rule.type_ok(value):
            raise ConfigError(f"{key} must be {rule.describe()}; got {_show(value)}{_text_number_hint(rule, value)}")
        if rule.kind in {"int", "number"} and not rule.range_ok(value):
            raise ConfigError(f"{key} must be {rule.label or rule.bounds()}; got {_show(value)}")
    _check_positions(cfg)


def _text_number_hint(rule: Rule, value: Any) -> str:
    """A number that arrives as text: ${oc.env:NAME} always gives a string."""
    if rule.kind not in {"int", "number"} or not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (text, not a number: ${oc.env:NAME} gives text; ${oc.decode:${oc.env:NAME}} reads it as a number)"


def _check_positions(cfg: DictConfig) -> None:
    """data.max_length (data.block_size for causal LM) must fit the model's position embeddings."""
    model = _value(cfg, "model")
    positions = model_positions(model) if isinstance(model, Mapping) else None
    if positions is None:
        return
    for key in ("data.max_length", "data.block_size"):
        length = _value(cfg, key)
        if isinstance(length, int) and length > positions:
            raise ConfigError(f"{key}={length} exceeds the model's {positions} positions; set {key}={positions} "
                              "or lower.")


POSITION_KEYS = ("max_position_embeddings", "n_positions")
# model types that number positions from pad_token_id + 1 (transformers' create_position_ids_from_input_ids)
POSITIONS_AFTER_PAD = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text",
                                 "roberta-prelayernorm", "xmod", "ibert", "mpnet", "esm"})


def usable_positions(config: Mapping[str, Any]) -> int | None:
    """How many tokens a model with this config embeds: max_position_embeddings / n_positions, less the positions
    RoBERTa-style models skip (roberta-base's 514 hold 512 tokens). None when the config does not say."""
    positions = next((config[key] for key in POSITION_KEYS if is_int(config.get(key))), None)
    if positions is not None and config.get("model_type") in POSITIONS_AFTER_PAD:
        positions -= (config.get("pad_token_id") if is_int(config.get("pad_token_id")) else 1) + 1
    return positions


def model_positions(model: Mapping[str, Any]) -> int | None:
    """Positions the model embeds: model.config_overrides, else the from-scratch architecture in
    model.config (name_or_path null), else config.json in the model.name_or_path directory. None when
    none of them says."""
    path = model.get("name_or_path")
    base = model.get("config") or {} if path is None else _config_json(Path(str(path)) / "config.json")
    overrides = model.get("config_overrides") or {}
    if not isinstance(base, Mapping) or not isinstance(overrides, Mapping):
        return None
    return usable_positions({**base, **overrides})


def _config_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a missing / unreadable model dir is reported when the model loads
    return data if isinstance(data, dict) else {}


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at `key`, or _ABSENT when the config does not define it (or leaves it ???)."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException:
        return _ABSENT  # an interpolation that does not resolve is reported where it is used
    return value


def _show(value: Any) -> str:
    """The value as the user wrote it on the command line."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value) if isinstance(value, str) else str(value)
