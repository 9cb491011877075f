"""Batching: a seeded, epoch-aware sampler (optionally grouping similar lengths), rank sharding for
DDP, and a collator that pads each batch only to its own longest sequence."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from tunelab.losses import IGNORE_INDEX

REPEAT = "repeat"  # a batch dealt to a DDP rank a second time, to even out the ranks' batch counts


class ListDataset(Dataset):
    """A split's encoded rows; an index past the end is a row BatchOrderSampler repeats for DDP, marked REPEAT."""


    def __init__(self, examples: list[dict]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        if i >= len(self.examples):  # a row of a batch repeated for DDP (BatchOrderSampler): marked
            return {**self.examples[i - len(self.examples)], REPEAT: True}
        return self.examples[i]

    def __iter__(self) -> Iterator[dict]:  # the rows once (iterating by index would go on into the repeats)
        return iter(self.examples)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BatchOrderSampler(Sampler[list[int]]):
    """A batch sampler (DataLoader(batch_sampler=...)): yields whole batches of example indices, so a
    short batch stays a batch of its own wherever length grouping or rank dealing puts it.

    * shuffle: a new permutation each epoch from (seed, epoch), so a run restarted at an epoch boundary
      sees the same order as an uninterrupted one (Lightning calls `set_epoch`).
    * group_by_length: within windows of 50 batches, sort by length so each batch pads little, then
      shuffle the batch order so lengths do not trend through the epoch.
    * DDP: whole batches are dealt round-robin to ranks (each rank gets the same count; the first few
      are repeated to even out, marked `repeat` so evaluation counts them once), so length grouping
      survives sharding.
    * drop_last: n % batch_size rows, drawn anew each epoch, are left out (before grouping and dealing
      to ranks), so every training batch has the same size: torch.compile / CUDA graphs see no extra
      shape at each epoch end, and no row is left out every epoch.
    """

    WINDOW_BATCHES = 50

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = False,
        drop_last: bool = False,
    ) -> None:
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.drop_last = drop_last
        self.epoch = 0
        self.skip_batches = 0  # batches of the current epoch already consumed (mid-epoch resume)
        self._cached: tuple[tuple[int, int, int], list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (memoized: len() is asked for often)."""
        key = (self.epoch, *_rank_and_world())
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._make_batches())
        return self._cached[1]

    def _make_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.drop_last:  # random rows left out, before length grouping would pick the shortest ones
            n -= n % self.batch_size
            order = order[:n]
        if self.group_by_length:
            window = self.batch_size * self.WINDOW_BATCHES
            chunks = [order[i : i + window] for i in range(0, n, window)]
            order = torch.cat([c[self.lengths[c].argsort(descending=True, stable=True)] for c in chunks])
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        if self.group_by_length and self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        rank, world = _rank_and_world()
        if world > 1:
            # every rank gets as many batches (their collectives stay in step): the first ones again, marked as
            # repeats (rows offset by the data's size, ListDataset) so metrics count each row once
            # cycled: a split of fewer batches than half the ranks needs some batches more than once
            per_rank, offset = math.ceil(len(batches) / world), len(self.lengths)
            repeats = [[i + offset for i in batches[j % len(batches)]] for j in range(per_rank * world - len(batches))]
            batches = (batches + repeats)[rank::world]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()[self.skip_batches :]
        self.skip_batches = 0
        yield from batches

    def __len__(self) -> int:
        return len(self.batches())


class Collator:
    """Pads input_ids/token_type_ids/labels to the longest sequence in the batch (or a multiple of
    `pad_to_multiple_of`, which keeps shapes few for torch.compile and tensor cores)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def _padded_length(self, longest: int) -> int:
        m = self.pad_to_multiple_of  # = max_length gives the pad-to-max baseline
        return longest if not m else math.ceil(longest / m) * m

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        width = self._padded_length(longest)
        batch = {
            "input_ids": _pad([e["input_ids"] for e in examples], width, self.pad_token_id),
            "attention_mask": _pad([[1] * len(e["input_ids"]) for e in examples], width, 0),
        }
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = _pad([e["token_type_ids"] for e in examples], width, 0)
        if "index" in examples[0]:  # the row in its source file: predictions.jsonl
            batch["index"] = torch.tensor([e["index"] for e in examples])
        if examples[0].get(REPEAT):  # a Python bool: the step reads it without a device sync
            batch[REPEAT] = True
        if "labels" not in examples[0]:  # a file to predict on
            return batch
        labels = [e["labels"] for e in examples]
        if isinstance(labels[0], torch.Tensor):  # multi-label 0/1 vectors
            batch["labels"] = torch.stack(labels)
        elif isinstance(labels[0], (list, tuple)):
            batch["labels"] = _pad(labels, width, IGNORE_INDEX)
        else:
            batch["labels"] = torch.tensor(labels)
        return batch


def _pad(seqs: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out
