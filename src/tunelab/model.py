"""Build the Hugging Face model for a task from conf/model/*.yaml (offline, local paths)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import transformers
from torch import nn

from tunelab.errors import ConfigError
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
        return transformers.AutoConfig.for_model(arch.pop("model_type"), **arch, **extra)
    try:
        return transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=remote, **extra)
    except (OSError, ValueError) as err:
        if not Path(str(path)).exists():
            raise ConfigError(f"model not found at {path!r} (offline: only local paths work); set model.name_or_path "
                              "to a local model directory, or use model=minilm / model=tiny.") from err
        if "trust_remote_code" in str(err):  # config.json's auto_map names model code shipped in the dir
            raise ConfigError(f"{path} ships its own model code (config.json auto_map): pass "
                              "model.trust_remote_code=true to run it.") from None
        raise ConfigError(f"{path}/config.json is not a usable model config: {str(err).splitlines()[0]}") from None


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
        use_compile_cache(cfg.get("compile_cache_dir"))
        backend = compile_backend(cfg)
        # the cudagraphs backend replays the graph it recorded for the first shape on every later one
        # (pytorch#131009): one static graph per length bucket (validation refuses compile_dynamic=true)
        dynamic = False if backend == "cudagraphs" else cfg.get("compile_dynamic")
        if dynamic is False:
            # one specialised graph per length bucket (and per last-batch size): dynamo's default limit of
            # 8 recompiles would silently drop the model back to eager after the 8th shape
            _raise_recompile_limit(64)
        else:
            # a first batch whose length equals its size (16 x 16) would make dynamo's duck shaping give both
            # dims one symbol, and the next length recompile the whole model
            import torch.fx.experimental._config as fx_config

            fx_config.use_duck_shape = False
        # the model's float attributes (dropout p, LayerNorm eps, attention scaling) are constants: traced
        # as symbols (dynamo's default under dynamic shapes), they make dynamo trace the whole step and
        # build its joint graph once, then throw both away and start again specialised
        torch._dynamo.config.specialize_float = True
        # in place (nn.Module.compile): parameter names, hence checkpoints, stay those of the eager model
        mode = cfg.get("compile_mode") if backend == "inductor" else None  # modes are inductor's
        for target in compile_targets(model, cfg):
            target.compile(dynamic=dynamic, mode=mode, backend=backend)


def compile_targets(model: nn.Module, cfg: Mapping[str, Any]) -> list[nn.Module]:
    """What model.compile_scope compiles: the whole model (one graph: most fusion, one CUDA graph per
    step and direction), or each transformer layer (regional compilation: the layers share one compiled
    graph, so compiling costs about one layer's; embeddings, head and loss run eager between them)."""
    if cfg.get("compile_scope") == "layers":
        return list(transformer_layers(model, "model.compile_scope=layers"))
    return [model]


def use_compile_cache(directory: str | None) -> None:
    """Keep inductor's on-disk caches (FX graphs, AOT autograd graphs, Triton kernels) in `directory`:
    the next run, or a sweep's next job, loads each compiled graph instead of compiling it again
    (about 30 s per BERT-base graph on a GPU). None leaves torch's own default (a per-user temp dir)."""
    if not directory:
        return
    import torch._functorch.config
    import torch._inductor.config

    # read by inductor at each cache lookup, and passed on to its compile worker processes
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(directory).expanduser().resolve())
    for config, name in ((torch._inductor.config, "fx_graph_cache"), (torch._functorch.config, "enable_autograd_cache")):
        if hasattr(config, name):  # both on by default in recent torch; older ones lack the AOT cache
            setattr(config, name, True)


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(config, name, max(getattr(config, name), limit))


def compile_backend(model_cfg: Mapping[str, Any]) -> str:
    return model_cfg.get("compile_backend") or "inductor"


def uses_cuda_graphs(model_cfg: Mapping[str, Any]) -> bool:
    """torch.compile settings that replay CUDA graphs (inductor's reduce-overhead / max-autotune modes, or
    the cudagraphs backend): each step must be marked so a replay may reuse the previous step's output
    memory (torch.compiler.cudagraph_mark_step_begin)."""
    if not model_cfg.get("compile"):
        return False
    if compile_backend(model_cfg) == "cudagraphs":
        return True
    return str(model_cfg.get("compile_mode") or "") in {"reduce-overhead", "max-autotune"}


def takes_token_types(config: transformers.PretrainedConfig) -> bool:
    """Whether the model has a token type (segment) embedding to feed a text pair's type ids to: BERT's has two
    rows; RoBERTa's one (a second segment's id 1 is out of range), and GPT-2 would add them as word embeddings."""
    return (getattr(config, "type_vocab_size", 0) or 0) > 1


def transformer_layers(model: nn.Module, option: str = "model.freeze_layers") -> nn.ModuleList:
    """The stack of transformer blocks (BERT's encoder.layer, GPT-2's h, ...): the longest ModuleList.
    `option` names the setting that needs them, for the error when there is none or there are two (an
    encoder-decoder's: T5's longest list is a block's sub-layers, BART's the encoder alone)."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError(f"{option} needs one stack of transformer layers; {model.config.model_type} is an "
                          "encoder-decoder with two: leave it unset for this model.")
    layers = max((m for m in model.base_model.modules() if isinstance(m, nn.ModuleList)), key=len, default=None)
    if not layers:
        raise ConfigError(f"{option} needs a model with a stack of transformer layers: leave it unset for this model.")
    return layers


def layer_depth(model: nn.Module, option: str) -> tuple[dict[nn.Parameter, int], int]:
    """Each parameter's depth, and the top one: 0 for the embeddings (what comes before the transformer layers, and
    the backbone's embedding tables registered after them: DeBERTa's relative positions), i + 1 for layer i, the top
    (len(layers) + 1) for what comes after (final norm, pooler, head). An output layer tied to the input embeddings
    is the embedding parameter."""
    layers = transformer_layers(model, option)
    in_layer = {p: i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
    tables = {p for name, m in model.base_model.named_modules() if "embed" in name.rsplit(".", 1)[-1].lower()
              for p in m.parameters()}  # not GPT-NeoX's embed_out: an output layer outside the backbone
    top, past_layers, depths = len(layers) + 1, False, {}
    for p in model.parameters():  # registration order: embeddings, the layers, then the head
        depth = in_layer.get(p)
        past_layers = past_layers or depth is not None
        depths[p] = depth if depth is not None else top if past_layers and p not in tables else 0
    return depths, top


