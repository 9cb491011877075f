"""Measurement helpers for bench/: a throughput callback and transformer FLOP counts (for MFU)."""

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


def _compiled_graphs() -> int:
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
        self.graphs_at_start = _compiled_graphs()
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
            self.graphs_compiled_while_timed = _compiled_graphs() - self.graphs_at_start

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
