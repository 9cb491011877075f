"""Measurement callbacks and counts for the bench scripts: throughput, start-up time, compile counts and
transformer FLOP counts (for MFU). The step profiler is bench/profiler.py, host-time measures bench/host_time.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from bench.host_time import GcTimer, HostProfile, ThreadCpu
from tunelab.resilience import find_resilience


ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMER = "+callbacks.startup._target_=bench.meters.StartupTimer"


def device_name() -> str:
    """The card a result was measured on ("cpu" without one)."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def run_fresh(cmd: list[str], **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `cmd` in a new process from the project root, output captured, with BENCH_T0 set to the moment
    just before it starts (StartupTimer counts from there): the process and its wall seconds."""
    env = {**os.environ, **env, "BENCH_T0": repr(time.time())}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc, time.time() - t0


def sync_device() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compile_counts() -> dict[str, int]:
    """torch.compile's counts in this process so far: graphs built, and inductor FX graph / AOT autograd
    cache hits and misses (a hit loads a compiled graph from model.compile_cache_dir)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # dynamo unavailable: nothing was compiled
        return {}
    return {"graphs": int(counters["stats"]["unique_graphs"]),
            **{k: int(counters["inductor"][k]) for k in ("fxgraph_cache_hit", "fxgraph_cache_miss")},
            **{k: int(counters["aot_autograd"][k]) for k in ("autograd_cache_hit", "autograd_cache_miss")}}


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process."""
    return compile_counts().get("graphs", 0)


class ThroughputMeter(pl.Callback):
    """Times optimizer steps after `warmup` steps and `warmup_epochs` epochs (compilation, allocator
    warm-up excluded; with torch.compile one epoch shows every length bucket, so all recompiles happen
    before timing), for `steps` steps (0: until the run ends; then it stops the run). Epoch ends and
    validation are not timed: the clock pauses there and resumes at the next training batch, so a small
    dataset's many epoch ends do not count against steady state. Counts samples, real and padded tokens
    and attended token pairs (for MFU) of the timed batches. Graphs compiled while the clock runs are
    reported: a measurement with any is not steady state, and so is the time Python's garbage collector
    took inside the window (GcTimer) and each thread's CPU time per step beside the wall time (ThreadCpu:
    what a host-bound step computes and what it waits for). `host_profile`: cProfile the timed steps
    (HostProfile; it slows them, so a profiled run's samples/s is not a measurement)."""

    def __init__(self, warmup: int = 3, warmup_epochs: int = 0, steps: int = 0, host_profile: bool = False) -> None:
        self.warmup, self.warmup_epochs, self.target_steps = warmup, warmup_epochs, steps
        self.host_profile = HostProfile() if host_profile else None
        self.gc = GcTimer()
        self.threads = ThreadCpu()
        self.reset()

    def reset(self) -> None:
        self.started = self.done = False
        self._resumed_at: float | None = None
        self._graphs_at_resume = 0
        self.elapsed = 0.0
        self.segments = self.samples = self.padded_tokens = self.padded_pairs = self.steps = 0
        self.tokens: Any = 0  # device tensors until summary(): no sync per step
        self.pairs: Any = 0
        self.shapes: set[tuple[int, ...]] = set()
        self.graphs_compiled_while_timed = 0
        self.trainer_setup: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # what ran beside the step, so a case's row says which of the framework's extras it paid for
        self.trainer_setup = {"callbacks": [type(c).__name__ for c in trainer.callbacks],
                              "loggers": [type(lg).__name__ for lg in trainer.loggers],
                              "log_every_n_steps": trainer.log_every_n_steps,
                              "on_nan": getattr(find_resilience(trainer), "on_nan", None)}

    def begin(self) -> None:
        """Start the clock, or resume it after a pause."""
        if self.done or self._resumed_at is not None:
            return
        sync_device()  # work queued before (warm-up, epoch-end metrics) is not timed
        self.started = True
        self.segments += 1
        self._graphs_at_resume = compiled_graphs()
        if self.host_profile is not None:
            self.host_profile.start()
        self.gc.start()
        self.threads.start()
        self._resumed_at = time.perf_counter()

    def pause(self) -> None:
        if self._resumed_at is None:
            return
        sync_device()
        self.elapsed += time.perf_counter() - self._resumed_at
        self.threads.stop()
        self.gc.stop()
        if self.host_profile is not None:
            self.host_profile.stop()
        self.graphs_compiled_while_timed += compiled_graphs() - self._graphs_at_resume
        self._resumed_at = None

    def stop(self) -> None:
        self.pause()
        self.done = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.warmup and trainer.current_epoch >= self.warmup_epochs:
            self.begin()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._resumed_at is None:
            return
        self.count(batch)
        if self.target_steps and self.steps >= self.target_steps:
            self.stop()
            trainer.should_stop = True
        elif trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            self.stop()  # before end-of-run work (checkpoint writes) that a hand-written loop skips

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.pause()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.pause()

    def count(self, batch: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        rows, width = batch["input_ids"].shape[:2]
        self.samples += rows
        self.padded_tokens += rows * width
        self.padded_pairs += rows * width * width
        self.shapes.add(tuple(batch["input_ids"].shape))
        lengths = batch["attention_mask"].sum(1)
        self.tokens = self.tokens + lengths.sum()
        self.pairs = self.pairs + (lengths * lengths).sum()

    def on_train_end(self, trainer, pl_module) -> None:
        self.stop()
        if trainer.is_global_zero:
            Path(trainer.default_root_dir, "throughput.json").write_text(json.dumps(self.summary(), indent=2))

    def summary(self) -> dict[str, float]:
        t = max(self.elapsed, 1e-9)
        tokens, pairs = int(self.tokens), int(self.pairs)
        return {
            "steps": self.steps,
            "seconds": self.elapsed,
            "timed_segments": self.segments,  # epochs the timed steps fall in (their ends not timed)
            "samples_per_s": self.samples / t,
            "ms_per_step": 1e3 * self.elapsed / max(self.steps, 1),
            # beside ms_per_step: CPU the host spent per step, by thread (the rest of the wall time waited)
            "thread_cpu_ms_per_step": self.threads.ms_per_step(self.steps),
            "tokens_per_s": tokens / t,
            "padded_tokens_per_s": self.padded_tokens / t,
            "padding_fraction": 1 - tokens / max(self.padded_tokens, 1),
            "distinct_shapes": len(self.shapes),
            "graphs_compiled_while_timed": self.graphs_compiled_while_timed,
            "gc_ms_per_step": 1e3 * self.gc.seconds / max(self.steps, 1),
            "gc_collections": dict(self.gc.collections),  # by generation
            "tokens": tokens, "padded_tokens": self.padded_tokens,
            "attended_pairs": pairs, "padded_attended_pairs": self.padded_pairs,
            **({"host_profile": self.host_profile.summary(self.steps)} if self.host_profile is not None else {}),
            **({"trainer": self.trainer_setup} if self.trainer_setup else {}),
        }


class StartupTimer(pl.Callback):
    """Writes <run dir>/startup.json, seconds from BENCH_T0 (set by the launcher just before starting
    the process) to each point of a run's start: `callbacks_s` (imports, config, tokenized data, model
    load: the callbacks are built last, with the Trainer), `fit_start_s` (Trainer set up, model on the
    device), `sanity_end_s` (the sanity-check validation), `seconds` (the first training batch) and
    `first_step_s` (the end of the first step, its compilation under torch.compile included) and
    `test_metric_s` (the end of the test, its metric computed), with the run's own compile counts
    (compile_counts() since the callback was built: a sweep's jobs share a process)."""

    def __init__(self) -> None:
        self.t0 = float(os.environ.get("BENCH_T0", time.time()))
        self.result: dict[str, Any] = {"callbacks_s": time.time() - self.t0}
        self.counts_before = compile_counts()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.result["fit_start_s"] = time.time() - self.t0

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        sync_device()
        self.result["sanity_end_s"] = time.time() - self.t0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "seconds" not in self.result:
            self.result["seconds"] = time.time() - self.t0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "first_step_s" not in self.result:
            sync_device()
            self.result["first_step_s"] = time.time() - self.t0
            self.write(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        # the goal's end point: the test metric is computed (the run's export and exit come after)
        sync_device()
        self.result["test_metric_s"] = time.time() - self.t0
        self.write(trainer)

    def write(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            counts = {k: v - self.counts_before.get(k, 0) for k, v in compile_counts().items()}
            out = {**self.result, "compile": counts}
            Path(trainer.default_root_dir, "startup.json").write_text(json.dumps(out, indent=2))


def training_flops(config: Any, tokens: float, attended_pairs: float) -> float:
    """Model FLOPs of training (forward + backward = 3x forward) of a BERT-style encoder over `tokens`
    tokens whose attention covers `attended_pairs` (query, key) pairs (sum of length² per sequence):
    2 FLOPs per multiply-add for the layer matmuls and the attention scores and values. Padded counts
    give the FLOPs the GPU executes, real ones the useful FLOPs."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 2 * tokens * (4 * h * h + 2 * h * inter) + 2 * 2 * attended_pairs * h
    return 3.0 * layers * per_layer
