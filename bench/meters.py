"""Measurement callbacks and counts for the bench scripts: throughput, start-up time, a step profiler
and transformer FLOP counts (for MFU)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process (0 if dynamo is unavailable)."""
    try:
        return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    except Exception:  # dynamo unavailable: nothing was compiled
        return 0


class ThroughputMeter(pl.Callback):
    """Times optimizer steps after `warmup` steps and `warmup_epochs` epochs (compilation, allocator
    warm-up excluded; with torch.compile one epoch shows every length bucket, so all recompiles happen
    before timing) and counts samples, real tokens and padded tokens of the timed batches. Graphs
    compiled inside the timed window are reported: a measurement with any is not steady state."""

    def __init__(self, warmup: int = 3, warmup_epochs: int = 0) -> None:
        self.warmup = warmup
        self.warmup_epochs = warmup_epochs
        self.reset()

    def reset(self) -> None:
        self.start: float | None = None
        self.elapsed = 0.0
        self.samples = self.tokens = self.padded_tokens = self.steps = 0
        self.shapes: list[tuple[int, int]] = []
        self.graphs_at_start = 0
        self.graphs_compiled_while_timed = 0

    def begin(self) -> None:
        _sync()
        self.graphs_at_start = compiled_graphs()
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        warm = trainer.global_step >= self.warmup and trainer.current_epoch >= self.warmup_epochs
        if self.start is None and warm:
            self.begin()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is None:
            return
        self.count(batch)
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            self.stop()  # before epoch-end work (checkpoint writes) that a hand-written loop skips

    def count(self, batch: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        self.samples += batch["input_ids"].shape[0]
        self.padded_tokens += batch["input_ids"].numel()
        self.tokens = self.tokens + batch["attention_mask"].sum()  # stays on the device: no sync per step
        self.shapes.append(tuple(batch["input_ids"].shape))

    def on_train_end(self, trainer, pl_module) -> None:
        self.stop()
        if trainer.is_global_zero:
            Path(trainer.default_root_dir, "throughput.json").write_text(json.dumps(self.summary(), indent=2))

    def stop(self) -> None:
        if self.start is not None and not self.elapsed:
            _sync()
            self.elapsed = time.perf_counter() - self.start
            self.graphs_compiled_while_timed = compiled_graphs() - self.graphs_at_start

    def summary(self) -> dict[str, float]:
        t = max(self.elapsed, 1e-9)
        self.tokens = int(self.tokens)
        return {
            "steps": self.steps,
            "seconds": self.elapsed,
            "samples_per_s": self.samples / t,
            "tokens_per_s": self.tokens / t,
            "padded_tokens_per_s": self.padded_tokens / t,
            "padding_fraction": 1 - self.tokens / max(self.padded_tokens, 1),
            "distinct_shapes": len(set(self.shapes)),
            "graphs_compiled_while_timed": self.graphs_compiled_while_timed,
            "shape_list": self.shapes,
        }


class StepProfiler(pl.Callback):
    """Profiles `steps` training steps from `start_step` (torch.profiler) and writes <run dir>/profile.json:
    wall ms per step, the device's busy fraction (kernel time / wall time; well below 1 means the GPU
    waited for the host: launch overhead or syncs) and the ops taking the most device time (CPU time
    on a CPU run). Answers "slow kernels or a starved GPU?" in one run; not for timed runs."""

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
            _sync()
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
        _sync()
        wall = time.perf_counter() - self._t0
        self._profiler.__exit__(None, None, None)
        steps = trainer.global_step - self._first_step
        self.summary = self._summarize(self._profiler, wall, steps)
        self._profiler = None
        if trainer.is_global_zero:
            Path(trainer.default_root_dir, "profile.json").write_text(json.dumps(self.summary, indent=2))

    def _summarize(self, profiler: Any, wall: float, steps: int) -> dict[str, Any]:
        if torch.cuda.is_available():  # the GPU's own timeline: kernel (and memcpy) intervals
            from torch.autograd import DeviceType

            spans = [(e.time_range.start, e.time_range.end, e.name) for e in profiler.events()
                     if e.device_type == DeviceType.CUDA]
        else:  # CPU: every op's self time (the host does all the work)
            spans = [(0, e.self_cpu_time_total, e.key) for e in profiler.key_averages()]
        by_name: dict[str, list[float]] = {}
        for start, end, name in spans:
            total = by_name.setdefault(name, [0.0, 0])
            total[0] += end - start
            total[1] += 1
        ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[: self.top]
        busy_us = _union_us(spans) if torch.cuda.is_available() else sum(end for _, end, _ in spans)
        return {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "steps": steps,
            "wall_ms_per_step": 1e3 * wall / steps,
            "busy_ms_per_step": busy_us / 1e3 / steps,
            "busy_fraction": busy_us / 1e6 / wall,
            "top_ops": [{"op": name[:120], "calls_per_step": n / steps, "ms_per_step": us / 1e3 / steps}
                        for name, (us, n) in ranked],
        }


def _union_us(spans: list[tuple[float, float, str]]) -> float:
    """Length of the union of [start, end) intervals: overlapping kernels (several streams) count once."""
    total, end_so_far = 0.0, float("-inf")
    for start, end, _ in sorted(spans):
        if end > end_so_far:
            total += end - max(start, end_so_far)
            end_so_far = end
    return total


class StartupTimer(pl.Callback):
    """Writes <run dir>/startup.json: seconds from BENCH_T0 (set by the launcher just before starting
    the process) to the first training batch, i.e. imports + config + data + model load."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and trainer.global_step == 0 and trainer.is_global_zero:
            seconds = time.time() - float(os.environ.get("BENCH_T0", time.time()))
            Path(trainer.default_root_dir, "startup.json").write_text(json.dumps({"seconds": seconds}))


def training_flops(config: Any, batch: int, seq_len: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward) of a BERT-style encoder on a
    [batch, seq_len] input: 2 FLOPs per multiply-add for the layer matmuls and the attention scores."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    tokens = batch * seq_len
    per_layer = 2 * tokens * (4 * h * h + 2 * h * inter) + 2 * 2 * batch * seq_len * seq_len * h
    return 3.0 * layers * per_layer
