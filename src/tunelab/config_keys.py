"""Every key a config group sets is one its code reads. Hydra's `+group.key=value` adds any key, so a misspelled
`+data.max_lenght=64` would train at the default length without a word; here it is one line naming the fix,
before anything loads. A group built by `hydra.utils.instantiate` takes the keyword arguments of its `_target_`
(a target that takes **kwargs, as W&B's logger does, takes anything); `model` takes model.MODEL_KEYS."""

from __future__ import annotations

import difflib
import inspect
import json
import re
from typing import Any, Iterable

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from tunelab.errors import ConfigError
from tunelab.model import MODEL_KEYS
from tunelab.peft_adapters import ADAPTER_KEYS, tunelab_keys
from tunelab.sweeps import job_keys

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
# what an interpolation reads: ${name}, ${name.key}, ${name[0]}, a relative ${..name}, and oc.select's /
# oc.deprecated's key (${oc.select:name,default}); not a resolver's own name (oc of ${oc.env:...}, mul of ${mul:...})
_REFERENCE = re.compile(r"\$\{\s*\.*([A-Za-z_]\w*)(?=\s*[.\[}])(?!(?:\.\w+)*\s*:)"
                        r"|\$\{\s*oc\.(?:select|deprecated)\s*:\s*\.*([A-Za-z_]\w*)")
# the root keys of train.yaml, eval.yaml and predict.yaml: the config groups and the run's own settings
ROOT_KEYS = frozenset({
    "model", "data", "loss", "optimizer", "scheduler", "trainer", "callbacks", "logger", "peft", "paths", "hydra",
    "task_name", "tags", "train", "test", "predict", "ckpt_path", "seed", "optimized_metric", "overwrite", "on_nan",
    "export", "plots", "train_metrics", "float32_matmul_precision",
})


def check_keys(cfg: DictConfig) -> None:
    """ConfigError for the first key of the root / model / data / loss / trainer / peft / a callback / a logger that
    its code does not read (optimizer and scheduler keys are checked by building them:
    optim.check_optimizer_settings)."""
    given = job_keys()
    # a root key beyond the known ones: an experiment's own variable (sweep_optimizers' lr_scale and optimizer_lr,
    # unread when the command line sets optimizer.lr itself) or a typed one, which an interpolation must read
    typed = {str(k) for k in cfg.keys() if str(k) in given} - ROOT_KEYS
    if typed:
        _check("", cfg, ROOT_KEYS | _interpolated_names(cfg), "the run config", {str(k) for k in cfg} - typed)
    if isinstance(cfg.get("model"), DictConfig):
        _check("model", cfg.model, MODEL_KEYS, "the model config")
    for group in ("data", "loss", "trainer", "peft"):
        node = cfg.get(group)
        if isinstance(node, DictConfig) and node.get("_target_"):
            if group == "peft":
                _check_other_adapters_keys(node)
            _check_target(group, node, tunelab_keys(node.get("name")) if group == "peft" else ())
    scheduler = cfg.get("scheduler")
    if isinstance(scheduler, DictConfig) and scheduler.get("_target_"):  # its own keys: checked by building it
        _check_passed_by_code("scheduler", scheduler)  # (optim.check_optimizer_settings)
    # scheduler=none / peft=none: an experiment's settings for the schedule or adapter it chose stay behind when the
    # command line switches them off (experiment=sst2_minilm_lora peft=none), harmless; the command line's own are not
    for group, accepted, choices in (
        ("scheduler", (), "scheduler=linear, cosine or constant_with_warmup for a schedule's settings"),
        ("peft", {*tunelab_keys(None), "modules_to_save"}, "peft=lora, adalora, ia3 or prefix for an adapter's settings"),
    ):
        node = cfg.get(group)
        if isinstance(node, DictConfig) and not node.get("_target_"):
            left = {k for k in node if f"{group}.{k}" not in given}
            _check(group, node, accepted, f"{group}=none (choose {choices})", left)
    for group in ("callbacks", "logger"):
        for name, entry in (cfg.get(group) or {}).items():
            if not isinstance(entry, DictConfig):
                continue  # null: an entry an option or the command line switched off
            if not entry.get("_target_"):
                if not any(f"{group}.{name}.{k}" in given for k in entry):  # an experiment's settings for an entry
                    continue  # the chosen option lacks (sst2_minilm_gpu callbacks=none): nothing builds it, harmless
                raise ConfigError(f"{group}.{name} sets {', '.join(map(str, entry.keys()))} but names no _target_, so "
                                  f"nothing builds it: choose the {group} option that has {name} ({group}=...), or "
                                  f"add +{group}.{name}._target_=<its class>.")
            _check_target(f"{group}.{name}", entry, ())


def _check_other_adapters_keys(node: DictConfig) -> None:
    for option, keys in ADAPTER_KEYS.items():
        for key in sorted(keys & set(node.keys())):
            if option != node.get("name"):
                raise ConfigError(f"peft.{key} is a setting of peft={option}, not of peft={node.get('name')}: drop it, "
                                  f"or choose peft={option}.")


def _interpolated_names(cfg: DictConfig) -> set[str]:
    """The root keys an interpolation reads: an experiment's own variables (sweep_optimizers' lr_scale, read by
    optimizer.lr's ${mul:...,${lr_scale}}) are read that way; a +key=... that nothing reads is a typo."""
    texts = [json.dumps(OmegaConf.to_container(cfg, resolve=False), default=str)]
    if HydraConfig.initialized():  # the job's config has no hydra node: its interpolations are read there
        texts.append(json.dumps(OmegaConf.to_container(HydraConfig.get(), resolve=False), default=str))
    return {name for text in texts for match in _REFERENCE.findall(text) for name in match if name}


def accepted_keys(target: Any) -> set[str] | None:
    """The keyword arguments `target` (a class or a function) takes, following **kwargs up a class's bases
    (TextDataModule passes its own on to BaseDataModule) and on to where a class sends them (_KWARGS_GO_TO); None
    where they end in **kwargs: anything goes."""
    names = _named_keys(target)
    forwarded = _KWARGS_GO_TO.get(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}")
    if names is None and forwarded:
        own = _named_keys(target, open_ended=True)
        through = accepted_keys(get_object(forwarded))
        return None if through is None else own | through
    return names


# classes whose **kwargs go to one function with a fixed signature: a typo there failed after the model had loaded
_KWARGS_GO_TO = {"lightning.pytorch.loggers.wandb.WandbLogger": "wandb.init"}


def _named_keys(target: Any, open_ended: bool = False) -> set[str] | None:
    """`target`'s own keyword arguments; None where they end in **kwargs, unless `open_ended` (then: the named ones)."""
    names: set[str] = set()
    owners = [c for c in target.__mro__ if "__init__" in vars(c)] if isinstance(target, type) else [target]
    for owner in owners:
        try:
            params = inspect.signature(owner.__init__ if isinstance(target, type) else owner).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature
            return None
        names |= {p.name for p in params if p.kind in _NAMED}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return names - {"self"}
    return names - {"self"} if open_ended else None


# arguments the run passes itself when it builds the group (a config key would clash with them), and from what
_PASSED_BY_CODE = {
    "data": {"tokenizer": "model.tokenizer", "seed": "the root seed"},
    "scheduler": {"num_warmup_steps": "scheduler.warmup_steps or scheduler.warmup_ratio",
                  "num_training_steps": "the trainer's length (trainer.max_steps / max_epochs)"},
    "trainer": {"callbacks": "callbacks=...", "logger": "logger=...",
                "use_distributed_sampler": "nothing: the datamodule's batch sampler shards batches across ranks"},
}


def _check_target(where: str, node: DictConfig, own: Iterable[str]) -> None:
    try:
        target = get_object(node._target_)
    except Exception:  # noqa: BLE001 - an unimportable target is reported where it is built, with its own fix
        return
    _check_passed_by_code(where, node)
    accepted = accepted_keys(target)
    if accepted is not None:
        _check(where, node, (accepted | set(own)) - _PASSED_BY_CODE.get(where, {}).keys(), node._target_)


def _check_passed_by_code(where: str, node: DictConfig) -> None:
    passed = _PASSED_BY_CODE.get(where, {})
    for key in sorted(passed.keys() & set(node.keys())):
        raise ConfigError(f"{where}.{key} is set by the run itself, from {passed[key]}: drop {where}.{key}.")


def _check(where: str, node: DictConfig, accepted: Iterable[str], owner: str, left: Iterable[str] = ()) -> None:
    """`left`: keys let through unnamed (an experiment's, behind an option the command line switched off)."""
    accepted = set(accepted)
    for key in node.keys():
        key = str(key)
        if key in accepted or key in left or (key.startswith("_") and key.endswith("_")):  # hydra's _target_, ...
            continue
        close = difflib.get_close_matches(key, sorted(accepted), n=1)
        prefix = f"{where}." if where else ""
        settings = f"its settings: {', '.join(sorted(accepted))}." if accepted else "it has no settings."
        fix = f"did you mean {prefix}{close[0]}?" if close else settings
        experiment = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
        if experiment and f"{prefix}{key}" not in job_keys():  # experiment=sst2_minilm_lora peft=ia3: LoRA's r
            fix += f" It comes from experiment={experiment}, for another option: drop it with ~{prefix}{key}."
        raise ConfigError(f"unknown config key '{prefix}{key}': {owner} takes no {key}; {fix}")
