"""AdaLoRA in the Lightning loop (the trainer gets this callback when peft=adalora): the rank-budget
schedule spans the run, the importance update and rank allocation follow every optimizer step, and
the allocator's state travels in checkpoints so a resumed run continues the same schedule."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.peft_adapters import is_peft_model

log = logging.getLogger(__name__)

STATE_KEY = "adalora_state"


def adalora_tuner(model: nn.Module) -> Any:
    """The trainable AdaLoRA tuner (AdaLoraModel) of a PeftModel (the one with a rank allocator), else None."""
    if not is_peft_model(model):
        return None
    import peft

    tuner = model.base_model
    return tuner if isinstance(tuner, peft.AdaLoraModel) and hasattr(tuner, "rankallocator") else None


def regularization(model: nn.Module) -> torch.Tensor | None:
    """AdaLoRA's orthogonal regularization of P (lora_A) and Q (lora_B), weighted by orth_reg_weight.
    peft adds it in AdaLoraModel.forward only to a loss the HF model computed itself (labels passed
    in); tunelab computes the loss outside the model, so the module adds this term."""
    tuner = adalora_tuner(model)
    if tuner is None:
        return None
    name = tuner.trainable_adapter_name
    terms = []
    for n, p in tuner.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and name in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=p.device, dtype=p.dtype)))
    if not terms:
        return None
    return tuner.peft_config[name].orth_reg_weight * torch.stack(terms).mean()


class AdaLoraSchedule(pl.Callback):
    """`tinit_ratio` / `tfinal_ratio`: the full-budget warm-up and fixed-rank final phases as fractions
    of the trainer's optimizer steps (too short a run for both phases budgets all the way)."""

    def __init__(self, tinit_ratio: float, tfinal_ratio: float) -> None:
        self.tinit_ratio, self.tfinal_ratio = tinit_ratio, tfinal_ratio
        self._steps_done = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tuner = adalora_tuner(pl_module.model)
        if tuner is None:
            return
        total_steps = trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ConfigError("peft=adalora schedules its rank budget over the run: set trainer.max_steps or max_epochs.")
        conf = tuner.peft_config[tuner.trainable_adapter_name]
        total = max(int(total_steps), 1)
        tinit, tfinal = int(self.tinit_ratio * total), int(self.tfinal_ratio * total)
        if tinit >= total - tfinal:
            tinit, tfinal = 0, 0
        conf.total_step, conf.tinit, conf.tfinal = total, tinit, tfinal
        alloc = tuner.rankallocator
        log.info(
            "adalora: rank budget %d -> %d, full until step %d, fixed after step %d of %d (every %d steps)",
            alloc.init_bgt, alloc.target_bgt, tinit, total - tfinal, total, conf.deltaT,
        )  # fmt: skip

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._steps_done = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # after optimizer.step() and before the next zero_grad (Lightning zeroes inside the next step's
        # closure): the importance update needs this step's gradients. A batch that only accumulated
        # gradients made no optimizer step.
        if trainer.global_step == self._steps_done:
            return
        self._steps_done = trainer.global_step
        tuner = adalora_tuner(pl_module.model)
        if tuner is not None:
            tuner.update_and_allocate(trainer.global_step - 1)  # the 0-based index of the step just taken

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        tuner = adalora_tuner(pl_module.model)
        if tuner is None:
            return
        alloc = tuner.rankallocator  # rank pattern and importance EMAs: state outside the weights
        checkpoint[STATE_KEY] = {
            "rank_pattern": tuner.peft_config[tuner.trainable_adapter_name].rank_pattern,
            "ipt": alloc.ipt, "exp_avg_ipt": alloc.exp_avg_ipt, "exp_avg_unc": alloc.exp_avg_unc,
        }  # fmt: skip

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        tuner, state = adalora_tuner(pl_module.model), checkpoint.get(STATE_KEY)
        if tuner is None or not state:
            return
        tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = state["rank_pattern"]
        alloc = tuner.rankallocator
        alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
