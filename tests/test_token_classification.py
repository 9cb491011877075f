"""Token classification (NER): CoNLL reading, sub-word label alignment, strict-IOB2 entity metrics,
unknown-tag and loss-mismatch errors, and training runs with the tiny model on fixture sentences."""

import json
import math
import re

import pytest
import torch

from conftest import FIXTURES
from tunelab import prediction_metrics
from tunelab.data.readers import read_conll
from tunelab.data.token_classification import align_labels, word_starts
from tunelab.errors import ConfigError
from tunelab.report_tables import entity_report
from tunelab.span_metrics import EntityCounts, spans
from tunelab.tasks import get_task

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
X = -100


def ids(*tags: str) -> list[int]:
    return [NAMES.index(t) for t in tags]


def test_spans_are_strict_iob2() -> None:
    assert spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert spans(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 1), ("PER", 1, 3)}
    # an I- that does not continue an entity of its type starts nothing (seqeval strict mode)
    assert spans(["O", "I-PER", "I-PER"]) == set()
    assert spans(["B-PER", "I-LOC", "I-PER"]) == {("PER", 0, 1)}


def test_entity_f1_against_hand_computed_spans() -> None:
    # -100 positions (sub-tokens, padding) are dropped before decoding, so they never split a span.
    # sentence 1 (words): gold PER[0,1) LOC[2,3)   pred PER[0,1) exact, LOC[2,4) span too long
    # sentence 2:         gold LOC[0,1) PER[2,3)   pred PER[0,1) wrong type, PER[2,3) exact, orphan I-LOC
    gold = torch.tensor([
        ids("B-PER", "I-PER", "O", "B-LOC", "O") + [X],
        ids("B-LOC", "O", "B-PER", "O", "O", "O"),
    ])
    gold[0, 1] = X  # "I-PER" sits on a sub-token: the word-level sentence is B-PER O B-LOC O
    pred = torch.tensor([
        ids("B-PER", "O", "O", "B-LOC", "I-LOC", "O"),
        ids("B-PER", "O", "B-PER", "O", "I-LOC", "O"),
    ])
    # tp = PER(s1) + PER(s2) = 2; predicted = 4; gold = 4 -> P = R = F1 = 0.5
    f1, precision, recall = (EntityCounts(NAMES, s) for s in ("f1", "precision", "recall"))
    for m in (f1, precision, recall):
        m.update(pred[:1], gold[:1])
        m.update(pred[1:], gold[1:])
    assert precision.compute().item() == pytest.approx(2 / 4)
    assert recall.compute().item() == pytest.approx(2 / 4)
    assert f1.compute().item() == pytest.approx(0.5)

    counts = EntityCounts(NAMES, "counts")
    counts.update(pred, gold)
    report, text = entity_report(counts.compute(), ["LOC", "PER"])
    # LOC: tp 0, pred 1, gold 2; PER: tp 2, pred 3, gold 2
    assert report["classes"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "predicted": 1}
    per = report["classes"]["PER"]
    assert (per["precision"], per["recall"], per["support"]) == (pytest.approx(2 / 3), 1.0, 2)
    assert per["f1"] == pytest.approx(0.8)
    assert report["micro_avg"]["f1"] == pytest.approx(0.5)
    assert "PER" in text and "micro avg" in text


def test_entity_counts_equal_the_spans_rule_on_random_sentences() -> None:
    """EntityCounts decodes spans with tensor ops (no host round trip); on random tag sequences with
    random ignored positions its per-type counts must equal `spans` applied sentence by sentence."""
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    types = ["LOC", "ORG", "PER"]
    gen = torch.Generator().manual_seed(0)
    gold = torch.randint(0, len(names), (400, 12), generator=gen)
    # predictions agree with gold 70% of the time, so exact matches, near misses and type errors all occur
    pred = torch.where(torch.rand(gold.shape, generator=gen) < 0.7, gold,
                       torch.randint(0, len(names), gold.shape, generator=gen))
    gold[torch.rand(gold.shape, generator=gen) < 0.25] = X
    metric = EntityCounts(names, "counts")
    metric.update(pred[:150], gold[:150])
    metric.update(pred[150:], gold[150:])

    expected = torch.zeros(3, len(types), dtype=torch.long)
    for p_row, g_row in zip(pred.tolist(), gold.tolist()):
        kept = [i for i, g in enumerate(g_row) if g != X]
        g_spans = spans([names[g_row[i]] for i in kept])
        p_spans = spans([names[p_row[i]] for i in kept])
        for row, found in enumerate((g_spans & p_spans, p_spans, g_spans)):
            for kind, *_ in found:
                expected[row, types.index(kind)] += 1
    assert expected[0].sum() > 50 and (expected[1] > expected[0]).all()  # the sample exercises every case
    assert torch.equal(metric.compute(), expected)


def test_task_metrics_use_label_names() -> None:
    task = get_task("token_classification").with_labels(NAMES)
    assert get_task("token_classification").label_names == ()  # the shared instance is not mutated
    metrics = task.metrics(len(NAMES))
    logits = torch.nn.functional.one_hot(torch.tensor([ids("B-PER", "I-PER", "O")]), len(NAMES)).float()
    labels = torch.tensor([ids("B-PER", "O", "O")])
    metrics.update(*task.metric_inputs(logits, labels))
    out = metrics.compute()
    assert out["f1"] == 0.0 and out["acc"] == pytest.approx(2 / 3)


def test_align_labels_first_or_all_subtokens() -> None:
    names = ["O", "B-PER", "I-PER"]
    word_ids = [-1, 0, 0, 1, 2, 2, 2, -1]  # [CLS] Wolf ##gang was Moz ##ar ##t [SEP]
    word_labels = [1, 0, 1]
    assert align_labels(word_ids, word_labels, names, False) == [X, 1, X, 0, 1, X, X, X]
    assert align_labels(word_ids, word_labels, names, True) == [X, 1, 2, 0, 1, 2, 2, X]


def test_each_word_keeps_its_own_tag_when_a_word_has_no_sub_token() -> None:
    """A zero-width space (WNUT-17 has U+FE0F words) tokenizes into nothing: its tag is null and the words after
    it keep theirs; the tags after it moved one word left, and the last word read null, as if truncated."""
    from tunelab.data.tokenizing import load_tokenizer
    from tunelab.resolvers import minilm_path

    words = ["Alice", "\u200b", "works", "in", "Tokyo"]
    word_ids = [-1 if w is None else w for w in load_tokenizer(minilm_path())(words, is_split_into_words=True).word_ids()]
    starts = word_starts(word_ids, len(words))
    assert starts[1] == -1 and sorted(starts)[1:] == [1, 2, 3, 4]
    gold = torch.full((len(word_ids),), X)
    gold[torch.tensor([s for s in starts if s >= 0])] = torch.tensor(ids("B-PER", "O", "O", "B-LOC"))
    record = get_task("token_classification").prediction_record(
        {"word_starts": starts, "tokens": words, "pred": gold}, gold, NAMES)
    assert record["gold"] == record["pred"] == ["B-PER", None, "O", "O", "B-LOC"]


def test_read_conll_skips_docstart_and_picks_the_tag_column() -> None:
    sentences = read_conll(FIXTURES / "conll2003" / "train.txt", tag_column=3, delimiter=" ")
    first = sentences[0]
    assert first["tokens"][:3] == ["EU", "rejects", "German"]
    assert first["tags"][:3] == ["B-ORG", "O", "B-MISC"]
    assert first["lines"][0] == 3  # line 1 is -DOCSTART-, line 2 blank
    assert all("-DOCSTART-" not in s["tokens"] for s in sentences)
    wnut = read_conll(FIXTURES / "wnut17" / "wnut17train.conll", tag_column=1, delimiter="\t")
    assert wnut[0]["tokens"][0] == "@paulwalk" and "B-location" in wnut[0]["tags"]


def test_unknown_tag_names_file_and_line(run_cfg, tmp_path) -> None:
    train = tmp_path / "train.conll"
    train.write_text("Paris B-LOC\nis O\nnice O\n\nBob B-PER\nsings O\n\nAnn B-PER\nruns O\n")
    dev = tmp_path / "dev.conll"
    dev.write_text("Rome B-LOC\n\nAcme B-ORG\nsells O\n")
    with pytest.raises(ConfigError) as err:
        run_cfg("data=conll", "loss=token_cross_entropy", f"data.train_file={train}", f"data.val_file={dev}",
                f"data.test_file={dev}", "data.batch_size=1", "trainer=debug")
    message = str(err.value)
    assert f"{dev}:3: tag 'B-ORG' is not in the label set" in message
    assert "data.label_names" in message and "\n" not in message


def test_iob1_tags_are_one_line_naming_file_and_line(run_cfg, tmp_path) -> None:
    """CoNLL-2003's original files are IOB1 (I-PER starts an entity): read as IOB2 they hold no entity, and the
    run trained and reported entity F1 0 with support 0."""
    train = tmp_path / "iob1.conll"
    train.write_text("Peter I-PER\nBlackburn I-PER\nsays O\n\nEU I-ORG\nrejects O\n\nAnn I-PER\nruns O\n")
    with pytest.raises(ConfigError) as err:
        run_cfg("data=conll", "loss=token_cross_entropy", f"data.train_file={train}", "data.batch_size=1",
                "trainer=debug")
    assert re.match(rf"{re.escape(str(train))}:[15]: the tags are IOB1 \(entities start with I-(PER|ORG), no B- tag",
                    str(err.value)), str(err.value)  # the line of the training split's first entity


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])  # sgd, adamax: test_causal_lm.py
def test_token_cross_entropy_fast_dev_run(run_cfg, optimizer: str) -> None:
    extra = ["loss.class_weights=balanced", "loss.label_smoothing=0.1"] if optimizer == "adamw" else []
    metrics, run_dir = run_cfg("data=wnut17", "loss=token_cross_entropy", f"optimizer={optimizer}", "trainer=debug",
                               "data.batch_size=8", *extra)
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["test/loss"])
    assert {"val/f1", "val/precision", "val/recall", "val/acc", "test/f1"} <= set(metrics)
    report = json.loads((run_dir / "test_report.json").read_text())
    assert set(report["classes"]) == {"corporation", "creative-work", "group", "location", "person", "product"}


def test_conll2003_run_keeps_label_names_in_checkpoint(run_cfg) -> None:
    """A short real run: the best checkpoint is chosen on val/f1 and carries the label list."""
    metrics, run_dir = run_cfg("data=conll2003", "loss=token_cross_entropy", "data.train_limit=64",
                               "data.batch_size=16", "trainer.max_epochs=1", "optimizer.lr=1e-3",
                               "data.label_all_subtokens=true")
    assert 0.0 <= metrics["test/f1"] <= 1.0 and 0.0 <= metrics["test/acc"] <= 1.0
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    assert "best-" in best
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["label_names"] == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC",
                                                        "B-MISC", "I-MISC"]
    assert (run_dir / "test_report.txt").read_text().count("MISC") == 1
    # label_all_subtokens trains on every sub-token, but test/f1 scores words, as predictions.jsonl records them
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    recomputed = prediction_metrics.TOKEN_CLASSIFICATION["f1"](records)
    assert metrics["test/f1"] > 0 and metrics["test/f1"] == pytest.approx(recomputed, abs=1e-6)


@pytest.mark.slow
def test_wnut17_experiment_reaches_entity_f1(run_cfg) -> None:
    """The documented run (README): all-MiniLM-L6-v2 on the full WNUT-17 data, test entity F1 >= 0.35."""
    from conftest import SHARED_DATA

    metrics, _ = run_cfg("experiment=wnut17", f"paths.data_dir={SHARED_DATA}", "model=minilm")
    assert metrics["test/f1"] >= 0.35, metrics


@pytest.mark.slow
def test_conll2003_experiment_reaches_dev_entity_f1(run_cfg) -> None:
    from conftest import SHARED_DATA

    metrics, _ = run_cfg("experiment=conll2003", f"paths.data_dir={SHARED_DATA}", "model=minilm")
    assert metrics["val/f1"] >= 0.80, metrics


def test_minilm_learns_entities_on_conll_rows(run_cfg) -> None:
    """The CI-sized version of the NER quality runs: MiniLM on the CoNLL-2003 fixture rows (~180
    training sentences) learns entity spans; an untrained head scores 0 entity F1."""
    metrics, run_dir = run_cfg("model=minilm", "data=conll2003", "loss=token_cross_entropy", "optimizer.lr=3e-4",
                               "data.batch_size=16", "data.max_length=64", "trainer.max_epochs=3",
                               "scheduler=linear", "scheduler.warmup_ratio=0.1")
    import csv

    val_f1 = [float(r["val/f1"]) for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get("val/f1")]
    assert val_f1[-1] > val_f1[0], val_f1
    assert metrics["test/f1"] >= 0.25, metrics  # an untrained head scores 0
