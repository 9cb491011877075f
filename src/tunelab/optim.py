"""Optimizer and LR-scheduler construction from conf/optimizer and conf/scheduler (hydra instantiate
of the real torch/transformers classes; no wrappers)."""

from __future__ import annotations

import inspect
import logging
from typing import Any, Iterable, Mapping

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import nn

from tunelab.errors import ConfigError
from tunelab.layers import layer_depth

log = logging.getLogger(__name__)

# the optimizer's kernel choice, not its update rule: a resumed run may change them (resuming)
KERNEL_KEYS = frozenset({"fused", "foreach"})


# vectors peft stores as (d, 1) matrices: (IA)^3's per-channel gains, AdaLoRA's singular values. Like LayerNorm's
# weights they take no weight decay, which would pull them toward 0 (a channel switched off), not the identity
VECTOR_PARAMETERS = frozenset({"ia3_l", "lora_E"})


def decays(name: str, p: nn.Parameter) -> bool:
    """Weight decay on matrices only: not on biases, LayerNorm weights (1-D) or VECTOR_PARAMETERS."""
    return p.ndim >= 2 and not VECTOR_PARAMETERS.intersection(name.split("."))


def remember_param_groups(model: nn.Module, layer_decay: float | None = None) -> None:
    """Decide each parameter's weight decay, and under optimizer.layer_decay its layer, while it has its own
    shape and place in the model: FSDP later turns parameters into 1-D views of their shard (the same
    Parameter objects, so the marks stay)."""
    for name, p in model.named_parameters():
        p.tunelab_weight_decay = decays(name, p)
    if layer_decay is not None:
        for p, layer in layer_depths(model, layer_decay).items():
            p.tunelab_layer = layer


def layer_depths(model: nn.Module, layer_decay: float) -> dict[nn.Parameter, tuple[int, str, float]]:
    """Layer-wise learning-rate decay: each parameter's (depth, group name, lr scale). Depth 0 is what comes
    before the transformer layers (embeddings), layer i is i + 1, and what comes after them (pooler, head) is
    the top, trained at the full rate; a parameter `k` levels below the top trains at lr x layer_decay^k. An output
    layer tied to the input embeddings (GPT-2's LM head) is the embedding parameter, so it trains at their rate."""
    depths, top = layer_depth(model, "optimizer.layer_decay")
    return {p: (depth, "embeddings" if depth == 0 else "head" if depth == top else f"layer{depth - 1}",
                layer_decay ** (top - depth)) for p, depth in depths.items()}


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Weight decay on matrices only: biases, LayerNorm weights (all 1-D parameters) and VECTOR_PARAMETERS are
    excluded. Parameters marked with a layer (optimizer.layer_decay) get a group per layer and decay, named for the
    LR monitor, at `lr` x their layer's scale."""
    groups: dict[tuple, dict] = {}
    for param_name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = getattr(p, "tunelab_weight_decay", None)
        decay = decays(param_name, p) if decay is None else decay
        depth, name, scale = getattr(p, "tunelab_layer", (-1, None, 1.0))
        key = (depth, not decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": weight_decay if decay else 0.0}
            if name is not None:
                groups[key] |= {"name": name if decay else f"{name}.no_decay", "lr": lr * scale}
        groups[key]["params"].append(p)
    if all(depth < 0 for depth, _ in groups):  # no layers: the decay / no-decay pair, either possibly empty
        return [groups.get((-1, no_decay)) or {"params": [], "weight_decay": 0.0 if no_decay else weight_decay}
                for no_decay in (False, True)]
    return [groups[key] for key in sorted(groups)]


def build_optimizer(cfg: Mapping[str, Any], model: nn.Module, may_fuse: bool = True) -> torch.optim.Optimizer:
    """optimizer.fused: null = fused kernels when the parameters live on a GPU and `may_fuse`."""
    cfg = dict(cfg)
    cfg.pop("layer_decay", None)  # read by remember_param_groups, not an argument of the optimizer
    factory = instantiate(cfg)  # functools.partial of the optimizer class (_partial_: true)
    kwargs = {}
    accepts = inspect.signature(factory.func).parameters
    if "fused" in accepts and factory.keywords.get("fused") is None:
        on_gpu = all(p.is_cuda for p in model.parameters())
        kwargs["fused"] = True if on_gpu and may_fuse else None
    groups = param_groups(model, float(factory.keywords.get("weight_decay", 0.0) or 0.0), factory.keywords.get("lr"))
    return factory(groups, **kwargs)


def may_fuse(trainer: pl.Trainer) -> bool:
    """A fused optimizer unscales fp16's gradients inside its step, after Lightning would clip them
    (Lightning then refuses to clip): with a GradScaler and gradient clipping, the unfused kernels."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return not (trainer.gradient_clip_val and scaler is not None)


def grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """The L2 norm of all gradients together (None if no parameter has one), on their device: a GPU computes
    it with one multi-tensor kernel, not a norm launch per parameter (about 100 for MiniLM)."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def clip_gradients(trainer: pl.Trainer, optimizer: torch.optim.Optimizer, value: float | None,
                   algorithm: str | GradClipAlgorithmType | None) -> bool:
    """trainer.gradient_clip_val where Lightning's own clipping refuses it; False leaves it to Lightning.
    * FSDP, by norm: Lightning's FSDP plugin refuses (it holds no reference to the root module); only the
      root FSDP module computes the norm over every rank's shard.
    * bf16-mixed (no GradScaler) with a fused optimizer (trainer=gpu's AdamW): Lightning's mixed-precision
      plugin refuses any optimizer able to unscale in its step, a guard for fp16's scaler; the gradients
      are true ones, clipped as its base plugin does."""
    if not value:
        return False
    algorithm = GradClipAlgorithmType(algorithm or GradClipAlgorithmType.NORM)
    plugin = trainer.precision_plugin
    if isinstance(trainer.strategy, FSDPStrategy) and algorithm == GradClipAlgorithmType.NORM:
        trainer.strategy.model.clip_grad_norm_(value)
    elif isinstance(plugin, MixedPrecision) and plugin.scaler is None:
        Precision.clip_gradients(plugin, optimizer, value, algorithm)
    else:
        return False
    return True


def build_scheduler(cfg: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer, total_steps: int) -> Any | None:
    """transformers' schedule functions, stepped per optimizer step. Warmup from warmup_steps, else
    warmup_ratio x the trainer's total optimizer steps."""
    if not cfg or not cfg.get("_target_"):
        return None
    cfg = dict(cfg)
    ratio, steps = cfg.pop("warmup_ratio", 0.0), cfg.pop("warmup_steps", None)
    factory = instantiate(cfg)
    # the nearest step (Python's round, ties to even), as docs/ results are measured; transformers' Trainer rounds up
    warmup = int(steps) if steps is not None else round(float(ratio or 0.0) * total_steps)
    if warmup >= total_steps > 0:
        log.warning("the learning-rate warmup (%d steps) is as long as the whole run (%d optimizer steps): the lr "
                    "never reaches optimizer.lr; lower scheduler.warmup_steps / warmup_ratio or train longer", warmup,
                    total_steps)
    accepts = inspect.signature(factory.func).parameters
    kwargs = {"num_warmup_steps": warmup, "num_training_steps": total_steps}
    return factory(optimizer, **{k: v for k, v in kwargs.items() if k in accepts})


def apply_restored_schedule(scheduler: Any) -> None:
    """A schedule restored from a checkpoint leaves the optimizer's lr at the checkpoint's until its next step: the
    first step of a run trained on after a max_steps stop would run at the old schedule's last lr (0 for linear decay).
    Set it to what this run's schedule (rebuilt for its length) gives at the restored step; a run of the same length
    gets the very value it had."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def check_optimizer_settings(cfg: DictConfig) -> None:
    """Before anything loads: the learning-rate rules below, then the optimizer and scheduler built as training
    builds them, on a stand-in parameter, so a value the classes refuse (optimizer.betas=[0.9,2.0], a keyword
    they do not take) is one line now, not a traceback once the data and model have loaded."""
    _check_learning_rate(cfg)
    stand_in = nn.Linear(2, 2)
    target = str(cfg["optimizer"].get("_target_", "")).rsplit(".", 1)[-1]
    try:
        optimizer = build_optimizer(cfg["optimizer"], stand_in, may_fuse=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the optimizer ({target}) refuses its optimizer.* settings: {err}") from None
    try:
        build_scheduler(cfg.get("scheduler"), optimizer, total_steps=10**9)  # past any warmup: no length warning
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the scheduler refuses its scheduler.* settings: {err}") from None


def _check_learning_rate(cfg: DictConfig) -> None:
    """optimizer.lr=null is Adafactor's relative step (a step size from its step count, 1/sqrt(step), kept inside the
    optimizer): the two settings go together, and nothing may scale or schedule an lr that is not there."""
    optimizer, relative = cfg.optimizer, bool(cfg.optimizer.get("relative_step"))
    if optimizer.get("lr") is None and not relative:
        raise ConfigError("optimizer.lr=null leaves the optimizer without a learning rate: set one, or use "
                          "optimizer=adafactor optimizer.relative_step=true (Adafactor's own step size).")
    if relative and optimizer.get("lr") is not None:
        raise ConfigError(f"optimizer.relative_step=true takes Adafactor's step size from its step count: pass "
                          f"optimizer.lr=null as well (it is {optimizer.lr}).")
    if optimizer.get("warmup_init") and not relative:
        raise ConfigError("optimizer.warmup_init=true warms up Adafactor's relative step: pass "
                          "optimizer.relative_step=true optimizer.lr=null as well.")
    if not relative:
        return
    if optimizer.get("layer_decay") is not None:
        raise ConfigError("optimizer.layer_decay scales optimizer.lr per layer: set optimizer.lr (it is null, "
                          "Adafactor's relative step).")
    scheduler = (cfg.get("scheduler") or {}).get("_target_")
    if scheduler:
        raise ConfigError(f"optimizer.relative_step=true: Adafactor sets its step size itself, so a scheduler "
                          f"({scheduler.rsplit('.', 1)[-1]}) has no lr to scale; pass scheduler=none.")
