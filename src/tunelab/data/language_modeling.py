"""Causal language-modelling data: documents -> token stream -> fixed-size blocks, with either packing
(documents joined by EOS and cut into full blocks: no padding) or per-document blocks (each document
chunked on its own, its last block padded). Val/test are contiguous ranges at the end of the stream."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import transformers

from tunelab.data.datamodule import BaseDataModule
from tunelab.data.tokenizing import ids_only
from tunelab.data.readers import existing_file, read_documents
from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
UNK = "<unk>"
# model.tokenizer values that train a tokenizer on the training split instead of loading one
TRAINED_TOKENIZERS = ("char", "byte_bpe")


class LanguageModelingDataModule(BaseDataModule):
    """`tokenizer` is a local HF tokenizer path, or `char` / `byte_bpe:<vocab size>`: a tokenizer trained
    with the `tokenizers` library on the training part of the text, saved as a PreTrainedTokenizerFast
    directory in the cache (reused by later runs, loadable with AutoTokenizer.from_pretrained)."""

    def __init__(
        self,
        *args: Any,
        format: str = "txt",
        text_column: str = "text",
        document_separator: str = "\n\n",
        block_size: int = 128,
        packing: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if block_size < 2:
            raise ConfigError(f"data.block_size={block_size} must be at least 2 (a token and its successor).")
        self.format, self.text_column, self.separator = format, text_column, document_separator
        self.block_size, self.packing = block_size, packing
        self.max_length = block_size  # what BaseDataModule's cache key records

    # ---- tokenizer -----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            spec = str(self.tokenizer_path)
            if self._trains_tokenizer():
                self._tokenizer = self._trained_tokenizer(spec)  # its pad token is its end-of-text
            else:
                self._tokenizer = super().tokenizer
            if self._tokenizer.eos_token is None:  # the model may well be a decoder: its tokenizer lacks the token
                raise ConfigError(f"tokenizer {spec} has no eos_token, which causal LM needs between documents; give "
                                  "it one (tokenizer.eos_token = ..., save_pretrained), set model.tokenizer to one "
                                  "that has it, or train one on the text: model.tokenizer=char or byte_bpe:<size>.")
        return self._tokenizer

    def _trains_tokenizer(self) -> bool:
        return is_trained_tokenizer(self.tokenizer_path)

    def trained_tokenizer_dir(self) -> str | None:
        return str(self.tokenizer_dir(str(self.tokenizer_path)).resolve()) if self._trains_tokenizer() else None

    def tokenizer_dir(self, spec: str) -> Path:
        if not self.files["train"]:  # testing a trained model on a test file alone
            raise ConfigError(f"model.tokenizer={spec} is trained on the training text: pass data.train_file=<the file "
                              "the model was trained on>.")
        path = existing_file(self.files["train"], keys="data.train_file")
        key = json.dumps([spec, str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns, self._train_text_fraction()])
        root = self.cache_dir or Path(".cache/tunelab")
        return root / f"{_tokenizer_dir_prefix(spec)}{hashlib.sha1(key.encode()).hexdigest()[:12]}"

    def _train_text_fraction(self) -> float:
        """The part of the training file that becomes the train split (val/test are cut from its end)."""
        carved = (self.val_fraction if not self.files["val"] else 0) + (self.test_fraction if not self.files["test"] else 0)
        return 1.0 - carved

    def _trained_tokenizer(self, spec: str) -> transformers.PreTrainedTokenizerFast:
        out = self.tokenizer_dir(spec)
        if not (out / "tokenizer.json").is_file():
            docs = read_documents(self.files["train"], self.format, self.text_column, self.separator,
                                  encoding=self.encoding)
            text = self.separator.join(docs)
            text = text[: int(len(text) * self._train_text_fraction())]
            tok = train_tokenizer(spec, text)
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            tok.save_pretrained(tmp)
            if out.exists():  # another process won the race: keep its copy
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, out)
            log.info("trained a %s tokenizer (%d tokens) -> %s", spec, len(tok), out)
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(out))

    def cache_key(self, path: Path) -> dict:
        key = super().cache_key(path)
        if self._trains_tokenizer():
            key["tokenizer"] = str(self.tokenizer_dir(self.tokenizer_path))
        return key

    # ---- encoding ------------------------------------------------------------------------------
    def encoding_options(self) -> dict:
        return {"format": self.format, "text_column": self.text_column, "separator": self.separator,
                "block_size": self.block_size, "packing": self.packing}

    def encode_file(self, path: Path, labelled: bool = True) -> dict[str, list]:
        docs = read_documents(path, self.format, self.text_column, self.separator, encoding=self.encoding)
        if not docs:
            raise ConfigError(f"{path} has no text; check data.format / data.text_column.")
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer(docs, add_special_tokens=False, **ids_only())["input_ids"]
        blocks = pack_blocks(ids, eos, self.block_size) if self.packing else document_blocks(ids, eos, self.block_size)
        return {"input_ids": blocks}

    def _carve_missing_splits(self, examples: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """Contiguous ranges of the token stream (blocks are in stream order): train = the head, then
        val, then test, each by its fraction of the tokens, so no val/test text appears in train."""
        train = examples["train"]
        lengths = torch.tensor([len(e["input_ids"]) for e in train])
        offsets = (lengths.cumsum(0) - lengths).double() / max(int(lengths.sum()), 1)  # where each block starts
        val = 0.0 if "val" in examples else self.val_fraction
        test = 0.0 if "test" in examples else self.test_fraction
        n = len(train)
        val_start = int(torch.searchsorted(offsets, 1.0 - val - test)) if val or test else n
        test_start = int(torch.searchsorted(offsets, 1.0 - test)) if test else n
        # every carved split keeps at least one block
        test_start = min(test_start, n - 1) if test else n
        val_start = min(val_start, test_start - 1) if val else test_start
        out = {
            "val": examples.get("val", train[val_start:test_start]),
            "test": examples.get("test", train[test_start:]),
        }
        rest = list(range(max(val_start, 0)))
        if self.train_limit and self.train_limit < len(rest):
            g = torch.Generator().manual_seed(self.split_seed)
            rest = sorted(torch.randperm(len(rest), generator=g)[: self.train_limit].tolist())
        out["train"] = [train[i] for i in rest]
        return {s: out[s] for s in ("train", "val", "test")}

    def empty_split_hint(self) -> str:
        # packed text shorter than one block gives no block at all
        return (f", or a smaller data.block_size (now {self.block_size}) or data.packing=false" if self.packing
                else "")

    def finalize_labels(self, examples: dict[str, list[dict]]) -> None:
        # labels are the inputs: the loss shifts them (losses.shift_for_next_token); padding gets -100
        for rows in examples.values():
            for e in rows:
                e["labels"] = e["input_ids"]
        self.label_names = []
        self.class_counts = None


def pack_blocks(docs: list[list[int]], eos: int, block_size: int) -> list[list[int]]:
    """Concatenate documents, each followed by EOS, and cut into full blocks (the remainder is dropped)."""
    stream = [t for doc in docs for t in (*doc, eos)]
    return [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


def document_blocks(docs: list[list[int]], eos: int, block_size: int) -> list[list[int]]:
    """Each document (+ EOS) chunked on its own; its last, shorter block is padded by the collator."""
    blocks = []
    for doc in docs:
        doc = [*doc, eos]
        blocks += [doc[i : i + block_size] for i in range(0, len(doc), block_size) if len(doc[i : i + block_size]) > 1]
    return blocks


def train_tokenizer(spec: str, text: str) -> transformers.PreTrainedTokenizerFast:
    """`char`: one token per character seen in `text` (+ <unk>, EOS); `byte_bpe:<n>`: byte-level BPE
    with n tokens (GPT-2 style, no unknown tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    kind, _, size = spec.partition(":")
    if kind == "char":
        vocab = {UNK: 0, EOS: 1} | {c: i + 2 for i, c in enumerate(sorted(set(text)))}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        specials = {"unk_token": UNK}
    elif kind == "byte_bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=int(size or 1024), special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator([text[i : i + 100_000] for i in range(0, len(text), 100_000)], trainer)
        specials = {}
    else:
        raise ConfigError(f"model.tokenizer={spec!r}: use a local tokenizer path, char or byte_bpe:<vocab size>.")
    tok.add_special_tokens([EOS])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, **specials)


def _tokenizer_dir_prefix(spec: str) -> str:
    return f"tokenizer-{spec.replace(':', '-')}-"


def trained_from(spec: Any, directory: Any) -> bool:
    """Whether `directory` (a checkpoint's model.tokenizer) holds a tokenizer trained from `spec` (model.tokenizer=
    char, byte_bpe:300); the training text it was trained on is the data's train_file."""
    return is_trained_tokenizer(spec) and Path(str(directory)).name.startswith(_tokenizer_dir_prefix(str(spec)))


def is_trained_tokenizer(spec: Any) -> bool:
    """model.tokenizer=char / byte_bpe / byte_bpe:<n> (not a directory of that name): trained on the training text."""
    return spec is not None and str(spec).split(":")[0] in TRAINED_TOKENIZERS and not os.path.isdir(str(spec))
