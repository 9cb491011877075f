"""Step profiler for the bench scripts: where a training step's time goes, read off torch.profiler's
timeline. Busy time is the union of the work intervals: device kernels, memcpy and memset on a GPU,
operators on a CPU. Annotations are never work: a `record_function` region (Lightning's
`Optimizer.step#AdamW.step`, `ProfilerStep#N`) spans the host time of everything inside it, and on CUDA
it also shows as a device-side range, so counting it would report a GPU that waits for the host as busy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import lightning.pytorch as pl
import torch
from torch.autograd import DeviceType

from bench.meters import sync_device

WORK = {"kernel", "memcpy", "memset", "cpu_op"}  # the kinds that count as busy time
_DEVICE_ACTIVITY = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}


@dataclass(frozen=True)
class Event:
    """One timeline interval: `kind` is kernel | memcpy | memset | cpu_op | annotation | other;
    `self_us` is the time not spent in child operators (a device event's whole duration)."""

    name: str
    kind: str
    start_us: float
    end_us: float
    self_us: float


def timeline(profiler: Any, device: str) -> list[Event]:
    """The profiled events of `device` ("cuda": the GPU's own timeline; "cpu": host operators), each
    classified, so that summarize() counts work only."""
    events = list(profiler.events())
    annotations = {e.name for e in events if e.is_user_annotation}  # CUDA repeats them as device ranges
    on_device = device == "cuda"
    out = []
    for e in events:
        if _is_device_event(e) != on_device:
            continue
        kind = "annotation" if e.name in annotations else _kind(e)
        self_us = e.time_range.elapsed_us() if on_device else e.self_cpu_time_total
        out.append(Event(e.name, kind, e.time_range.start, e.time_range.end, self_us))
    return out


def _is_device_event(event: Any) -> bool:
    return event.device_type == DeviceType.CUDA


def _kind(event: Any) -> str:
    activity = str(getattr(event, "activity_type", "") or "")  # kineto's own category (recent torch)
    if event.is_user_annotation or "annotation" in activity:
        return "annotation"
    if not _is_device_event(event):
        return "cpu_op" if activity in {"", "cpu_op"} else "other"
    if activity:
        return _DEVICE_ACTIVITY.get(activity, "other")  # cuda_sync, overhead, ...: no work
    name = event.name.lower()
    return "memcpy" if name.startswith("memcpy") else "memset" if name.startswith("memset") else "kernel"


def summarize(events: Iterable[Event], wall_s: float, steps: int, device: str, top: int = 15) -> dict[str, Any]:
    """Per-step wall and busy time (union of the work intervals: overlapping kernels of several streams,
    or nested operators, count once), busy fraction and the work taking the most self time."""
    work = [e for e in events if e.kind in WORK]
    busy_us = union_us((e.start_us, e.end_us) for e in work)
    by_name: dict[str, list[float]] = {}
    for e in work:
        total = by_name.setdefault(e.name, [0.0, 0])
        total[0] += e.self_us
        total[1] += 1
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "device": device,
        "steps": steps,
        "wall_ms_per_step": 1e3 * wall_s / steps,
        "busy_ms_per_step": busy_us / 1e3 / steps,
        "busy_fraction": busy_us / 1e6 / wall_s,
        "busy_counts": "kernels, memcpy, memset" if device == "cuda" else "operators",
        "top_ops": [{"op": name[:120], "calls_per_step": n / steps, "ms_per_step": us / 1e3 / steps}
                    for name, (us, n) in ranked],
    }


def union_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, end_so_far = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > end_so_far:
            total += end - max(start, end_so_far)
            end_so_far = end
    return total


class StepProfiler(pl.Callback):
    """Profiles `steps` training steps from `start_step` and writes <run dir>/profile.json (summarize()).
    A busy fraction near 1 means slow kernels (fusion: torch.compile helps); well below 1 a GPU that
    waits for the host (launch overhead, syncs: CUDA graphs help). Not for timed runs."""

    def __init__(self, start_step: int = 20, steps: int = 5, top: int = 15) -> None:
        self.start_step, self.steps, self.top = start_step, steps, top
        self._profiler: Any = None
        self._first_step, self._t0 = 0, 0.0
        self.summary: dict[str, Any] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._profiler is None and not self.summary and trainer.global_step >= self.start_step:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            sync_device()
            self._profiler = torch.profiler.profile(activities=activities)
            self._profiler.__enter__()
            self._first_step, self._t0 = trainer.global_step, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._profiler is not None and trainer.global_step - self._first_step >= self.steps:
            self._finish(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._profiler is not None and trainer.global_step > self._first_step:  # run ended first
            self._finish(trainer)
        elif self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self._profiler = None

    def _finish(self, trainer: pl.Trainer) -> None:
        sync_device()
        wall = time.perf_counter() - self._t0
        self._profiler.__exit__(None, None, None)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        steps = trainer.global_step - self._first_step
        self.summary = summarize(timeline(self._profiler, device), wall, steps, device, self.top)
        self._profiler = None
        if trainer.is_global_zero:
            Path(trainer.default_root_dir, "profile.json").write_text(json.dumps(self.summary, indent=2))
