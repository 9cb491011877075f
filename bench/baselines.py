"""The references the framework's training step is timed against, both on a config's model, batches and
AdamW parameter groups: the hand-written PyTorch loop (`raw_loop`), and the same step as a bare Lightning
module with nothing else in the Trainer (`bare_lightning`: no logger, metrics, checkpoints, progress bar or
callbacks but the meter; automatic or manual optimization). Loop -> bare Lightning is what Lightning's
training loop costs per step on its own; bare Lightning -> framework is what the framework's configuration
adds on top."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from bench.host_time import OpCount, StepOps
from bench.meters import ThroughputMeter
from tunelab.compiling import uses_cuda_graphs
from tunelab.config import compose_config
from tunelab.model import build_model
from tunelab.optim import param_groups
from tunelab.pipeline import build_datamodule
from tunelab.tasks import get_task


def _setup(overrides: list[str], out: Path, device: str) -> tuple[Any, Any, nn.Module, bool]:
    """The config, its datamodule (set up for fit) and its classification model on `device`, seeded and with
    the matmul precision of the framework's run; and whether each step must mark a CUDA-graph step."""
    cfg = compose_config(overrides, out)
    torch.manual_seed(cfg.seed)
    # as the framework's run sets it (TF32 for fp32 matmuls on a GPU), not whatever the last case left
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision") or "highest")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(cfg.model, get_task("classification"), len(dm.label_names)).to(device)
    model.train()
    return cfg, dm, model, uses_cuda_graphs(cfg.model)


def _adamw(model: nn.Module, cfg: Any, device: str) -> torch.optim.AdamW:
    fused = True if device == "cuda" else None
    return torch.optim.AdamW(param_groups(model, cfg.optimizer.weight_decay), lr=cfg.optimizer.lr, fused=fused)


def _loss(model: nn.Module, batch: dict[str, torch.Tensor], cuda_graphs: bool, device: str, bf16: bool) -> torch.Tensor:
    if cuda_graphs:  # as TransformerModule.forward: this replay may reuse the last one's outputs
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return F.cross_entropy(logits.float(), batch["labels"])


def raw_loop(overrides: list[str], out: Path, steps: int, warmup: int, device: str = "cpu", bf16: bool = False,
             warmup_epochs: int = 0, host_profile: bool = False, count_ops_at: int | None = None) -> dict:
    """The hand-written baseline: the same model (compiled as cfg.model says, CUDA graphs included),
    loader (same seeded batches, epoch after epoch) and AdamW parameter groups, timed like the
    framework: `steps` steps after `warmup` steps and `warmup_epochs` epochs, epoch ends not timed.
    count_ops_at: also count the ops of that step (as bench.host_time.StepOps does for the framework)."""
    cfg, dm, model, cuda_graphs = _setup(overrides, out, device)
    opt = _adamw(model, cfg, device)
    meter = ThroughputMeter(warmup, warmup_epochs, steps, host_profile)
    loader, step, step_ops = dm.train_dataloader(), 0, None
    for epoch in itertools.count():
        dm.train_sampler.set_epoch(epoch)
        for batch in loader:
            if step >= warmup and epoch >= warmup_epochs:
                meter.begin()
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            counter = OpCount() if step == count_ops_at else None
            with counter or contextlib.nullcontext():
                _loss(model, batch, cuda_graphs, device, bf16).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if counter is not None:
                step_ops = counter.ops
            step += 1
            if meter.started and not meter.done:
                meter.count(batch)
                if meter.steps >= steps:
                    meter.stop()
                    return {**meter.summary(), **({"step_ops": step_ops} if count_ops_at is not None else {})}
        meter.pause()  # the epoch end (a new loader iterator) is not timed, as in ThroughputMeter


class BareStep(pl.LightningModule):
    """The loop's step and nothing else: forward and loss, Lightning doing backward, step and zero_grad
    (automatic optimization), or with `manual` the step calling them itself through Lightning's manual
    optimization API (`manual_backward`, the wrapped optimizer): what leaving Lightning's optimizer closure
    and its hooks around it would save."""

    def __init__(self, model: nn.Module, cfg: Any, device: str, cuda_graphs: bool, manual: bool = False) -> None:
        super().__init__()
        self.model, self.cfg, self.device_type, self.cuda_graphs = model, cfg, device, cuda_graphs
        self.automatic_optimization = not manual

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # bf16 autocast comes from the Trainer's precision plugin, as any Lightning user gets it
        loss = _loss(self.model, batch, self.cuda_graphs, self.device_type, bf16=False)
        if not self.automatic_optimization:
            opt = self.optimizers()
            # training_step runs inside the precision plugin's autocast; a compiled graph's backward run
            # under bf16 autocast fails ("expected scalar type Float but found BFloat16"), and the automatic
            # loop runs backward and step outside it too
            with torch.autocast(self.device_type, enabled=False):
                self.manual_backward(loss)
                opt.step()  # counts the global step, as the automatic loop does
                opt.zero_grad(set_to_none=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return _adamw(self.model, self.cfg, self.device_type)


def bare_lightning(overrides: list[str], out: Path, steps: int, warmup: int, device: str = "cpu", bf16: bool = False,
                   warmup_epochs: int = 0, host_profile: bool = False, count_ops_at: int | None = None,
                   manual: bool = False) -> dict:
    """The loop's step inside a bare Lightning Trainer (the meter its only callback), timed as the loop;
    count_ops_at: also count the ops of that step (bench.host_time.StepOps, a second callback); manual:
    Lightning's manual optimization (BareStep)."""
    cfg, dm, model, cuda_graphs = _setup(overrides, out, device)
    out.mkdir(parents=True, exist_ok=True)  # the meter writes its throughput.json there at the end
    meter = ThroughputMeter(warmup, warmup_epochs, steps, host_profile)
    ops = StepOps(count_ops_at) if count_ops_at is not None else None
    trainer = pl.Trainer(accelerator=device, devices=1, precision="bf16-mixed" if bf16 else "32-true", max_epochs=-1,
                         logger=False, callbacks=[meter, *filter(None, [ops])], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, default_root_dir=str(out))
    trainer.fit(BareStep(model, cfg, device, cuda_graphs, manual), train_dataloaders=dm.train_dataloader())
    return {**meter.summary(), **({"step_ops": ops.ops} if ops is not None else {})}
