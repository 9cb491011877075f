"""HostSyncAudit: finds the tensor calls of a training step that make the host wait for the device
(a GPU sync), on any device, CPU included, so tests can keep the training step free of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


# Tensor calls that make the host wait for the device: reading a value (item, tolist, bool/int/float
# conversion), ops whose output size depends on the data (nonzero, unique, boolean-mask indexing, and
# bincount, whose CUDA kernel reads the input's max), copies to the host.
_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "nonzero", "argwhere",
          "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave"}


def _is_host_sync(func: Any, args: tuple, kwargs: dict) -> bool:
    name = getattr(func, "__name__", "")
    if name in _READS:
        return True
    first = args[0] if args else None
    if not isinstance(first, torch.Tensor):
        return False
    if name in {"cpu", "to"} and first.device.type != "cpu":
        target = "cpu" if name == "cpu" else next((a for a in (*args[1:], *kwargs.values())), None)
        return str(target).startswith("cpu")
    if name == "__getitem__" and len(args) > 1:
        index = args[1]
        return isinstance(index, torch.Tensor) and index.dtype == torch.bool
    return False


def _call_site() -> tuple[str, str]:
    """(owner package, innermost non-torch frame) of the current tensor call. torch.optim's own reads
    are of host-side step counters (CPU tensors unless fused/capturable), never a device sync."""
    import traceback

    frames = traceback.extract_stack()
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        if "/torch/optim/" in path:
            return "torch.optim", f"{Path(path).name}:{frame.lineno}"
        if "/torch/" in path or path.endswith("host_sync.py"):
            continue
        parts = path.split("/site-packages/", 1)[-1].split("/") if "/site-packages/" in path else []
        owner = parts[0] if parts else ("tunelab" if "/tunelab/" in path else "other")
        return owner, f"{owner}/{Path(path).name}:{frame.lineno} ({frame.name})"
    return "torch", "torch"


class HostSyncAudit(pl.Callback):
    """Counts tensor operations that force a host-device sync during training steps (from the
    `start_step`-th step to the epoch's last training batch, callbacks and data loading between steps
    included), by call site and owning package; writes <run dir>/host_syncs.json.
    Runs on CPU too: it intercepts the calls (a TorchFunctionMode), not the device, so a CPU test finds
    a per-step `.item()` before it stalls a GPU. `as_on_accelerator` puts the non-finite-loss guard on its
    accelerator path (deferred check) so a CPU run audits what a GPU run executes. Not for timed runs:
    the interception slows every torch call."""

    def __init__(self, start_step: int = 2, as_on_accelerator: bool = True) -> None:
        self.start_step = start_step
        self.as_on_accelerator = as_on_accelerator
        self.steps = 0
        self.sites: dict[tuple[str, str, str], int] = {}
        self._mode: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from tunelab.resilience import find_resilience

        guard = find_resilience(trainer)
        if self.as_on_accelerator and guard is not None:
            guard.defer_nan_check = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._mode is None and trainer.global_step >= self.start_step:
            self._mode = _SyncRecorder(self.sites)
            self._mode.__enter__()
        if self._mode is not None:
            self.steps += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:  # validation and epoch-end work are not steps
            self._stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # the run stopped mid-epoch (max_steps)
        self._stop(trainer)

    def _stop(self, trainer: pl.Trainer) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
            if trainer.is_global_zero:
                Path(trainer.default_root_dir, "host_syncs.json").write_text(json.dumps(self.summary(), indent=2))

    def per_step(self, owner: str | None = None) -> float:
        total = sum(n for (o, _, _), n in self.sites.items() if owner is None or o == owner)
        return total / max(self.steps, 1)

    def summary(self) -> dict[str, Any]:
        owners = sorted({o for o, _, _ in self.sites})
        return {
            "steps": self.steps,
            "per_step": {o: self.per_step(o) for o in owners},
            "sites": [{"owner": o, "op": op, "site": s, "count": n} for (o, op, s), n in
                      sorted(self.sites.items(), key=lambda kv: -kv[1])],
        }


class _SyncRecorder(torch.overrides.TorchFunctionMode):
    def __init__(self, sites: dict) -> None:
        super().__init__()
        self.sites = sites

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_host_sync(func, args, kwargs):
            owner, site = _call_site()
            key = (owner, getattr(func, "__name__", str(func)), site)
            self.sites[key] = self.sites.get(key, 0) + 1
        return func(*args, **kwargs)
