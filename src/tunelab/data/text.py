"""Sentence-level data (classification, multi-label, regression) from csv / tsv / jsonl files: one text or
a text pair per row and its label(s) or target."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from tunelab.data.datamodule import BaseDataModule
from tunelab.data.tokenizing import ids_only
from tunelab.data.labels import label_cell, regression_target, single_label, split_labels, target_stats
from tunelab.data.readers import TABLE_FORMATS, read_table, require_columns

log = logging.getLogger(__name__)


def encode_texts(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, list]:
    """The input ids of each text (or text pair), and a pair's token type ids where the model takes them, as
    `tokenizer(texts, pairs, truncation=True, max_length=max_length)` gives them. A fast tokenizer's Rust
    backend is called directly: transformers' conversion of its encodings into dicts of Python lists took
    0.7 s of SST-2's 2.0-2.5 s cold encoding on 2 cores, and unlike the Rust encoding it does not spread
    over more cores."""
    if not tokenizer.is_fast:
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, **ids_only(pairs is not None))
        return {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
    backend = copy.deepcopy(tokenizer.backend_tokenizer)  # a copy: the tokenizer's own settings stay as they are
    # as transformers sets them for that call: its default truncation strategy, and no padding (a tokenizer.json
    # may pad every text to its model's length, as all-MiniLM-L6-v2's does)
    backend.enable_truncation(max_length, strategy="longest_first", direction=tokenizer.truncation_side)
    backend.no_padding()
    encodings = backend.encode_batch(list(zip(texts, pairs)) if pairs is not None else texts)
    columns = {"input_ids": [e.ids for e in encodings]}
    if pairs is not None and "token_type_ids" in tokenizer.model_input_names:
        columns["token_type_ids"] = [e.type_ids for e in encodings]
    return columns


class TextDataModule(BaseDataModule):
    """Sequence-level tasks (classification, multi-label classification, regression) over single sentences
    or sentence pairs from csv/tsv/jsonl files."""

    # settings that only some of its tasks read (key -> those tasks): typed for another task, refused (validation)
    task_keys: ClassVar[Mapping[str, frozenset[str]]] = {
        "threshold": frozenset({"multilabel"}), "label_separator": frozenset({"multilabel"}),
        "standardize_targets": frozenset({"regression"}),
    }

    def __init__(
        self,
        *args: Any,
        format: str = "csv",
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        label_names: Sequence[str] | None = None,
        label_separator: str = ",",
        threshold: float = 0.5,
        standardize_targets: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.format = format
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.configured_label_names = list(label_names) if label_names else None
        self.label_separator, self.threshold = label_separator, threshold
        self.standardize_targets = standardize_targets
        self.truncated = 0

    def encoding_options(self) -> dict:
        return {"format": self.format, "columns": [self.text_column, self.text_pair_column, self.label_column]}

    def encode_file(self, path: Path, labelled: bool = True) -> dict[str, list]:
        # a file to predict on is read by its extension when that names a format (new.csv beside tsv data)
        fmt = self.format if labelled or path.suffix[1:] not in TABLE_FORMATS else path.suffix[1:]
        rows, lines = read_table(path, fmt, encoding=self.encoding)
        columns = {"text_column": self.text_column, "text_pair_column": self.text_pair_column}
        if labelled:
            columns["label_column"] = self.label_column
        # multi-label: an empty cell is an example with no label
        non_empty = () if self.task == "multilabel" else ("label_column",)
        require_columns(rows, columns, path, lines=lines, non_empty=non_empty)
        texts = [str(r[self.text_column]) for r in rows]
        pairs = [str(r[self.text_pair_column]) for r in rows] if self.text_pair_column else None
        columns = encode_texts(self.tokenizer, texts, pairs, self.max_length)
        if labelled:  # JSON lists stay lists (multi-label rows); any other cell is read as stripped text
            columns["label"] = [label_cell(r[self.label_column]) for r in rows]
        columns["row"] = lines  # for error messages
        # where each example comes from and what it says: the fields of predictions.jsonl
        columns["file"] = [str(path)] * len(rows)
        columns["index"] = list(range(len(rows)))
        columns["text"] = texts
        if pairs is not None:
            columns["text_pair"] = pairs
        return columns

    def finalize_labels(self, examples: dict[str, list[dict]]) -> None:
        at_max = sum(len(e["input_ids"]) >= self.max_length for rows in examples.values() for e in rows)
        if at_max:
            log.warning("%d examples were truncated to data.max_length=%d tokens", at_max, self.max_length)
        self.truncated = at_max
        train = examples.get("train", [])  # absent when a trained model is tested on a test file alone
        if self.task == "regression":
            for rows in examples.values():
                for e in rows:
                    e["labels"] = regression_target(e["label"], f"{e['file']}:{e['row']}")
            # the loss learns z-scores of these; metrics and predictions map the outputs back (RegressionTask)
            if train and self.standardize_targets:
                self.label_info = target_stats([e["labels"] for e in train])
        elif self.task == "multilabel":
            for rows in examples.values():
                for e in rows:
                    e["label"] = split_labels(e["label"], self.label_separator)
            labels = self.label_set((n for e in train for n in e["label"]), "label", numeric_ids=True)
            for rows in examples.values():
                for e in rows:
                    e["labels"] = labels.multi_hot(e["label"], f"{e['file']}:{e['row']}")
            self.label_names = labels.names
            positives = sum(e["labels"] for e in train) if train else [0] * len(labels.names)
            self.class_counts = [int(c) for c in positives]
            self.label_info = {"threshold": self.threshold, "train_examples": len(train),
                               "ordered_names": labels.configured}
        else:
            for rows in examples.values():  # a JSON list is a one-line error here, not a TypeError in LabelSet
                for e in rows:
                    single_label(e["label"], f"{e['file']}:{e['row']}")
            labels = self.label_set([e["label"] for e in train], "label", numeric_ids=True)
            labels.require_two(self.files["train"], "classification", "label_column")
            for rows in examples.values():
                for e in rows:
                    e["labels"] = labels.id(e["label"], f"{e['file']}:{e['row']}")
            self.label_names = labels.names
            self.class_counts = labels.counts(e["labels"] for e in train)
            self.label_info = {"ordered_names": labels.configured}  # a tested file's ids 0..n-1 mean the names
        for rows in examples.values():
            for e in rows:
                del e["label"], e["row"]
