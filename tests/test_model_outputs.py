"""What a trained run gives out: predictions.jsonl of the test split (one row per example in file order, the
logged test metrics recomputed from it), the exported hf_model dir that transformers.pipeline() loads with
the label names (the merged adapter's: test_peft), and predict.py over unlabelled files."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch
import transformers

from conftest import FIXTURES, compose_cfg, read_metrics
from tunelab.data.readers import read_conll, read_rows
from tunelab.errors import ConfigError
from tunelab.module import TransformerModule
from tunelab.pipeline import run
from tunelab.prediction_files import load_predictions
from tunelab.span_metrics import spans

SHORT = ["data.train_limit=64", "trainer.max_epochs=1"]
RUNS = {
    "classification": [],
    "ner": ["data=conll2003", "loss=token_cross_entropy"],
    # test carved out of the training file: indices are rows of train.tsv
    "regression": ["data=stsb", "loss=mse", "data.test_file=null", "data.test_fraction=0.2"],
    "mean_pooled": ["model.pooling=mean"],  # exported with its own model code (mean_pooling.py)
    "short": ["data.max_length=8"],  # most test sentences cut
    "ner_cut": ["data=conll2003", "loss=token_cross_entropy", "data.max_length=12"],
    # GPT-2's sequence head: the last real token by the pad id, a bias-free score layer
    "gpt2_regression": ["model=gpt2_tiny", "model.tokenizer=${minilm_path:}", "data=stsb", "loss=mse"],
}
SST2 = ["negative", "positive"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """trained(name) -> (metrics, run dir): each run of RUNS once per module."""
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            done[name] = run(compose_cfg(out, *SHORT, *RUNS[name], cache=cache_dir)), out
        return done[name]

    return get


def best_module(run_dir) -> TransformerModule:
    record = json.loads((run_dir / "metrics.json").read_text())
    return TransformerModule.load_from_checkpoint(record["best_checkpoint"], map_location="cpu").eval()


def f32(value: float) -> float:
    """A Python float rounded as the logged float32 metrics are."""
    return torch.tensor(value, dtype=torch.float32).item()


# ---- predictions.jsonl of the test split ---------------------------------------------------------------
def test_classification_predictions_follow_the_file_and_give_the_logged_metrics(trained) -> None:
    metrics, run_dir = trained("classification")
    rows = read_rows(run_dir / "predictions.jsonl", "jsonl")  # in file order
    source = read_rows(FIXTURES / "sst2" / "dev.tsv", "tsv")
    assert [r["index"] for r in rows] == list(range(len(source)))
    assert [r["text"] for r in rows] == [s["sentence"] for s in source]
    assert [r["gold"] for r in rows] == [SST2[int(s["label"])] for s in source]
    assert {r["file"] for r in rows} == {str(FIXTURES / "sst2" / "dev.tsv")}
    for r in rows:
        assert set(r["probs"]) == set(SST2) and math.isclose(sum(r["probs"].values()), 1, rel_tol=1e-5)
        assert r["confidence"] == r["probs"][r["pred"]] == max(r["probs"].values())
    assert f32(sum(r["gold"] == r["pred"] for r in rows) / len(rows)) == metrics["test/acc"]
    f1s = []
    for label in SST2:
        tp = sum(r["gold"] == r["pred"] == label for r in rows)
        predicted, gold = sum(r["pred"] == label for r in rows), sum(r["gold"] == label for r in rows)
        f1s.append(2 * tp / (predicted + gold) if predicted + gold else 0.0)
    assert sum(f1s) / len(f1s) == pytest.approx(metrics["test/f1_macro"], rel=1e-6, abs=1e-7)


def test_ner_predictions_are_word_tags_that_give_the_logged_entity_scores(trained) -> None:
    metrics, run_dir = trained("ner")
    rows = read_rows(run_dir / "predictions.jsonl", "jsonl")  # in file order
    sentences = read_conll(FIXTURES / "conll2003" / "test.txt")
    assert [r["index"] for r in rows] == list(range(len(sentences)))
    assert [r["tokens"] for r in rows] == [s["tokens"] for s in sentences]
    assert [r["gold"] for r in rows] == [s["tags"] for s in sentences]  # no sentence is cut off here
    tp = predicted = gold = 0
    for r in rows:
        assert len(r["pred"]) == len(r["tokens"])
        g, p = spans(r["gold"]), spans(r["pred"])
        tp, predicted, gold = tp + len(g & p), predicted + len(p), gold + len(g)
    precision, recall = tp / max(predicted, 1), tp / max(gold, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert precision == pytest.approx(metrics["test/precision"], abs=1e-6)
    assert recall == pytest.approx(metrics["test/recall"], abs=1e-6)
    assert f1 == pytest.approx(metrics["test/f1"], abs=1e-6)


def test_entity_scores_recomputed_from_cut_sentences_are_the_logged_ones(trained) -> None:
    """Words past data.max_length are null in predictions.jsonl; tunelab.compare's entity scores leave them out,
    as the logged metric does."""
    from tunelab.prediction_metrics import TOKEN_CLASSIFICATION

    metrics, run_dir = trained("ner_cut")
    rows = load_predictions(run_dir)
    assert any(None in r["gold"] for r in rows)
    for stat in ("f1", "precision", "recall"):
        assert TOKEN_CLASSIFICATION[stat](rows) == pytest.approx(metrics[f"test/{stat}"], abs=1e-6)


def test_regression_predictions_of_a_carved_split_index_the_training_file(trained) -> None:
    metrics, run_dir = trained("regression")
    rows = read_rows(run_dir / "predictions.jsonl", "jsonl")  # in file order
    train = read_rows(FIXTURES / "stsb" / "train.tsv", "tsv")
    assert len(rows) == round(0.2 * len(train))
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    for r in rows:
        source = train[r["index"]]
        expected = source["sentence1"], source["sentence2"], float(source["score"])
        assert (r["text"], r["text_pair"], r["gold"]) == expected
        assert r["file"] == str(FIXTURES / "stsb" / "train.tsv") and isinstance(r["pred"], float)
    mse = sum((r["pred"] - r["gold"]) ** 2 for r in rows) / len(rows)
    mae = sum(abs(r["pred"] - r["gold"]) for r in rows) / len(rows)
    assert mse == pytest.approx(metrics["test/mse"], rel=1e-5)
    assert mae == pytest.approx(metrics["test/mae"], rel=1e-5)


# ---- the exported model ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["classification", "mean_pooled"])
def test_exported_classifier_is_the_checkpoint_in_a_pipeline_with_label_names(trained, name: str) -> None:
    _, run_dir = trained(name)
    texts = [s["sentence"] for s in read_rows(FIXTURES / "sst2" / "dev.tsv", "tsv")[:6]]
    assert (run_dir / "hf_model" / "mean_pooling.py").is_file() == (name == "mean_pooled")
    pipe = transformers.pipeline("text-classification", model=str(run_dir / "hf_model"), top_k=None,
                                 trust_remote_code=name == "mean_pooled")
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "hf_model")
    with torch.no_grad():
        probs = best_module(run_dir)(dict(tokenizer(texts, padding=True, return_tensors="pt"))).softmax(-1)
    for answer, expected in zip(pipe(texts), probs):
        scores = {a["label"]: a["score"] for a in answer}
        assert set(scores) == set(SST2)
        torch.testing.assert_close(torch.tensor([scores[n] for n in SST2]), expected, atol=1e-5, rtol=1e-4)


def test_exported_model_cuts_inputs_where_training_did(trained) -> None:
    """A pipeline that truncates (at the tokenizer's model_max_length) scores the exported model on what the run
    trained and tested on: data.max_length=8 tokens, not the model's 512 positions."""
    _, run_dir = trained("short")
    tested = load_predictions(run_dir)
    pipe = transformers.pipeline("text-classification", model=str(run_dir / "hf_model"), top_k=None)
    assert pipe.tokenizer.model_max_length == 8
    cut = [r for r in tested if len(pipe.tokenizer(r["text"])["input_ids"]) > 8][:6]
    assert len(cut) == 6
    for answer, row in zip(pipe([r["text"] for r in cut], truncation=True), cut):
        assert {a["label"]: a["score"] for a in answer} == pytest.approx(row["probs"], abs=1e-5)


def test_fine_tuning_from_an_exported_model_keeps_its_head_meaning(trained, caplog) -> None:
    """model=hf on a run's hf_model: the classifier's rows follow this run's label order (config.json names them),
    another number of labels gets a new head (no size-mismatch traceback), and a regression head's folded target
    units are unfolded (tunelab applies units itself: twice, else)."""
    from tunelab.model import build_model
    from tunelab.tasks import get_task

    _, run_dir = trained("classification")
    exported = str(run_dir / "hf_model")
    batch = dict(transformers.AutoTokenizer.from_pretrained(exported)(["a fine film", "dull"], padding=True,
                                                                        return_tensors="pt"))
    task = get_task("classification")
    with torch.no_grad():
        as_saved = build_model({"name_or_path": exported}, task, 2, label_names=SST2).eval()(**batch).logits
        reordered = build_model({"name_or_path": exported}, task, 2, label_names=SST2[::-1]).eval()(**batch).logits
    torch.testing.assert_close(reordered, as_saved[:, [1, 0]])
    with caplog.at_level(logging.WARNING, logger="tunelab.model"):
        build_model({"name_or_path": exported}, task, 3, label_names=["a", "b", "c"])
    assert f"{exported} has a head for 2 labels; this run trains a new one for 3" in caplog.text

    _, run_dir = trained("regression")
    module = best_module(run_dir)
    regression = module.task
    exported = str(run_dir / "hf_model")
    with torch.no_grad():
        z_scores = build_model({"name_or_path": exported}, regression, 1).eval()(**batch).logits
        torch.testing.assert_close(z_scores, module(batch), atol=1e-5, rtol=1e-4)


def test_exported_tagger_is_the_checkpoint_in_a_pipeline_with_label_names(trained) -> None:
    _, run_dir = trained("ner")
    module = best_module(run_dir)
    names = list(module.hparams.label_names)
    pipe = transformers.pipeline("token-classification", model=str(run_dir / "hf_model"), ignore_labels=[])
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "hf_model")
    for sentence in read_conll(FIXTURES / "conll2003" / "test.txt")[:4]:
        text = " ".join(sentence["tokens"])
        with torch.no_grad():
            expected = module(dict(tokenizer(text, return_tensors="pt")))[0].argmax(-1)
        answer = pipe(text)
        assert [a["index"] for a in answer] == list(range(1, len(expected) - 1))  # every sub-token but [CLS] [SEP]
        assert [a["entity"] for a in answer] == [names[i] for i in expected[1:-1].tolist()]


# ---- predict.py --------------------------------------------------------------------------------------------
def predict(out, cache_dir, *overrides: str) -> list[dict]:
    cfg = compose_cfg(out, "model=tiny", f"paths.data_dir={FIXTURES}", "trainer.accelerator=cpu", *overrides,
                      config_name="predict", fast=False, cache=cache_dir)
    run(cfg)
    return load_predictions(out)


@pytest.mark.parametrize("name", ["classification", "mean_pooled"])
def test_predict_on_unlabelled_csv_with_the_checkpoint_or_the_exported_model(trained, tmp_path, cache_dir, capsys,
                                                                                name: str) -> None:
    _, run_dir = trained(name)
    tested = {r["text"]: r for r in load_predictions(run_dir)[:5]}
    new = tmp_path / "new.csv"  # csv beside the tsv data: read by its extension; no label column
    new.write_text("sentence\n" + "".join(f'"{t}"\n' for t in tested))
    ckpt = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    from_ckpt = predict(tmp_path / "ckpt", cache_dir, f"ckpt_path={ckpt}", f"data.predict_file={new}")
    assert f"predicted 5 rows of {new}" in capsys.readouterr().out
    from_export = predict(tmp_path / "export", cache_dir, f"ckpt_path={run_dir / 'hf_model'}",
                          f"data.predict_file={new}")
    assert [r["index"] for r in from_ckpt] == list(range(5))
    for a, b in zip(from_ckpt, from_export):
        assert set(a) == {"index", "file", "text", "pred", "probs", "confidence"} and a["file"] == str(new)
        expected = tested[a["text"]]
        assert a["pred"] == b["pred"] == expected["pred"]
        assert a["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)
        assert b["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)


def test_an_exported_model_copied_away_from_its_run_predicts_at_its_training_length(trained, tmp_path,
                                                                                    cache_dir) -> None:
    _, run_dir = trained("short")
    copied = tmp_path / "model"  # no .hydra/config.yaml beside it: the length comes from its tokenizer
    shutil.copytree(run_dir / "hf_model", copied)
    tested = load_predictions(run_dir)[:5]
    new = tmp_path / "new.csv"
    new.write_text("sentence\n" + "".join(f'"{r["text"]}"\n' for r in tested))
    rows = predict(tmp_path / "out", cache_dir, f"ckpt_path={copied}", f"data.predict_file={new}")
    for row, expected in zip(rows, tested):
        assert row["probs"] == pytest.approx(expected["probs"], abs=1e-5)


def test_a_gpt2_regression_head_trains_and_its_export_predicts_in_target_units(trained, tmp_path, cache_dir) -> None:
    """GPT-2's config has no pad id (its sequence head needs one for batches of several texts) and its score layer no
    bias to fold the target units into: config.json carries them and predict.py applies them."""
    metrics, run_dir = trained("gpt2_regression")
    assert math.isfinite(metrics["test/mse"])
    tested = load_predictions(run_dir)[:5]
    new = tmp_path / "pairs.tsv"
    new.write_text("sentence1\tsentence2\n" + "".join(f"{r['text']}\t{r['text_pair']}\n" for r in tested))
    rows = predict(tmp_path / "out", cache_dir, f"ckpt_path={run_dir / 'hf_model'}", "data=stsb",
                   f"data.predict_file={new}")
    assert [r["pred"] for r in rows] == pytest.approx([r["pred"] for r in tested], abs=1e-4)


def test_predicting_into_a_dir_that_holds_predictions_needs_overwrite(trained, tmp_path, cache_dir) -> None:
    """The refusal names overwrite=true, which predict.py (and eval.py) take."""
    _, run_dir = trained("classification")
    new = tmp_path / "new.csv"
    new.write_text('sentence\n"fine"\n')
    args = (f"ckpt_path={run_dir / 'hf_model'}", f"data.predict_file={new}")
    predict(tmp_path / "out", cache_dir, *args)
    with pytest.raises(ConfigError, match="already holds a run; pass overwrite=true to replace it"):
        predict(tmp_path / "out", cache_dir, *args)
    assert len(predict(tmp_path / "out", cache_dir, *args, "overwrite=true")) == 1


def test_predict_on_conll_tokens_without_tags(trained, tmp_path, cache_dir, caplog) -> None:
    _, run_dir = trained("ner")
    sentences = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["word"] * 40]
    new = tmp_path / "new.conll"
    new.write_text("\n\n".join("\n".join(words) for words in sentences) + "\n")
    with caplog.at_level("WARNING", logger="tunelab.data.token_classification"):
        rows = predict(tmp_path / "out", cache_dir, "data=conll2003", f"ckpt_path={run_dir / 'hf_model'}",
                       f"data.predict_file={new}", "data.max_length=16")
    names = set(best_module(run_dir).hparams.label_names)
    assert [r["tokens"] for r in rows] == sentences
    assert all("gold" not in r and len(r["pred"]) == len(r["tokens"]) for r in rows)
    assert all(set(r["pred"]) <= names for r in rows[:2])
    # the long sentence's words past max_length have no sub-token to predict from: null, and said so
    assert rows[2]["pred"][-1] is None and set(rows[2]["pred"][:10]) <= names
    assert f"1 sentences of {new} exceed data.max_length=16 tokens: their words past it get pred null" in caplog.text


def test_predict_without_the_text_column_is_one_line_naming_it(trained, tmp_path, cache_dir) -> None:
    _, run_dir = trained("classification")
    new = tmp_path / "new.csv"
    new.write_text("review\ngreat fun\n")
    with pytest.raises(ConfigError) as err:
        predict(tmp_path / "out", cache_dir, f"ckpt_path={run_dir / 'hf_model'}", f"data.predict_file={new}")
    assert str(err.value) == f"data.text_column='sentence' is not a column of {new}; columns are ['review']."
    with pytest.raises(ConfigError, match="pass data.predict_file="):
        predict(tmp_path / "none", cache_dir, f"ckpt_path={run_dir / 'hf_model'}")


def test_eval_of_a_checkpoint_computes_its_own_loss_whatever_loss_is_named(trained, tmp_path, cache_dir) -> None:
    """eval.py's default loss=cross_entropy does not fit NER, but a .ckpt carries its loss: no loss=... needed."""
    metrics, run_dir = trained("ner")
    ckpt = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    cfg = compose_cfg(tmp_path, *SHORT, "data=conll2003", f"ckpt_path={ckpt}", config_name="eval", cache=cache_dir)
    run(cfg)
    assert read_metrics(tmp_path)["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


def test_eval_writes_the_same_predictions_as_the_training_run(trained, tmp_path, cache_dir) -> None:
    _, run_dir = trained("classification")
    ckpt = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    cfg = compose_cfg(tmp_path, "model=tiny", f"paths.data_dir={FIXTURES}", "trainer.accelerator=cpu",
                      f"ckpt_path={ckpt}", config_name="eval", fast=False, cache=cache_dir)
    run(cfg)
    assert read_metrics(tmp_path)["test/acc"] == read_metrics(run_dir)["test/acc"]
    evaluated, trained_rows = (load_predictions(d) for d in (tmp_path, run_dir))
    assert [(r["index"], r["pred"]) for r in evaluated] == [(r["index"], r["pred"]) for r in trained_rows]
