"""Entity-level metrics for token classification (seqeval semantics, strict IOB2): an entity is a
B-X followed by any number of I-X; a predicted entity counts as correct only if its type and exact
span match a gold entity. An I-X that does not continue a B-X/I-X of the same type starts nothing
(strict mode). Counts are sum-reduced tensor states, so the metrics are exact under DDP."""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric

from tunelab.losses import IGNORE_INDEX
from tunelab.report_tables import prf


def entity_types(label_names: Sequence[str]) -> list[str]:
    """Sorted entity types of a BIO label set (B-PER, I-PER, O -> [PER]); other labels are outside."""
    return sorted({n[2:] for n in label_names if n[:2] in {"B-", "I-"}})


def spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end-exclusive) of every strict-IOB2 entity in a tag sequence."""
    out: set[tuple[str, int, int]] = set()
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, typ = tag[:2], tag[2:]
        if kind is not None and not (prefix == "I-" and typ == kind):
            out.add((kind, start, i))
            kind = None
        if prefix == "B-":
            kind, start = typ, i
    return out


class EntityCounts(Metric):
    """Per-type true positives, predicted and gold entity counts; `stat` picks what compute() returns:
    "f1" / "precision" / "recall" (micro over types) or "counts" (a [3, n_types] tensor tp/pred/gold)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, label_names: Sequence[str], stat: str = "f1") -> None:
        super().__init__()
        if stat not in {"f1", "precision", "recall", "counts"}:
            raise ValueError(f"stat={stat!r}: use f1, precision, recall or counts")
        self.label_names, self.stat = list(label_names), stat
        self.types = entity_types(self.label_names)
        type_index = {t: i for i, t in enumerate(self.types)}
        # per label id: is it a B- / I- tag, and its entity type (-1 for O and other labels)
        prefixes = [n[:2] for n in self.label_names]
        self.register_buffer("is_begin", torch.tensor([p == "B-" for p in prefixes], dtype=torch.bool), persistent=False)
        self.register_buffer("is_inside", torch.tensor([p == "I-" for p in prefixes], dtype=torch.bool), persistent=False)
        kinds = [type_index.get(n[2:], -1) if p in {"B-", "I-"} else -1 for n, p in zip(self.label_names, prefixes)]
        self.register_buffer("kind", torch.tensor(kinds, dtype=torch.long), persistent=False)
        n = len(self.types)
        for name in ("tp", "pred", "gold"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds, target: [batch, seq] label ids; target == -100 marks positions that are not scored
        (sub-tokens after the first, special tokens, padding): they are skipped by span decoding.
        Decoding is tensor ops on the metric's device (no host round trip, so no GPU sync per step);
        `spans` is the same rule written out for one sentence."""
        if not self.types:
            return
        keep = target != IGNORE_INDEX
        gold_kind, gold_end, gold_begin = self._entities(target, keep)
        pred_kind, pred_end, pred_begin = self._entities(preds, keep)
        exact = gold_begin & pred_begin & (gold_kind == pred_kind) & (gold_end == pred_end)
        self.tp += self._count(gold_kind, exact)
        self.pred += self._count(pred_kind, pred_begin)
        self.gold += self._count(gold_kind, gold_begin)

    def _entities(self, tags: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For each position: entity type, index where the entity starting there ends (exclusive, in
        original positions) and whether an entity starts there (a kept B- tag)."""
        tags = torch.where(keep, tags, 0).long()
        begin = self.is_begin[tags] & keep
        tagged = (begin | self.is_inside[tags]) & keep
        kind = self.kind[tags]
        seq = tags.shape[1]
        pos = torch.arange(seq, device=tags.device).expand_as(tags)
        # the previous kept position (-1 at the start): ignored positions never split an entity
        last_kept = torch.where(keep, pos, -1).cummax(dim=1).values
        prev = torch.cat([torch.full_like(last_kept[:, :1], -1), last_kept[:, :-1]], dim=1)
        prev_c = prev.clamp(min=0)
        # strict IOB2: I-X continues only a B-X/I-X of the same type; anything else kept is a boundary
        continues = self.is_inside[tags] & keep & (prev >= 0) & tagged.gather(1, prev_c) & (kind.gather(1, prev_c) == kind)
        boundary = torch.where(keep & ~continues, pos, seq)
        next_boundary = boundary.flip(1).cummin(dim=1).values.flip(1)  # first boundary at or after i
        end = torch.cat([next_boundary[:, 1:], torch.full_like(next_boundary[:, :1], seq)], dim=1)
        return kind, end, begin

    def _count(self, kind: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(len(self.types), dtype=torch.long, device=kind.device)
        return counts.scatter_add_(0, kind.clamp(min=0).flatten(), where.long().flatten())

    def compute(self) -> torch.Tensor:
        if self.stat == "counts":
            return torch.stack([self.tp, self.pred, self.gold])
        precision, recall, f1 = prf(self.tp.sum(), self.pred.sum(), self.gold.sum())
        return {"precision": precision, "recall": recall, "f1": f1}[self.stat]
