"""model.compile*: torch.compile of the model or its layers, the on-disk compile cache, and the settings' rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.layers import transformer_layers
from tunelab.sweeps import job_keys


def compile_model(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """torch.compile the model (or each transformer layer: model.compile_scope) in place, as model.compile_* say."""
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


def check_compile(model_cfg: Mapping[str, Any]) -> None:
    """ConfigError for compile settings that cannot work, before anything loads."""
    # a compile setting typed without compile=true would run eager without a word; one beside a typed
    # model.compile (-m model.compile=false,true: eager vs compiled) or an experiment's stays allowed
    given = job_keys()
    typed = sorted(k for k in given if k.startswith("model.compile_"))
    if typed and "model.compile" not in given and not model_cfg.get("compile"):
        raise ConfigError(f"{typed[0]} applies only to a compiled model, and model.compile is false: add "
                          f"model.compile=true, or drop {typed[0]}.")
    if model_cfg.get("compile") and compile_backend(model_cfg) == "cudagraphs" and model_cfg.get("compile_dynamic"):
        raise ConfigError("model.compile_backend=cudagraphs replays the graph recorded for the first batch shape "
                          "on every later one (pytorch#131009): set model.compile_dynamic=false (one graph per "
                          "length bucket).")
