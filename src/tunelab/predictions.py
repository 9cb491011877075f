"""predictions.jsonl: one JSON object per test (or predicted) example, ordered by its row in the source
file. The module keeps each batch's task outputs on the device during the epoch (`gather_rows` moves
them to the host once, at its end); the task turns a row into fields (`Task.prediction_record`); the
example supplies where it comes from and its input text."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist

from tunelab.run_layout import PREDICTIONS_FILE

INPUT_FIELDS = ("text", "text_pair", "tokens")


def gather_rows(batches: Sequence[tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]]) -> list[dict]:
    """Per-example rows {"index", "gold", "outputs"} (host tensors) of an epoch's (index, labels, outputs)
    batches, from every rank onto rank 0 (other ranks get []), one per index in index order."""
    rows = []
    for index, gold, outputs in batches:
        gold = gold.cpu() if gold is not None else None
        outputs = {k: v.cpu() for k, v in outputs.items()}
        for i, idx in enumerate(index.tolist()):
            # clone: a row view would carry (and pickle, under DDP) its whole batch
            rows.append({"index": idx, "gold": None if gold is None else gold[i].clone(),
                         "outputs": {k: v[i].clone() for k, v in outputs.items()}})
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(rows, parts, dst=0)
        if parts is None:
            return []
        rows = [row for part in parts for row in part]
    unique = {row["index"]: row for row in rows}  # DDP deals the last batches twice to even out the ranks
    return [unique[i] for i in sorted(unique)]


def records(rows: Iterable[dict], examples: Sequence[dict], task: Any, label_names: Sequence[str]) -> Iterable[dict]:
    """The JSON objects of predictions.jsonl: index, file, the input text, then the task's fields."""
    by_index = {e["index"]: e for e in examples}
    for row in rows:
        example = by_index[row["index"]]
        yield {
            "index": row["index"],
            "file": example["file"],
            **{k: example[k] for k in INPUT_FIELDS if k in example},
            **task.prediction_record(example | row["outputs"], row["gold"], list(label_names)),
        }


def write(out_dir: Path, module: Any, examples: Sequence[dict]) -> list[dict]:
    """<out_dir>/predictions.jsonl from the module's last test / predict epoch (written atomically); returns
    the records written ([] and no file when the task writes no predictions)."""
    if not module.predictions:
        return []
    path = Path(out_dir) / PREDICTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    written = list(records(module.predictions, examples, module.task, module.hparams.label_names))
    tmp = path.with_name(f".{PREDICTIONS_FILE}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in written)
    os.replace(tmp, path)
    return written

