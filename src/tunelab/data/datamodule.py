"""The base LightningDataModule of every task: tokenize each file once (cached on disk across runs), split
deterministically, serve dynamically padded batches (TextDataModule, the token and LM modules extend it)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader

from tunelab.callbacks import collection_paused
from tunelab.data.cache import cached, file_stats
from tunelab.data.labels import LabelSet
from tunelab.data.readers import existing_file
from tunelab.data.sampling import BatchOrderSampler, Collator, ListDataset
from tunelab.data.tokenizing import all_cores_tokenizing, load_tokenizer, with_pad_token
from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FILE_KEYS = tuple(f"{split}_file" for split in SPLITS)  # the data config's keys of the splits' files


def splits_read(tests_trained_model: bool, test_file: str | None) -> tuple[str, ...]:
    """The splits a run reads: a trained model tested on a test file of its own reads that split alone; otherwise
    all three (val / test cut from the training file when they have no file). validation checks those files."""
    return ("test",) if tests_trained_model and test_file else SPLITS


# how batches are loaded and padded (padding is masked), not which examples train: a resumed run may change them
# (resuming), and a trained model is tested with this machine's (tested_data.use_trained_data)
LOADER_KEYS = frozenset({"num_workers", "pin_memory", "eval_batch_size", "cache_dir", "predict_file",
                         "pad_to_multiple_of"})


class BaseDataModule(pl.LightningDataModule):
    """Shared by every task: file -> cached encoded examples -> train/val/test splits -> loaders.

    Subclasses implement `encode_file(path, labelled) -> dict[str, list]` (the tokenized columns, a raw
    "label" column when the task has per-example labels and `labelled`, and each row's "index" and
    "file" and its input text for predictions.jsonl) and may override `finalize_labels`.
    """

    def __init__(
        self,
        tokenizer: str,
        name: str,
        task: str,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 42,
        train_limit: int | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        group_by_length: bool = False,
        pad_to_multiple_of: int | None = None,
        drop_last: bool = False,
        cache_dir: str | None = None,
        seed: int = 0,
        encoding: str = "utf-8",
    ) -> None:
        super().__init__()
        self.tokenizer_path = tokenizer
        self.name, self.task = name, task
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.predict_file = predict_file  # unlabelled rows for predict.py
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.train_limit = split_seed, train_limit
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory  # None: as _loader decides
        self.group_by_length = group_by_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.drop_last = drop_last
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.seed = seed
        self.encoding = encoding
        self._tokenizer = None
        self.splits: dict[str, ListDataset] = {}
        self.label_names: list[str] = []
        self.class_counts: list[int] | None = None
        self.label_info: dict[str, Any] = {}  # TransformerModule's label_info (the task binds it)
        self.train_sampler: BatchOrderSampler | None = None
        self.trained_label_names: list[str] | None = None  # set by test_trained_model
        self.configured_label_names: list[str] | None = None  # data.label_names, where a datamodule takes them
        self.trained_names_ordered = False

    def test_trained_model(self, label_names: Sequence[str], tokenizer: str, ordered_names: bool = False) -> None:
        """Testing a trained model: the text is tokenized by its tokenizer, labels map to the ids its head was
        trained with (not the sorted labels of this training file, which may miss a class), and a test split
        with its own file is read alone. `ordered_names`: its run was given the names in order (data.label_names),
        so a file's ids 0..n-1 mean them."""
        self.trained_label_names = [str(n) for n in label_names]
        self.trained_names_ordered = ordered_names
        if os.path.isabs(tokenizer) and not os.path.isdir(tokenizer):
            raise ConfigError(f"the tokenizer this checkpoint was trained with is gone ({tokenizer}): pass "
                              "model.tokenizer=<where it is now>; one trained on the text (char, byte_bpe) is kept in "
                              "the run's exported model dir (hf_model or merged) too.")
        if tokenizer != self.tokenizer_path:
            self.tokenizer_path, self._tokenizer = tokenizer, None

    def trained_tokenizer_dir(self) -> str | None:
        """Where a tokenizer this datamodule trained on the training text lives (None: a pretrained one)."""
        return None

    def splits_read(self) -> tuple[str, ...]:
        """The splits setup() builds (splits_read)."""
        return splits_read(self.trained_label_names is not None, self.files["test"])

    # ---- tokenizer and cache -------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = with_pad_token(load_tokenizer(self.tokenizer_path))
        return self._tokenizer

    def cache_key(self, path: Path) -> dict:
        """What the encoded columns of `path` depend on: the file as it is now, the tokenizer, the options."""
        stat = path.stat()
        return {
            "kind": type(self).__name__,
            "file": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "tokenizer": str(Path(self.tokenizer_path).resolve()) if os.path.isdir(self.tokenizer_path) else self.tokenizer_path,
            "tokenizer_files": file_stats(self.tokenizer_path),
            "max_length": self.max_length,
            "encoding": self.encoding,
            "options": self.encoding_options(),
        }

    def encoding_options(self) -> dict:
        """Everything besides the file and tokenizer that changes the encoded examples."""
        return {}

    def encoded(self, file: str) -> dict[str, list]:
        """Encoded columns of a file, from the cache when this file was tokenized before."""
        path = existing_file(file)
        return cached(self.cache_dir, path.stem, self.cache_key(path), lambda: self._encode(path))

    def encode_file(self, path: Path, labelled: bool = True) -> dict[str, list]:
        raise NotImplementedError

    def _encode(self, path: Path, labelled: bool = True) -> dict[str, list]:
        # no cyclic garbage collection while a file's rows are built: each collection walks every object the
        # run holds (0.2 s of SST-2's 2 s on CPU), and lists of token ids form no cycles to collect
        with collection_paused(), all_cores_tokenizing():
            return self.encode_file(path, labelled)

    # ---- Lightning hooks -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        for split in self.splits_read():
            if self.files[split]:
                self.encoded(self.files[split])

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":  # only the unlabelled file: label names come with the trained model
            if "predict" not in self.splits:
                path = existing_file(self.predict_file or "", "data.predict_file")
                self.splits["predict"] = ListDataset(_rows(self._encode(path, labelled=False)))
            return
        needed = self.splits_read()
        if set(needed) <= set(self.splits):
            return
        if not self.files["train"] and needed == SPLITS:
            raise ConfigError(f"data={self.name} has no data.train_file to train on or cut splits from; "
                              "pass data.train_file=<file>.")
        examples = {s: _rows(self.encoded(f)) for s, f in self.files.items() if f and s in needed}
        if needed == SPLITS:
            examples = self._carve_missing_splits(examples)
        for split, rows in examples.items():  # before finalize_labels: labels are derived from the train split
            if not rows:
                fix = "data.train_file" if split == "train" else f"data.{split}_file or data.{split}_fraction"
                if split == "train" and self.encoded(self.files["train"])["input_ids"]:  # the carved splits took all
                    fix = "data.val_fraction / data.test_fraction, or give data.val_file / data.test_file"
                raise ConfigError(
                    f"the {split} split of data={self.name} is empty ({self.files[split] or self.files['train']}); "
                    f"check {fix}{self.empty_split_hint()}."
                )
        self.finalize_labels(examples)
        # a trained model under test takes any batch size; only training needs a batch's worth of rows
        training = "train" in examples and self.trained_label_names is None
        if training and self.batch_size > len(examples["train"]):
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the {len(examples['train'])}-row training split; "
                "lower data.batch_size."
            )
        self.splits = {s: ListDataset(rows) for s, rows in examples.items()}
        log.info("data=%s: %s", self.name, {s: len(d) for s, d in self.splits.items()})

    def _carve_missing_splits(self, examples: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """Val/test without their own file are carved from train by a permutation of split_seed;
        train_limit then keeps a random subset of the remaining training rows."""
        train = examples["train"]
        g = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(train), generator=g).tolist()
        out: dict[str, list[dict]] = {}
        start = 0
        for split, fraction in (("val", self.val_fraction), ("test", self.test_fraction)):
            if split in examples:
                out[split] = examples[split]
            else:
                n = max(1, round(fraction * len(train)))
                out[split] = [train[i] for i in order[start : start + n]]
                start += n
        rest = order[start:]
        if self.train_limit:
            rest = rest[: self.train_limit]
        out["train"] = [train[i] for i in sorted(rest)]
        return {s: out[s] for s in SPLITS}

    def empty_split_hint(self) -> str:
        """More of the fix for an empty split, where this datamodule's own settings can empty one."""
        return ""

    def label_set(self, train_labels: Iterable[str], kind: str, numeric_ids: bool = False) -> LabelSet:
        """The run's labels: a trained model's names, else data.label_names, else the training split's, sorted. A
        file's ids 0..n-1 (`numeric_ids`) are read only where names were given in an order: sorted names have none
        a file's ids could mean (a 0 would silently be the alphabetically first class)."""
        ordered = bool(self.configured_label_names) or self.trained_names_ordered
        return LabelSet(self.trained_label_names or self.configured_label_names, train_labels, kind,
                        numeric_ids=numeric_ids and ordered, trained=self.trained_label_names is not None)

    def finalize_labels(self, examples: dict[str, list[dict]]) -> None:
        """Turn raw labels into training targets (in place). Default: nothing to do."""

    # ---- loaders -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """The ids the tokenizer makes: the model must embed them all (causal LM grows its embeddings to them)."""
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        """The id batches are padded with: the tokenizer's pad token (with_pad_token)."""
        if self.tokenizer.pad_token_id is None:
            raise ConfigError(f"tokenizer {self.tokenizer_path} has no pad or eos token to pad batches with; give it "
                              "one (tokenizer.pad_token = ..., save_pretrained) or set model.tokenizer to one that "
                              "has.")
        return self.tokenizer.pad_token_id

    def collator(self) -> Collator:
        return Collator(self.pad_token_id, self.pad_to_multiple_of)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        data = self.splits[split]
        sampler = BatchOrderSampler(
            [len(e["input_ids"]) for e in data.examples],
            batch_size,
            seed=self.seed,
            shuffle=shuffle,
            group_by_length=self.group_by_length and shuffle,
            drop_last=self.drop_last and split == "train",  # evaluation always sees every row
        )
        if split == "train":
            self.train_sampler = sampler
        # a run on a GPU overlaps host-side batching with compute (pinned memory, worker processes); a run on
        # the CPU (trainer=cpu on a GPU machine too) would only set workers against the training threads
        trainer = self.trainer
        gpu = isinstance(trainer.accelerator, CUDAAccelerator) if trainer is not None else torch.cuda.is_available()
        workers = self.num_workers if self.num_workers is not None else (2 if gpu else 0)
        return DataLoader(
            data,
            batch_sampler=sampler,
            collate_fn=self.collator(),
            num_workers=workers,
            pin_memory=self.pin_memory if self.pin_memory is not None else gpu,
            persistent_workers=workers > 0,
            # own generator: creating a loader iterator must not draw from the global RNG that dropout
            # uses, or a resumed run (which creates loaders in a different order) would diverge
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size, shuffle=False)


def _rows(columns: dict[str, list]) -> list[dict]:
    keys = list(columns)
    return [dict(zip(keys, values)) for values in zip(*(columns[k] for k in keys))]
