"""Build the Hugging Face model for a task from conf/model/*.yaml (offline, local paths)."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import transformers
from torch import nn

from tunelab.compiling import compile_model
from tunelab.errors import ConfigError
from tunelab.layers import layer_depth, transformer_layers
from tunelab.mean_pooling import POOLING, BertMeanPoolingForSequenceClassification
from tunelab.tasks import Task

log = logging.getLogger(__name__)


# every model.* key the code reads (conf/model/hf.yaml sets each of them; gpt2_tiny.yaml adds `config`, the
# architecture of a model built from scratch): config_keys refuses any other
MODEL_KEYS = frozenset({
    "name_or_path", "tokenizer", "from_scratch", "config", "config_overrides", "trust_remote_code", "pooling", "dropout",
    "freeze_embeddings", "freeze_layers", "gradient_checkpointing", "compile", "compile_dynamic", "compile_scope",
    "compile_mode", "compile_backend", "compile_eval", "compile_cache_dir",
})

# how the model runs, not what it computes: a resumed run may change them (resuming)
RUNTIME_KEYS = frozenset({k for k in MODEL_KEYS if k.startswith("compile")} | {"gradient_checkpointing"})

# the config attributes architectures take their dropout rates from (BERT, GPT-2, Llama / Qwen2, GPT-NeoX, ...)
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "hidden_dropout", "attention_dropout", "dropout",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "activation_dropout")


def build_model(model_cfg: Mapping[str, Any], task: Task, num_labels: int, vocab_size: int | None = None,
                pad_token_id: int | None = None, label_names: Sequence[str] = ()) -> nn.Module:
    """Load `model_cfg.name_or_path` with the task's head (or random init when from_scratch). `pad_token_id`: the
    batches' padding, which the config must name (GPT-2's sequence head finds each text's last token by it).
    A model fine-tuned for the task (an exported hf_model) keeps its head in `label_names`' order (Task.adopt_head);
    one with another number of labels gets a new head."""
    path = model_cfg.get("name_or_path")
    config = model_config(model_cfg, **task.model_head(num_labels))
    saved_pad = getattr(config, "pad_token_id", None)
    if pad_token_id is not None and saved_pad != pad_token_id:
        if saved_pad is not None:  # set for another tokenizer: a decoder's head would pool a padding position
            log.warning("model config says pad_token_id=%s, the batches are padded with %s (the tokenizer's): "
                        "the model takes %s", saved_pad, pad_token_id, pad_token_id)
        config.pad_token_id = pad_token_id
    if model_cfg.get("dropout") is not None:  # rates read at construction (Llama's attention has no nn.Dropout)
        for key in DROPOUT_KEYS:
            if type(getattr(config, key, None)) in (int, float):
                setattr(config, key, float(model_cfg["dropout"]))
    model_class = head_class(model_cfg, task, config)
    resize = vocab_size is not None and task.resizes_vocab
    embedded = getattr(config, "vocab_size", None)
    if vocab_size is not None and not resize and embedded is not None and vocab_size > embedded:
        raise ConfigError(f"the tokenizer has {vocab_size} tokens but the model embeds {embedded} "
                          f"(config.vocab_size): use the model's own tokenizer (model.tokenizer=null).")
    if model_cfg.get("from_scratch"):
        if resize:  # the embedding matrix is sized to the tokenizer the datamodule built / loaded
            config.vocab_size = vocab_size
        # Auto classes build through from_config, concrete model classes through _from_config
        model = (getattr(model_class, "from_config", None) or model_class._from_config)(config)
    else:
        # fp32 master weights whatever the checkpoint's dtype (transformers 5 loads "auto", so an fp16
        # checkpoint would train in pure fp16 and overflow); Lightning's precision plugin does mixed precision
        remote = bool(model_cfg.get("trust_remote_code"))  # a model dir's own code (auto_map) runs only when asked
        saved = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=remote)  # its head as saved
        new_head = saved.num_labels != config.num_labels
        try:
            model = model_class.from_pretrained(str(path), config=config, dtype=torch.float32,
                                                ignore_mismatched_sizes=new_head, trust_remote_code=remote)
        except OSError as err:  # a config.json (and tokenizer) without weights
            raise ConfigError(f"no weights to load at {path} ({str(err).splitlines()[0]}); set "
                              "model.from_scratch=true to train this architecture from random weights.") from None
        head = task.auto_model.removeprefix("AutoModel")  # ForSequenceClassification: a head of this task's kind
        if new_head and any(a.endswith(head) for a in saved.architectures or ()):
            log.warning("%s has a head for %d labels; this run trains a new one for %d", path, saved.num_labels,
                        config.num_labels)
        elif not new_head:
            task.adopt_head(model, saved, label_names)
        if resize and vocab_size > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size)  # tokenizer grew (e.g. an added pad token)
    model.train()  # from_pretrained returns eval mode; Lightning toggles modes per stage after this
    _apply_options(model, model_cfg)
    return model


def head_class(model_cfg: Mapping[str, Any], task: Task, config: transformers.PretrainedConfig) -> type:
    """The class that puts the task's head on the model: the task's Auto class, or BERT with a mean-pooled
    head for model.pooling=mean (or for a model exported with it: its config.json says pooling: mean)."""
    pooling = model_cfg.get("pooling") or getattr(config, "pooling", None)
    if pooling != POOLING:
        return getattr(transformers, task.auto_model)
    if task.auto_model != "AutoModelForSequenceClassification":
        raise ConfigError(f"model.pooling=mean averages a text into one vector for a sequence head; data.task="
                          f"{task.name} has no such head: leave model.pooling unset.")
    if config.model_type != "bert":
        raise ConfigError(f"model.pooling=mean is built for BERT-style models (model_type bert), not "
                          f"{config.model_type}: leave model.pooling unset for this model.")
    return BertMeanPoolingForSequenceClassification


def check_head(model_cfg: Mapping[str, Any], task: Task) -> None:
    """The model can carry the task's head (transformers has that head for its architecture, and tunelab's
    pooling fits it): a ConfigError before the data and weights load, not a traceback after."""
    config = model_config(model_cfg)
    cls = head_class(model_cfg, task, config)
    mapping = getattr(cls, "_model_mapping", None)  # the Auto class's model types
    if mapping is not None and type(config) not in mapping:
        raise ConfigError(f"model_type {config.model_type} has no {task.name} head in transformers ({cls.__name__}); "
                          f"use a model that has one, or another task for this model.")


def model_config(model_cfg: Mapping[str, Any], **extra: Any) -> transformers.PretrainedConfig:
    """The model's config: config.json at model.name_or_path, or the from-scratch architecture described
    in the yaml (model.config = {model_type: gpt2, n_layer: 4, ...}), with model.config_overrides and
    `extra` (e.g. the task head's num_labels) applied. ConfigError (one line) if neither is usable."""
    path = model_cfg.get("name_or_path")
    extra = {**extra, **dict(model_cfg.get("config_overrides") or {})}
    remote = bool(model_cfg.get("trust_remote_code"))
    if path is None:
        arch = dict(model_cfg.get("config") or {})
        if not arch.get("model_type") or not model_cfg.get("from_scratch"):
            raise ConfigError(
                "model.name_or_path is null: set it to a local model directory, or describe the architecture in "
                "model.config (with model_type) and set model.from_scratch=true."
            )
        config = transformers.AutoConfig.for_model(arch.pop("model_type"), **arch, **extra)
        _check_fields(config, {**{f"model.config.{k}": k for k in arch}, **_override_keys(model_cfg)})
        return config
    try:
        config, unused = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=remote,
                                                                 return_unused_kwargs=True, **extra)
    except (OSError, ValueError) as err:
        if not Path(str(path)).exists():
            raise ConfigError(f"model not found at {path!r} (offline: only local paths work); set model.name_or_path "
                              "to a local model directory, or use model=minilm / model=tiny.") from err
        if "trust_remote_code" in str(err):  # config.json's auto_map names model code shipped in the dir
            raise ConfigError(f"{path} ships its own model code (config.json auto_map): pass "
                              "model.trust_remote_code=true to run it.") from None
        raise ConfigError(f"{path}/config.json is not a usable model config: {str(err).splitlines()[0]}") from None
    _check_fields(config, _override_keys(model_cfg), dropped=set(unused))
    return config


def _override_keys(model_cfg: Mapping[str, Any]) -> dict[str, str]:
    return {f"model.config_overrides.{k}": str(k) for k in model_cfg.get("config_overrides") or {}}


def _check_fields(config: transformers.PretrainedConfig, given: Mapping[str, str],
                  dropped: set[str] = frozenset()) -> None:
    """ConfigError for a field set by `given` (config key -> field) that the model will not read, or a size out of
    range. A loaded config drops a field it does not have (`dropped`: +model.config_overrides.hiden_dropout_prob
    trained at the checkpoint's dropout); a config built from scratch keeps any field (DeBERTa reads its optional
    position_buckets so), so there only a near-miss of a field it has is refused, as a typo."""
    try:
        defaults = type(config)()
    except Exception:  # a composite config (encoder-decoder) has no defaults of its own
        defaults = config
    fields = [*defaults.to_dict(), *defaults.attribute_map]
    standard = {v: k for k, v in defaults.attribute_map.items()}  # GPT-2's n_layer is num_hidden_layers
    for name, field in given.items():
        typo = difflib.get_close_matches(field, fields, n=1, cutoff=0.6 if field in dropped else 0.85)
        if field in dropped or (field not in fields and typo):
            hint = f"; did you mean {name.rsplit('.', 1)[0]}.{typo[0]}?" if typo else f": drop {name}."
            raise ConfigError(f"{name}: {type(config).__name__} ({config.model_type}) has no field {field}{hint}")
        least = _SIZES.get(standard.get(field, field))
        value = getattr(config, field, None)
        if least is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ConfigError(f"{name} must be a whole number of at least {least}; got {value!r}")


# the architecture's sizes and their least values (0 layers: the embeddings and the head alone, an ablation)
_SIZES = {"num_hidden_layers": 0, "num_attention_heads": 1, "hidden_size": 1, "intermediate_size": 1,
          "vocab_size": 1, "max_position_embeddings": 1, "num_key_value_heads": 1}


def _apply_options(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    if cfg.get("dropout") is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = float(cfg["dropout"])
    if cfg.get("freeze_embeddings"):  # token, position and type tables and their norm (GPT-2's wpe too)
        for p, depth in layer_depth(model, "model.freeze_embeddings")[0].items():
            if depth == 0:
                p.requires_grad_(False)
    n_frozen = int(cfg.get("freeze_layers") or 0)
    if n_frozen:
        layers = transformer_layers(model)
        if n_frozen > len(layers):
            applied = getattr(model.config, "num_hidden_layers", len(layers))
            shared = (f" (its {applied} layers share the weights of {len(layers)}, as ALBERT's do)"
                      if applied > len(layers) else "")
            raise ConfigError(f"model.freeze_layers={n_frozen} but the model has {len(layers)} layers{shared}; use at "
                              f"most {len(layers)}.")
        for layer in layers[:n_frozen]:
            layer.requires_grad_(False)
    if cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.get("compile"):
        compile_model(model, cfg)


def takes_token_types(config: transformers.PretrainedConfig) -> bool:
    """Whether the model has a token type (segment) embedding to feed a text pair's type ids to: BERT's has two
    rows; RoBERTa's one (a second segment's id 1 is out of range), and GPT-2 would add them as word embeddings."""
    return (getattr(config, "type_vocab_size", 0) or 0) > 1
