"""Random-number-generator state as plain tensors/ints, so checkpoints holding it still load with
torch.load(weights_only=True). Under DDP / FSDP each rank has streams of its own (its batches draw their own dropout
masks): a checkpoint holds every rank's, and each rank resumes from its own."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def collect_rng_states() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint_rng_states() -> dict[str, Any]:
    """This process's states, with every rank's under "ranks" when several processes train: gathered onto rank 0,
    which writes the checkpoint (a collective: every rank calls it, as every rank saves a checkpoint)."""
    states = collect_rng_states()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        ranks = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(states, ranks, dst=0)
        if ranks is not None:
            states["ranks"] = ranks
    return states


def restore_rng_states(states: dict[str, Any], rank: int, world_size: int) -> None:
    """Each rank takes its own saved states; a checkpoint of another number of processes (or of one) gives every
    rank the saving rank's, as the streams cannot be split or joined."""
    ranks = states.get("ranks")
    set_rng_states(ranks[rank] if ranks and len(ranks) == world_size else states)
