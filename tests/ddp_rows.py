"""Callbacks for the DDP and interruption tests (importable by the rank processes Lightning starts, which
re-run train.py from the project root)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl


class RecordTrainingRows(pl.Callback):
    """Writes <run dir>/rows_rank<k>.json: the real token ids of every row this rank trained on; rank 0
    adds those of the whole training split."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
            self.seen.append([t for t, m in zip(ids, mask) if m])

    def on_train_end(self, trainer, pl_module) -> None:
        out = {"seen": self.seen}
        if trainer.is_global_zero:
            out["train"] = [e["input_ids"] for e in trainer.datamodule.splits["train"].examples]
        Path(trainer.default_root_dir, f"rows_rank{trainer.global_rank}.json").write_text(json.dumps(out))


def assert_every_row_trained_once(run_dir: Path, rows_per_rank: int, repeated: int) -> None:
    """From RecordTrainingRows' files of a 2-rank run: the ranks together trained on every training row, and
    only `repeated` rows (the batch repeated to give both ranks the same count) more than once."""
    ranks = [json.loads((run_dir / f"rows_rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(r["seen"]) for r in ranks] == [rows_per_rank, rows_per_rank]
    seen = Counter(tuple(row) for r in ranks for row in r["seen"])
    train = Counter(tuple(row) for row in ranks[0]["train"])
    assert not train - seen, "rows no rank trained on"
    assert sum((seen - train).values()) == repeated, "only the one padding batch may repeat rows"


class CountBroadcasts(pl.Callback):
    """Writes <run dir>/broadcasts_rank<k>.json: the torch.distributed.broadcast calls made while this rank
    trained (Lightning >= 2.5.2 makes one before every batch unless tunelab's Resilience turns it off)."""

    def __init__(self) -> None:
        self.calls = 0

    def on_train_start(self, trainer, pl_module) -> None:
        import torch.distributed as dist

        self._broadcast = dist.broadcast

        def counting(*args, **kwargs):
            self.calls += 1
            return self._broadcast(*args, **kwargs)

        dist.broadcast = counting

    def on_train_end(self, trainer, pl_module) -> None:
        import torch.distributed as dist

        dist.broadcast = self._broadcast
        Path(trainer.default_root_dir, f"broadcasts_rank{trainer.global_rank}.json").write_text(json.dumps(self.calls))


class NonFiniteLossOnRank1(pl.Callback):
    """Rank 1's training loss is NaN at optimizer step `step`, its gradients finite (so no NaN reaches rank 0
    through the gradient all-reduce); rank 0's losses stay finite."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank != 1:
            return
        loss_fn = pl_module.loss_fn
        original = loss_fn.forward

        def forward(*args, **kwargs):
            loss = original(*args, **kwargs)
            return loss + float("nan") * loss.detach() if trainer.global_step == self.step else loss

        loss_fn.forward = forward


class SignalAtBatch(pl.Callback):
    """Delivers SIGTERM (or `signum`) to the run's Resilience guard at the end of training batch `batch` (counted
    over the whole fit), as the signal handler would: a stop requested at an exact batch."""

    def __init__(self, batch: int, signum: int = 15) -> None:
        self.batch, self.signum = batch, signum
        self._seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import signal

        from tunelab.resilience import find_resilience

        if self._seen == self.batch:
            find_resilience(trainer)._request_stop(signal.Signals(self.signum), None)
        self._seen += 1


class NotifyWithToken(pl.Callback):
    """A user's callback that takes a secret (a chat webhook's token, say): the redaction tests pass one."""

    def __init__(self, token: str) -> None:
        self.token = token
