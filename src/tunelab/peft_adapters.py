"""Parameter-efficient fine-tuning (conf/peft/*.yaml) with the `peft` library: check the settings
before anything loads, wrap the task model in a PeftModel with its head kept trainable, and save /
merge / reload adapters (AdaLoRA's schedule: tunelab.adalora). Named peft_adapters so that it never
shadows the `peft` package."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

import transformers
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import nn

from tunelab import run_layout as layout
from tunelab import sweeps
from tunelab.checkpoints import ADAPTER_HPARAMS
from tunelab.data.tokenizing import save_tokenizer
from tunelab.errors import ConfigError
from tunelab.model import model_config, takes_token_types
from tunelab.tasks import Task, get_task
from tunelab.tested_data import input_length

log = logging.getLogger(__name__)

# the module's hyper-parameters saved beside an adapter: what its base model + adapter are tested with
ADAPTER_HPARAM_KEYS = ("task", "model", "label_names", "class_counts", "label_info", "loss")
# what is written after training, not what trains: a resumed run may change them (resuming)
EXPORT_KEYS = frozenset({"save_adapter", "merge_on_save"})
# conf/peft keys that are tunelab's, not fields of the peft config class: every adapter's, and one adapter's own
TUNELAB_KEYS = frozenset({"name", "save_adapter", "merge_on_save", "adapter_path", "target_modules_by_model_type"})
ADAPTER_KEYS = {"adalora": frozenset({"tinit_ratio", "tfinal_ratio"}),
                "ia3": frozenset({"feedforward_modules_by_model_type"})}


def tunelab_keys(name: str | None) -> frozenset[str]:
    """The tunelab keys of the adapter option `name` (peft.name; None: peft=none)."""
    return TUNELAB_KEYS | ADAPTER_KEYS.get(str(name), frozenset())


def _peft():
    """peft, imported on first use: ~0.3 s of start-up that runs without an adapter never pay."""
    import peft

    return peft


def is_peft_model(model: nn.Module) -> bool:
    peft = sys.modules.get("peft")  # never imported -> no PeftModel can exist
    return peft is not None and isinstance(model, peft.PeftModel)


def enabled(cfg: Mapping[str, Any] | None) -> bool:
    return bool(cfg) and bool(cfg.get("_target_") or cfg.get("adapter_path"))


# ---- before anything loads -------------------------------------------------------------------------


def validate(cfg: DictConfig) -> None:
    """ConfigError for peft settings that cannot work with this model / task (reads only config.json)."""
    peft_cfg = cfg.get("peft")
    if not enabled(peft_cfg) and cfg.get("train"):  # on the command line: an experiment's stay behind on peft=none
        for key in ("save_adapter", "merge_on_save"):
            if (peft_cfg or {}).get(key) and f"peft.{key}" in sweeps.job_keys():
                raise ConfigError(f"peft.{key}=true saves an adapter, but peft=none trains none: choose an adapter "
                                  "(peft=lora, ...) or drop it.")
    if not enabled(peft_cfg) or not peft_cfg.get("_target_"):
        return
    name = peft_cfg.get("name", "?")
    # the adapter freezes the whole base model already (a sweep over peft=none,lora means the freeze for the none job)
    for key in ("freeze_layers", "freeze_embeddings"):
        if cfg.model.get(key) and cfg.get("train") and not sweeps.varies("peft"):
            raise ConfigError(f"model.{key} freezes base weights, which peft={name} freezes all of already (its "
                              f"adapters train on every layer): drop model.{key}.")
    if peft_cfg.get("target_r") is not None and peft_cfg.get("target_r") > peft_cfg.get("init_r", float("inf")):
        raise ConfigError(f"peft.target_r={peft_cfg.target_r} is more than peft.init_r={peft_cfg.init_r}: AdaLoRA "
                          "prunes each module's rank from init_r down to target_r.")
    prompt_style = issubclass(get_class(peft_cfg._target_), _peft().PromptLearningConfig)
    if peft_cfg.get("merge_on_save") and prompt_style:
        raise ConfigError(
            f"peft={name} adds virtual tokens, not weights, so it cannot be merged; drop peft.merge_on_save "
            "or use peft=lora."
        )
    if peft_cfg.get("save_adapter") and cfg.model.get("from_scratch"):
        raise ConfigError(
            "peft.save_adapter=true needs a pretrained base to load the adapter onto, but model.from_scratch=true "
            "initialises it randomly; drop peft.save_adapter (the Lightning checkpoint holds everything)."
        )
    if cfg.model.get("from_scratch"):
        log.warning("peft=%s adapts a randomly initialised model (model.from_scratch=true): only the adapter and "
                    "head train, on frozen random weights; compare adapters on a pretrained model", name)
    hf_config = _hf_config(cfg.model)
    if hf_config is None:
        return  # build_model reports a missing model
    task = get_task(cfg.data.task)
    if prompt_style and (why := prefix_tuning_refusal(hf_config, task)):
        raise ConfigError(f"peft={name} {why}")
    for key in ("target_modules", "feedforward_modules"):
        defaults = peft_cfg.get(f"{key}_by_model_type") or {}
        known = hf_config.model_type in defaults or hf_config.model_type in _peft_defaults(peft_cfg, key)
        if key in peft_cfg and peft_cfg[key] is None and not known:
            raise ConfigError(
                f"peft={name} has no default {key} for model_type={hf_config.model_type}; set "
                f"peft.{key}=[...] (names of its linear layers, e.g. the attention projections)."
            )


def _peft_defaults(peft_cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """peft's own table of `key` per model_type for this method (LoRA, AdaLoRA, IA3), which peft applies to a
    model type the conf/peft table lacks (target_modules=None)."""
    method = get_class(peft_cfg["_target_"]).__name__.removesuffix("Config").upper()
    return getattr(importlib.import_module("peft.utils.constants"),
                   f"TRANSFORMERS_MODELS_TO_{method}_{key.upper()}_MAPPING", {})


def _hf_config(model_cfg: Mapping[str, Any]) -> transformers.PretrainedConfig | None:
    """The model's config (model.model_config); None if unusable: build_model reports that."""
    try:
        return model_config(model_cfg)
    except ValueError:  # ConfigError, or an unknown model_type
        return None


def prefix_tuning_refusal(hf_config: transformers.PretrainedConfig, task: Task) -> str | None:
    """Why peft's prefix tuning cannot run this model for this task: the rest of a one-line error message
    (None: it can). Mirrors what the installed peft does with its prefixes (peft/peft_model.py):
    PeftModelForCausalLM (and Seq2SeqLM) call the task model with `past_key_values=<cache>`; the
    classification / token / QA classes call the task model, or else its backbone, with it only if that
    forward's signature has a parameter named exactly `past_key_values`, and raise otherwise. transformers 5
    renamed the argument `cache`, keeping `past_key_values=` as a deprecated keyword alias for a while
    (until 5.40): that serves the first path but not the signature test of the second."""
    classes = []
    for auto in (getattr(transformers, task.auto_model), transformers.AutoModel):
        try:
            classes.append(auto._model_mapping[type(hf_config)])
        except KeyError:
            continue
    what = f"{hf_config.model_type} models for {task.name}"
    refused = (
        f"feeds its prefixes as past_key_values, which {what} do not accept; use peft=lora (or a decoder "
        "model such as GPT-2)."
    )
    if not classes:
        return refused
    if task.peft_task_type in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):  # peft passes them to the task model itself
        return None if _past_key_values_target(classes[0].forward) else refused
    if any("past_key_values" in inspect.signature(cls.forward).parameters for cls in classes):
        return None
    renamed = sorted({t for cls in classes if (t := _past_key_values_target(cls.forward))})
    if not renamed:
        return refused
    # the model would take the prefix cache under its new name, but peft looks for the old one
    return (
        f"cannot run {what} with peft {_peft().__version__} + transformers {transformers.__version__}: "
        f"peft feeds its prefixes to {task.peft_task_type} models only through a forward argument named "
        f"past_key_values, which transformers now calls {'/'.join(renamed)}; use peft=lora (prefix tuning "
        "works here for task causal_lm with a decoder such as GPT-2)."
    )


def _past_key_values_target(forward) -> str | None:
    """The parameter that a `past_key_values=` keyword reaches in `forward`: that name itself, the new
    name of a transformers `deprecate_kwarg("past_key_values", new_name=...)` alias, or None."""
    fn = forward
    while fn is not None:
        if "past_key_values" in inspect.signature(fn, follow_wrapped=False).parameters:
            return "past_key_values"
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ())) if hasattr(fn, "__code__") else {}
        old, new = (cells[k].cell_contents if k in cells else None for k in ("old_name", "new_name"))
        if old == "past_key_values" and new in inspect.signature(forward).parameters:
            return new
        fn = getattr(fn, "__wrapped__", None)
    return None


# ---- building the model ----------------------------------------------------------------------------


def apply_peft(model: nn.Module, cfg: Mapping[str, Any] | None, task: Task) -> nn.Module:
    """Wrap `model` as conf/peft says (unchanged for peft=none); `adapter_path` loads a saved adapter."""
    if cfg and cfg.get("adapter_path"):
        # is_trainable: the parameters its training run trained stay marked so, and an eval of the adapter reports
        # the params/* of an eval of the run's .ckpt (frozen, every count was 0); testing runs without gradients.
        # peft loads prompt-learning adapters (prefix) frozen only
        path = str(cfg["adapter_path"])
        trainable = not _peft().PeftConfig.from_pretrained(path).is_prompt_learning
        model = _peft().PeftModel.from_pretrained(model, path, is_trainable=trainable)
        name = f"adapter {cfg['adapter_path']}"
    elif enabled(cfg):
        peft_config = build_peft_config(cfg, model, task)
        try:
            model = _peft().get_peft_model(model, peft_config)
        except ValueError as err:  # peft's NoMatchingPeftModuleError: names that match no module
            if "target" not in str(err).lower():
                raise
            layers = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if type(m).__name__ in ("Linear", "Conv1D")})
            named = peft_config.target_modules
            if isinstance(named, str):  # peft reads one string as a regex over whole module paths
                named = f"{named!r} (one string: a regex matched against whole module paths; a list names modules)"
            else:
                named = sorted(named or [])
            raise ConfigError(f"peft.target_modules={named} matches no module of this {model.config.model_type} "
                              f"model; its linear layers: {', '.join(layers)}.") from None
        name = str(cfg.get("name"))
    else:
        name = "none"
    counts = parameter_counts(model)
    log.info(
        "peft=%s: %s trainable of %s parameters (%.3f%%)",
        name, f"{counts['params/trainable']:,}", f"{counts['params/total']:,}", 100 * counts["params/trainable_ratio"],
    )  # fmt: skip
    return model


def is_adalora(peft_cfg: Mapping[str, Any] | None) -> bool:
    """Whether the peft config is AdaLoRA's, whose rank budget a callback schedules (tunelab.adalora)."""
    target = (peft_cfg or {}).get("_target_")
    return bool(target) and issubclass(get_class(target), _peft().AdaLoraConfig)


def build_peft_config(cfg: Mapping[str, Any], model: nn.Module, task: Task) -> Any:
    """The peft config object (hydra-instantiated `_target_`) with tunelab's defaults filled in."""
    kwargs = {k: v for k, v in dict(cfg).items() if k not in tunelab_keys(cfg.get("name"))}
    model_type = model.config.model_type
    for key in ("target_modules", "feedforward_modules"):
        if key in kwargs and kwargs[key] is None:
            kwargs[key] = (cfg.get(f"{key}_by_model_type") or {}).get(model_type)
    if kwargs.get("modules_to_save") == "auto":
        kwargs["modules_to_save"] = task.trained_head(model) or None
    kwargs.setdefault("task_type", task.peft_task_type)
    if is_adalora(cfg):
        # provisional: the real schedule comes from the trainer at fit start (tunelab.adalora)
        kwargs.update(total_step=1, tinit=0, tfinal=0)
    return instantiate(kwargs, _convert_="all")


def parameter_counts(model: nn.Module) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"params/trainable": trainable, "params/total": total, "params/trainable_ratio": trainable / max(total, 1)}


# ---- saving and loading adapters ------------------------------------------------------------------


def save_adapter(model: nn.Module, cfg: DictConfig, tokenizer: Any = None,
                 hparams: Mapping[str, Any] | None = None) -> Path | None:
    """peft.save_adapter: <run dir>/adapter (adapter weights + head only, the tokenizer, and the module's `hparams`
    that testing it needs: task, base model, label names, label_info, loss). None when not asked for."""
    if not is_peft_model(model) or not (cfg.get("peft") or {}).get("save_adapter"):
        return None
    out = Path(cfg.paths.output_dir) / layout.ADAPTER_DIR
    model.save_pretrained(out)
    if hparams is not None:
        saved = {k: hparams.get(k) for k in ADAPTER_HPARAM_KEYS}
        (out / ADAPTER_HPARAMS).write_text(json.dumps(saved, indent=1, default=str))
    if tokenizer is not None:
        save_tokenizer(tokenizer, out, input_length(cfg), token_types=takes_token_types(model.config))  # all in one dir
    log.info("peft: saved %s", out)
    return out


def adapter_module_kwargs(kwargs: dict[str, Any], adapter_dir: str, trained: Mapping[str, Any] | None
                          ) -> dict[str, Any]:
    """TransformerModule arguments for evaluating a base model + a saved adapter: base model, label names,
    label_info and loss as `trained` (the adapter's saved hyper-parameters) says, else the config's."""
    saved = {k: trained[k] for k in ADAPTER_HPARAM_KEYS if k != "task" and trained and k in trained}
    return {**kwargs, **saved, "peft": {"adapter_path": str(Path(adapter_dir).resolve())}}
