"""predict.py refuses a model that does not fit the data config, and a predict file without the text column,
in one line (ConfigError) before any work: the exported model's config.json (architecture, problem_type,
id2label) is checked against the data's task and label set as a .ckpt's header is (check_checkpoint), and
the predict file's rows are read before the weights load and the Trainer is built."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers

import tunelab.predict
from conftest import FIXTURES, ROOT, compose_cfg, run_script
from tunelab.errors import ConfigError
from tunelab.export import check_model_dir, exported_task
from tunelab.pipeline import run
from tunelab.prediction_files import load_predictions
from tunelab.run_layout import PREDICTIONS_FILE

TINY = ["data.train_limit=64", "trainer.max_steps=5", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
        "logger=none"]
ML_DATA = FIXTURES / "multilabel"
# a multi-label tsv as the data config selects it; train_file only because data=tsv has none of its own
MULTILABEL = ["data=tsv", "data.task=multilabel", f"data.train_file={ML_DATA}/train.tsv", "data.text_column=sentence"]
RUNS = {
    "classification": [],  # SST-2
    "regression": ["data=stsb", "loss=mse"],
    "multilabel": [*MULTILABEL, f"data.test_file={ML_DATA}/test.tsv", "data.label_column=labels", "loss=bce"],
}
ML_LABELS = ["acting", "humor", "music", "negative", "positive", "story", "visuals"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """trained(name) -> the run dir of RUNS[name], trained once per module."""
    done = {}

    def get(name: str):
        if name not in done:
            done[name] = tmp_path_factory.mktemp(name)
            run(compose_cfg(done[name], *TINY, *RUNS[name], cache=cache_dir))
        return done[name]

    return get


@pytest.fixture
def no_work(monkeypatch):
    """Loading the weights or building the Trainer fails the test: refusals must come before both."""
    def forbidden(*args, **kwargs):
        pytest.fail("the model was loaded or the Trainer built before the refusal")

    monkeypatch.setattr(tunelab.predict, "load", forbidden)
    monkeypatch.setattr(tunelab.predict, "build_trainer", forbidden)


def predict(out, cache_dir, *overrides: str) -> list[dict]:
    cfg = compose_cfg(out, "model=tiny", f"paths.data_dir={FIXTURES}", "trainer.accelerator=cpu", *overrides,
                      config_name="predict", fast=False, cache=cache_dir)
    run(cfg)
    return load_predictions(out)


def refused(out, cache_dir, *overrides: str) -> str:
    """The one-line ConfigError of a predict run, which must have predicted nothing."""
    with pytest.raises(ConfigError) as err:
        predict(out, cache_dir, *overrides)
    assert "\n" not in str(err.value)
    assert not (out / PREDICTIONS_FILE).exists()
    return str(err.value)


@pytest.fixture
def sentences(tmp_path):
    new = tmp_path / "new.csv"
    new.write_text("sentence\ngreat fun\nan awful and tedious mess\n")
    return new


@pytest.mark.parametrize("kind,evidence", [
    ("regression", "problem_type=regression"),
    ("multilabel", "problem_type=multi_label_classification"),  # before, a softmax over its 7 labels
])
def test_a_sequence_model_of_another_task_with_classification_data_is_one_line(trained, tmp_path, cache_dir,
                                                                               sentences, no_work, kind,
                                                                               evidence) -> None:
    model = trained(kind) / "hf_model"
    message = refused(tmp_path / "out", cache_dir, f"ckpt_path={model}", f"data.predict_file={sentences}")
    assert message == (
        f"ckpt_path={model} is a {kind} model (config.json: BertForSequenceClassification, {evidence}) but "
        "data=sst2 is a classification task; pass a model exported for classification, or the data config it "
        f"was trained with (data.task={kind}).")


def test_classification_model_with_regression_data_is_one_line(trained, tmp_path, cache_dir, no_work) -> None:
    model = trained("classification") / "hf_model"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sentence1,sentence2\nA man plays a guitar.,A man plays an instrument.\n")
    message = refused(tmp_path / "out", cache_dir, "data=stsb", f"ckpt_path={model}", f"data.predict_file={pairs}")
    assert message == (
        f"ckpt_path={model} is a classification model (config.json: BertForSequenceClassification, "
        "problem_type=single_label_classification) "
        "but data=stsb is a regression task; pass a model exported for regression, or the data config it was "
        "trained with (data.task=classification).")


def test_the_refusal_names_the_training_runs_data_from_its_hydra_dir(trained, tmp_path, cache_dir, sentences,
                                                                     no_work) -> None:
    """A run dir of train.py holds .hydra/ beside hf_model: the fix names the data the user trained with."""
    model = tmp_path / "run" / "hf_model"
    shutil.copytree(trained("multilabel") / "hf_model", model)
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("data:\n  name: tsv\n  task: multilabel\n")
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text(
        "- debug=quick\n- data=tsv\n- data.task=multilabel\n- data.train_file=my.tsv\n- loss=bce\n")
    message = refused(tmp_path / "out", cache_dir, f"ckpt_path={model}", f"data.predict_file={sentences}")
    assert message.endswith("or the data config it was trained with (data=tsv data.task=multilabel).")


def test_multilabel_model_with_multilabel_data_predicts_as_its_checkpoint(trained, tmp_path, cache_dir,
                                                                          sentences) -> None:
    run_dir = trained("multilabel")
    ckpt = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    args = [*MULTILABEL, f"data.predict_file={sentences}"]
    from_ckpt = predict(tmp_path / "ckpt", cache_dir, f"ckpt_path={ckpt}", *args)
    from_export = predict(tmp_path / "export", cache_dir, f"ckpt_path={run_dir / 'hf_model'}", *args)
    assert len(from_export) == 2
    for a, b in zip(from_ckpt, from_export):
        # sigmoid per label and the data's threshold, not a softmax over the 7 labels
        assert list(b["probs"]) == ML_LABELS
        assert b["pred"] == [n for n, p in b["probs"].items() if p > 0.5] == a["pred"]
        assert b["probs"] == pytest.approx(a["probs"], abs=1e-5)


def test_label_set_mismatch_is_one_line(trained, tmp_path, cache_dir, sentences, no_work) -> None:
    model = trained("classification") / "hf_model"
    message = refused(tmp_path / "out", cache_dir, f"ckpt_path={model}", f"data.predict_file={sentences}",
                      "data.label_names=[bad,good]")
    assert message == (
        f"ckpt_path={model} was trained on the labels ['negative', 'positive'] but data=sst2 has ['bad', 'good']; "
        "pass a model of this label set, or set data.label_names to the model's.")


@pytest.mark.parametrize("source", ["hf_model", "ckpt"])
def test_missing_text_column_comes_before_the_model_and_trainer(trained, tmp_path, cache_dir, no_work,
                                                                source: str) -> None:
    run_dir = trained("classification")
    model = run_dir / "hf_model" if source == "hf_model" else \
        json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    bad = tmp_path / "bad.csv"
    bad.write_text("review\ngreat fun\n")
    message = refused(tmp_path / "out", cache_dir, f"ckpt_path={model}", f"data.predict_file={bad}")
    assert message == f"data.text_column='sentence' is not a column of {bad}; columns are ['review']."


def test_predict_py_reports_a_missing_column_before_lightning_says_anything(trained, tmp_path) -> None:
    """As a user runs it: exit 2 and the one error line, without the Trainer's INFO lines ahead of it."""
    bad = tmp_path / "bad.csv"
    bad.write_text("review\ngreat fun\n")
    proc = run_script("predict.py", "model=tiny", "trainer.accelerator=cpu",
                      f"ckpt_path={trained('classification') / 'hf_model'}", f"data.predict_file={bad}",
                      f"hydra.run.dir={tmp_path / 'out'}", cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: data.text_column='sentence' is not a column of {bad}; columns are ['review'].")
    said = proc.stdout + proc.stderr
    assert "GPU available" not in said and "Predicting" not in said  # the Trainer was never built
    assert not (tmp_path / "out" / PREDICTIONS_FILE).exists()


@pytest.mark.parametrize(("config", "task"), [
    (dict(architectures=["BertForSequenceClassification"], num_labels=2), "classification"),
    (dict(architectures=["BertForSequenceClassification"], problem_type="single_label_classification"),
     "classification"),
    (dict(architectures=["BertForSequenceClassification"], num_labels=1), "regression"),  # as transformers reads it
    (dict(architectures=["BertForSequenceClassification"], problem_type="regression", num_labels=1), "regression"),
    (dict(architectures=["BertForSequenceClassification"], problem_type="multi_label_classification", num_labels=3),
     "multilabel"),
    (dict(architectures=["BertMeanPoolingForSequenceClassification"], num_labels=2), "classification"),
    (dict(architectures=["BertForTokenClassification"], num_labels=3), "token_classification"),
    (dict(architectures=["GPT2LMHeadModel"]), "causal_lm"),
    (dict(architectures=["BertModel"]), None),
])
def test_exported_task_reads_the_head_and_problem_type(config: dict, task: str | None) -> None:
    assert exported_task(transformers.BertConfig(**config)) == task


def test_ner_and_gpt2_exports_with_sentence_data_are_one_line(tmp_path, cache_dir) -> None:
    """config.json alone decides: the weights never load."""
    cfg = compose_cfg(tmp_path, "model=tiny", "data.predict_file=new.csv", "ckpt_path=x", config_name="predict",
                      fast=False, cache=cache_dir)
    ner, lm = tmp_path / "ner", tmp_path / "lm"
    transformers.BertConfig(architectures=["BertForTokenClassification"], num_labels=3).save_pretrained(ner)
    transformers.GPT2Config(architectures=["GPT2LMHeadModel"]).save_pretrained(lm)
    with pytest.raises(ConfigError) as err:
        check_model_dir(ner, cfg)
    assert str(err.value) == (
        f"ckpt_path={ner} is a token_classification model (config.json: BertForTokenClassification) but data=sst2 "
        "is a classification task; pass a model exported for classification, or the data config it was trained "
        "with (data.task=token_classification).")
    with pytest.raises(ConfigError) as err:
        check_model_dir(lm, cfg)
    assert str(err.value) == (f"ckpt_path={lm} is a causal_lm model (config.json: GPT2LMHeadModel) but data=sst2 is "
                              "a classification task; pass a model exported for classification.")
