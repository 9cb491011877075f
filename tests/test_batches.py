"""The loader serves exactly the sampler's batches: a short batch stays a batch of its own wherever
length grouping or DDP dealing puts it, so grouping survives and a mid-epoch resume skips exactly the
consumed batches. Sizes here never divide by the batch size."""

from __future__ import annotations

import json
import pytest

from tunelab.data import TextDataModule
from tunelab.data import sampling
from tunelab.data.datamodule import ListDataset


def datamodule(n: int, batch_size: int, group_by_length: bool, seed: int, drop_last: bool = False) -> TextDataModule:
    dm = TextDataModule(tokenizer="unused", name="t", task="classification", train_file="unused",
                        batch_size=batch_size, group_by_length=group_by_length, seed=seed, drop_last=drop_last)
    # varied lengths so that grouping reorders; "i" identifies the example in the served batch
    rows = ListDataset([{"i": i, "input_ids": [1] * (1 + (i * 7) % 11)} for i in range(n)])
    dm.splits = {"train": rows, "val": rows}
    dm.collator = lambda: (lambda examples: [e["i"] for e in examples])
    return dm


def served_and_planned(dm: TextDataModule, epoch: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    loader = dm.train_dataloader()
    dm.train_sampler.set_epoch(epoch)
    return list(loader), dm.train_sampler.batches()


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_loader_batches_are_the_sampler_batches(group_by_length: bool, seed: int) -> None:
    served, planned = served_and_planned(datamodule(10, 4, group_by_length, seed))
    assert served == planned
    assert sorted(len(b) for b in served) == [2, 4, 4]
    assert sorted(i for b in served for i in b) == list(range(10))


@pytest.mark.parametrize("group_by_length", [False, True])
def test_ddp_ranks_get_whole_batches_covering_every_row(monkeypatch, group_by_length: bool) -> None:
    """2 ranks: each rank's loader serves its own dealt batches, the same count on both ranks (a
    rank with one batch more would hang the other in its all-reduce), and together they cover every row."""
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(sampling, "_rank_and_world", lambda rank=rank: (rank, 2))
        served, planned = served_and_planned(datamodule(45, 8, group_by_length, seed=3), epoch=1)
        assert served == planned
        per_rank.append(served)
    assert len(per_rank[0]) == len(per_rank[1]) == 3  # 6 batches (5 of 8, 1 of 5) dealt round-robin
    assert {i for batches in per_rank for b in batches for i in b} == set(range(45))


def test_the_batch_repeated_to_even_out_ranks_is_marked_and_collated_as_a_repeat(monkeypatch) -> None:
    """40 rows in 5 batches of 8 dealt to 2 ranks: rank 1's third batch is batch 0 again, its rows marked (the
    module trains on it but counts no metric twice), and the collated batch says so; the rest cover every row once."""
    served = []
    for rank in (0, 1):
        monkeypatch.setattr(sampling, "_rank_and_world", lambda rank=rank: (rank, 2))
        dm = datamodule(40, 8, False, seed=0)
        dm.collator = lambda: (lambda examples: [(e["i"], e.get(sampling.REPEAT, False)) for e in examples])
        served.append(list(dm.val_dataloader()))
    assert [len(batches) for batches in served] == [3, 3]
    repeated = [b for batches in served for b in batches if b[0][1]]
    assert repeated == [[(i, True) for i in range(8)]] and served[1][2] == repeated[0]
    counted = sorted(i for batches in served for b in batches for i, repeat in b if not repeat)
    assert counted == list(range(40))
    collated = sampling.Collator(0)([{"input_ids": [5], "labels": 1, sampling.REPEAT: True}])
    assert collated[sampling.REPEAT] is True and "repeat" not in sampling.Collator(0)([{"input_ids": [5], "labels": 1}])


@pytest.mark.parametrize("rows,batch_size,world", [(5, 16, 3), (3, 1, 8), (17, 4, 8)])
def test_every_rank_gets_a_batch_when_a_split_has_fewer_batches_than_ranks(monkeypatch, rows, batch_size, world) -> None:
    """A small val split on many devices (1 batch, 3 ranks): every rank gets as many batches (Lightning refuses a
    rank with none), the repeats are marked, and the unmarked rows are each row once."""
    served = []
    for rank in range(world):
        monkeypatch.setattr(sampling, "_rank_and_world", lambda rank=rank: (rank, world))
        served.append(sampling.BatchOrderSampler([3] * rows, batch_size, seed=1).batches())
    assert len({len(batches) for batches in served}) == 1 and len(served[0]) >= 1
    counted = sorted(i for batches in served for b in batches for i in b if i < rows)
    assert counted == list(range(rows))
    assert all(i < 2 * rows for batches in served for b in batches for i in b)


def test_resume_skips_exactly_the_consumed_batches() -> None:
    dm = datamodule(45, 8, group_by_length=True, seed=0)
    full, planned = served_and_planned(dm)
    assert [len(b) for b in planned].index(5) < len(planned) - 1, "short batch should land mid-epoch for this seed"
    loader = dm.train_dataloader()
    dm.train_sampler.skip_batches = 3  # what Resilience sets from a checkpoint taken after 3 batches
    assert list(loader) == full[3:]
    assert list(loader) == full  # the skip applies to the resumed epoch only


@pytest.mark.parametrize("group_by_length", [False, True])
def test_drop_last_leaves_out_only_the_short_training_batch(monkeypatch, group_by_length: bool) -> None:
    """Every training batch has the full size (one shape for compiled training), alone and dealt to 2
    ranks; each epoch leaves out other rows; evaluation still serves every row."""
    served, planned = served_and_planned(datamodule(10, 4, group_by_length, seed=1, drop_last=True))
    assert served == planned and [len(b) for b in served] == [4, 4]
    assert len({i for b in served for i in b}) == 8
    dm = datamodule(10, 4, group_by_length, seed=1, drop_last=True)
    epochs = [{i for b in served_and_planned(dm, epoch)[0] for i in b} for epoch in range(4)]
    assert set().union(*epochs) == set(range(10)), "the left-out rows must change with the epoch"
    assert sorted(i for b in dm.val_dataloader() for i in b) == list(range(10))
    for rank in (0, 1):
        monkeypatch.setattr(sampling, "_rank_and_world", lambda rank=rank: (rank, 2))
        served, _ = served_and_planned(datamodule(45, 8, group_by_length, seed=3, drop_last=True))
        assert [len(b) for b in served] == [8, 8, 8]  # 5 full batches of 8 dealt to 2 x 3 slots


@pytest.mark.parametrize("max_length", [128, 12])  # 12: most rows truncated, a pair's longer text first
@pytest.mark.parametrize("data, text, pair", [("sst2", "sentence", None), ("stsb", "sentence1", "sentence2")])
def test_encoded_rows_hold_the_tokenizers_ids_and_a_pairs_type_ids(tmp_path, data: str, text: str, pair,
                                                                     max_length: int) -> None:
    """encode_file calls the fast tokenizer's backend for ids only (text.encode_texts); the stored rows still
    equal the tokenizer's own encoding, truncation and a pair's token type ids included, and the batch's mask
    marks each row's real tokens."""
    import csv

    from conftest import FIXTURES, compose_cfg
    from tunelab.pipeline import build_datamodule

    dm = build_datamodule(compose_cfg(tmp_path, f"data={data}", "data.train_limit=40", f"data.max_length={max_length}",
                                      cache=tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    with open(FIXTURES / data / "train.tsv", newline="") as f:
        rows = {i: r for i, r in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))}
    examples = dm.splits["train"].examples
    assert len(examples) > 20
    assert (max(len(e["input_ids"]) for e in examples) == max_length) == (max_length == 12)
    for e in examples:
        row = rows[e["index"]]
        full = dm.tokenizer(row[text], row[pair] if pair else None, truncation=True, max_length=dm.max_length)
        assert e["input_ids"] == full["input_ids"]
        assert ("token_type_ids" in e) == (pair is not None)
        if pair:
            assert e["token_type_ids"] == full["token_type_ids"] and 1 in e["token_type_ids"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["attention_mask"].sum(1).tolist() == [int((ids != 0).sum()) for ids in batch["input_ids"]]


class _TokenizingRows(ListDataset):
    """Rows a forked loader worker tokenizes itself: what it sees of the tokenizer's thread setting."""

    def __init__(self, tokenizer) -> None:
        super().__init__([0, 1, 2, 3])
        self.tokenizer = tokenizer

    def __getitem__(self, i: int):
        import os

        ids = self.tokenizer(["a short text", "and another one"])["input_ids"]
        return os.environ.get("TOKENIZERS_PARALLELISM"), len(ids)


@pytest.mark.timeout(300)
def test_files_tokenize_on_all_cores_and_loader_workers_fork_without_tokenizer_threads(tmp_path, monkeypatch) -> None:
    """The run turns the tokenizer's threads off (conf/hydra/default.yaml); encoding a file turns them on for
    that call only, so workers forked after it run single-threaded (a forked rayon pool would hang them)."""
    import os

    from torch.utils.data import DataLoader

    from conftest import compose_cfg
    from tunelab.pipeline import build_datamodule

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    seen = []
    encode = TextDataModule.encode_file
    monkeypatch.setattr(TextDataModule, "encode_file",
                        lambda self, *a, **k: seen.append(os.environ["TOKENIZERS_PARALLELISM"]) or encode(self, *a, **k))
    dm = build_datamodule(compose_cfg(tmp_path, "data=sst2", "data.train_limit=40", cache=tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    assert seen and set(seen) == {"true"}  # train and test files, each on all cores
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    loader = DataLoader(_TokenizingRows(dm.tokenizer), batch_size=2, num_workers=2, multiprocessing_context="fork",
                        collate_fn=lambda rows: rows)
    assert [row for batch in loader for row in batch] == [("false", 2)] * 4


@pytest.mark.parametrize("collecting", [True, False])
def test_files_encode_without_cyclic_garbage_collection_and_leave_it_as_found(tmp_path, monkeypatch, collecting) -> None:
    import gc

    from conftest import compose_cfg
    from tunelab.pipeline import build_datamodule

    seen = []
    encode = TextDataModule.encode_file
    monkeypatch.setattr(TextDataModule, "encode_file", lambda self, *a, **k: seen.append(gc.isenabled()) or encode(self, *a, **k))
    dm = build_datamodule(compose_cfg(tmp_path, "data=sst2", "data.train_limit=40", cache=tmp_path / "cache"))
    (gc.enable if collecting else gc.disable)()
    try:
        dm.prepare_data()
        assert seen == [False, False] and gc.isenabled() == collecting  # train and test files
    finally:
        gc.enable()


def test_a_tokenizer_without_a_rust_backend_encodes_through_its_own_call() -> None:
    """encode_texts calls a fast tokenizer's backend directly; any other tokenizer through its own call,
    with the same ids and a pair's type ids."""
    from tunelab.data.text import encode_texts
    from tunelab.data.tokenizing import load_tokenizer
    from tunelab.resolvers import minilm_path

    fast = load_tokenizer(minilm_path())

    class WithoutBackend:  # the tokenizer's own __call__ only
        is_fast = False
        model_input_names = fast.model_input_names

        def __call__(self, *args, **kwargs):
            return fast(*args, **kwargs)

    texts = ["a rather long first sentence that the limit cuts", "short"]
    pairs = ["and a second one", "a pair whose second text is the longer of the two by far"]
    for p in (None, pairs):
        expected = encode_texts(fast, texts, p, max_length=10)
        assert encode_texts(WithoutBackend(), texts, p, max_length=10) == expected
        assert ("token_type_ids" in expected) == (p is not None) and max(map(len, expected["input_ids"])) == 10


def test_loader_workers_and_pinned_memory_follow_the_trainers_device(monkeypatch) -> None:
    """data.num_workers / pin_memory null: workers and pinned memory for a run on a GPU, none for a run on the CPU,
    even on a machine with a GPU (trainer=cpu: workers would only compete with the training threads)."""
    import lightning.pytorch as pl
    import torch

    dm = datamodule(10, 4, group_by_length=False, seed=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loader = dm.train_dataloader()  # no trainer (a benchmark's own loop): by the machine
    assert (loader.num_workers, loader.pin_memory) == (2, True)
    dm.trainer = pl.Trainer(accelerator="cpu", logger=False)
    loader = dm.train_dataloader()
    assert (loader.num_workers, loader.pin_memory) == (0, False)


def test_a_tokenizer_saved_again_in_its_dir_does_not_reuse_the_old_ids(tmp_path) -> None:
    """The encoded-file cache is keyed by the tokenizer dir's files too, not only its path."""
    import transformers

    from conftest import FIXTURES
    from tunelab.resolvers import minilm_path

    tokenizer_dir = tmp_path / "tok"
    transformers.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(tokenizer_dir)

    def first_ids() -> list[int]:
        dm = TextDataModule(tokenizer=str(tokenizer_dir), name="t", task="classification", train_file="unused",
                            format="tsv", text_column="sentence", cache_dir=str(tmp_path / "cache"))
        return dm.encoded(str(FIXTURES / "sst2" / "dev.tsv"))["input_ids"][0]

    before = first_ids()
    saved = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = saved["model"]["vocab"]  # another vocabulary: the first word's id and [unused5]'s swapped
    word = next(token for token, i in vocab.items() if i == before[1])
    vocab[word], vocab["[unused5]"] = vocab["[unused5]"], vocab[word]
    (tokenizer_dir / "tokenizer.json").write_text(json.dumps(saved))
    assert first_ids() != before
