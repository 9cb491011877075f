"""Token classification (NER) data: CoNLL-style files -> sub-word tokens with word-aligned labels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from tunelab.data.datamodule import BaseDataModule
from tunelab.data.tokenizing import ids_only
from tunelab.data.labels import shown
from tunelab.data.readers import read_conll
from tunelab.errors import ConfigError
from tunelab.losses import IGNORE_INDEX
from tunelab.span_metrics import entity_types

log = logging.getLogger(__name__)


class TokenClassificationDataModule(BaseDataModule):
    """Words are split into sub-words by the fast tokenizer (is_split_into_words=True); the first
    sub-token of each word carries the word's tag, the others -100 (or, with label_all_subtokens, the
    word's tag with B- turned into I- so spans stay well-formed). The label list comes from the
    training split (or data.label_names); an unknown tag elsewhere is a ConfigError naming file:line."""

    def __init__(
        self,
        *args: Any,
        token_column: int = 0,
        tag_column: int = -1,
        delimiter: str | None = None,
        label_all_subtokens: bool = False,
        label_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # a shell passes data.delimiter="\t" on as backslash + t: both spell a tab
        self.delimiter = "\t" if delimiter == "\\t" else delimiter
        self.token_column, self.tag_column = token_column, tag_column
        self.label_all_subtokens = label_all_subtokens
        self.configured_label_names = list(label_names) if label_names else None
        self.truncated = 0

    def encoding_options(self) -> dict:
        return {"columns": [self.token_column, self.tag_column], "delimiter": self.delimiter}

    def encode_file(self, path: Path, labelled: bool = True) -> dict[str, list]:
        if not self.tokenizer.is_fast:
            raise ConfigError(
                f"token classification needs a fast tokenizer (word_ids()); {self.tokenizer_path} has none. "
                "Set model.tokenizer to a directory with a tokenizer.json."
            )
        tag_column = self.tag_column if labelled else None  # a file to predict on: tokens only
        sentences = read_conll(path, tag_column, self.token_column, self.delimiter, encoding=self.encoding)
        enc = self.tokenizer(
            [s["tokens"] for s in sentences], is_split_into_words=True, truncation=True, max_length=self.max_length,
            **ids_only(),
        )
        word_ids = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(sentences))]
        if not labelled:  # labelled splits warn in finalize_labels (their tail is not scored)
            cut = sum(max(w, default=-1) + 1 < len(s["tokens"]) for w, s in zip(word_ids, sentences))
            if cut:
                log.warning("%d sentences of %s exceed data.max_length=%d tokens: their words past it get pred null",
                            cut, path, self.max_length)
        return {
            "input_ids": enc["input_ids"],
            "word_ids": word_ids,  # sub-token -> word index (-1: special token)
            "tags": [s["tags"] for s in sentences],
            "lines": [s["lines"] for s in sentences],
            # predictions.jsonl: source, words, and the sub-token that carries each word's prediction
            "file": [str(path)] * len(sentences),
            "index": list(range(len(sentences))),
            "tokens": [s["tokens"] for s in sentences],
            "word_starts": [word_starts(w, len(s["tokens"])) for w, s in zip(word_ids, sentences)],
        }

    def finalize_labels(self, examples: dict[str, list[dict]]) -> None:
        train = examples.get("train", [])  # absent when a trained model is tested on a test file alone
        labels = self.label_set((t for e in train for t in e["tags"]), "tag")
        labels.require_two(self.files["train"], "token classification", "tag_column")
        # entity F1, the monitored metric, would be 0 all run long (a trained model's tags were checked then)
        if not entity_types(labels.names) and self.trained_label_names is None:
            source = "data.label_names" if labels.configured else self.files["train"]
            raise ConfigError(
                f"{source}: the tags {shown(labels.names)} have no B-/I- prefixes; entity F1 scores IOB2 spans: "
                "convert the tags to IOB2 (B-PER, I-PER, O)."
            )
        for split in sorted(examples, key=lambda s: s != "train"):  # the training file's line first
            check_iob2(examples[split])
        truncated = 0
        for split, rows in examples.items():
            # label_all_subtokens trains on every sub-token; val / test score words (their first sub-token), as
            # entity F1 is defined and predictions.jsonl records them
            all_subtokens = self.label_all_subtokens and split == "train"
            for e in rows:
                word_labels = [labels.id(tag, f"{e['file']}:{line}") for tag, line in zip(e["tags"], e["lines"])]
                e["labels"] = align_labels(e["word_ids"], word_labels, labels.names, all_subtokens)
                truncated += max(e["word_ids"]) + 1 < len(e["tags"])
                for key in ("word_ids", "tags", "lines"):
                    del e[key]
        if truncated:
            log.warning("%d sentences were truncated to data.max_length=%d tokens (their tail is not scored)",
                        truncated, self.max_length)
        self.truncated = truncated
        self.label_names = labels.names
        self.class_counts = labels.counts(i for e in train for i in e["labels"])


def check_iob2(sentences: Sequence[dict]) -> None:
    """Entity F1 reads IOB2 spans (an entity starts with B-). A file whose entities all start with I- is IOB1
    (CoNLL-2003's original eng.train): read as IOB2 it holds no entity, and F1 would be 0 with support 0."""
    if not sentences or any(t.startswith("B-") for e in sentences for t in e["tags"]):
        return
    for e in sentences:
        for tag, line in zip(e["tags"], e["lines"]):
            if tag.startswith("I-"):
                raise ConfigError(f"{e['file']}:{line}: the tags are IOB1 (entities start with {tag}, no B- tag in "
                                  "the file); entity F1 scores IOB2 spans: convert the file to IOB2 (an entity's "
                                  "first tag B-, e.g. with seqeval or a short script).")


def word_starts(word_ids: Sequence[int], words: int) -> list[int]:
    """For each of the sentence's words, the position of its first sub-token; -1 for a word with none (cut off by
    max_length, or one the tokenizer turns into no sub-token, such as a zero-width space or U+FE0F)."""
    starts = [-1] * words
    for i, w in enumerate(word_ids):
        if w >= 0 and starts[w] < 0:
            starts[w] = i
    return starts


def align_labels(word_ids: Sequence[int], word_labels: Sequence[int], names: Sequence[str], all_subtokens: bool) -> list[int]:
    """Sub-token labels: the first sub-token of a word gets its label; later ones -100, or with
    `all_subtokens` the word's label (B-X continued as I-X when that label exists)."""
    index = {n: i for i, n in enumerate(names)}
    labels, previous = [], None
    for w in word_ids:
        if w < 0:
            labels.append(IGNORE_INDEX)
        elif w != previous:
            labels.append(word_labels[w])
        elif all_subtokens:
            name = names[word_labels[w]]
            labels.append(index.get("I-" + name[2:], word_labels[w]) if name.startswith("B-") else word_labels[w])
        else:
            labels.append(IGNORE_INDEX)
        previous = w if w >= 0 else None
    return labels
