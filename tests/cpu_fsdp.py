"""FSDP on CPU for the tests (importable by the rank processes Lightning starts). torch's FSDP runs on CPU
over gloo when given `device_id=cpu`, but Lightning's FSDPStrategy refuses a CPU accelerator (an exact type
check, `type(strategy) is FSDPStrategy`) and would wrap with `device_id=None`, which torch refuses without
a GPU. This subclass passes the check and wraps with the CPU device, so trainer=fsdp's whole path (auto
wrapping, sharded training, full-state checkpoints, test, export) runs on 2 CPU processes. Users get
trainer=ddp on CPU: validation refuses trainer=fsdp there."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies import fsdp as lightning_fsdp
from torch.distributed.fsdp import FullyShardedDataParallel


class CpuFSDPStrategy(FSDPStrategy):
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(
                module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
            )
        return super()._setup_model(model)  # already wrapped: Lightning's own bookkeeping only


def _full_state_dict_context(module: torch.nn.Module, world_size: int, rank0_only: bool = True):
    """Lightning's full-state context for saving, without `offload_to_cpu`: with it, on CPU, torch's
    state-dict hook segfaulted cloning a gathered parameter (torch 2.13, 2 ranks); without it the saved
    state dict is the same full one. On GPUs Lightning's own context (offload_to_cpu=True) is used."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    return FullyShardedDataParallel.state_dict_type(
        module=module, state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )


lightning_fsdp._get_full_state_dict_context = _full_state_dict_context  # the strategy's name for it
