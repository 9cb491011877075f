"""Testing and predicting with a trained model use what it was trained with: a checkpoint (or an adapter dir)
carries its label names, tokenizer, label_info and loss, so `eval.py data=tsv data.test_file=...` needs no
training file and the file's labels map to the ids the model was trained with; the multi-label threshold
travels into exported models; a pair model refuses single texts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import FIXTURES, compose_cfg, read_metrics
from tunelab.errors import ConfigError
from tunelab.pipeline import run
from tunelab.prediction_files import load_predictions

SHORT = ["data.train_limit=64", "trainer.max_epochs=1"]
ML_DATA = FIXTURES / "multilabel"
MULTILABEL = ["data=tsv", "data.task=multilabel", f"data.train_file={ML_DATA}/train.tsv", "data.text_column=sentence",
              f"data.test_file={ML_DATA}/test.tsv", "data.label_column=labels", "loss=bce"]
LM = ["data=text", "model=gpt2_tiny", "loss=next_token_cross_entropy"]
RUNS = {
    "classification": SHORT,  # SST-2, tested on dev.tsv
    "ner": ["data=conll2003", "loss=token_cross_entropy", "data.max_length=24", *SHORT],  # many sentences cut
    "multilabel": [*MULTILABEL, "data.threshold=0.3", *SHORT],
    # + model.name_or_path: a pretrained base; most sentences cut
    "lora": ["model=hf", "peft=lora", "peft.save_adapter=true", "data.max_length=12", *SHORT],
    "lm": [*LM, f"data.train_file={FIXTURES}/lm/input.txt", "data.train_limit=20", "data.batch_size=4",
           "trainer.max_steps=2"],
    "pairs": ["data=stsb", "loss=mse", *SHORT],
    # the test split carved from the training file, not at the data config's split_seed / test_fraction
    "carved": ["data=tsv", "data.text_column=sentence", f"data.train_file={FIXTURES}/sst2/train.tsv",
               f"data.val_file={FIXTURES}/sst2/dev.tsv", "data.test_file=null", "data.split_seed=7", "data.test_fraction=0.3",
               *SHORT],
}
SST2_DEV = FIXTURES / "sst2" / "dev.tsv"
# SST-2's dev file as data=tsv reads it: no train_file, no label_names
TSV = ["data=tsv", "data.text_column=sentence"]
CONLL_TEST = ["data=conll", f"data.test_file={FIXTURES}/conll2003/test.txt", "data.delimiter=' '", "data.tag_column=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir, pretrained_tiny_bert):
    """trained(name) -> (test metrics, best checkpoint, run dir), each run of RUNS once per module."""
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            base = [f"model.name_or_path={pretrained_tiny_bert}"] if "model=hf" in RUNS[name] else []
            cfg = compose_cfg(out, *RUNS[name], *base, cache=cache_dir)
            metrics = run(cfg)
            (out / ".hydra").mkdir()
            OmegaConf.save(cfg, out / ".hydra" / "config.yaml")  # as Hydra keeps it in a run dir
            best = json.loads((out / "metrics.json").read_text())["best_checkpoint"]
            done[name] = metrics, best or str(out / "checkpoints" / "last.ckpt"), out  # max_steps=2: no validation
        return done[name]

    return get


def evaluate(out, cache_dir, ckpt: str, *overrides: str) -> dict[str, float]:
    run(compose_cfg(out, f"ckpt_path={ckpt}", *overrides, config_name="eval", cache=cache_dir))
    return read_metrics(out)


def test_a_test_file_alone_gives_the_training_runs_test_metrics_and_predictions(trained, tmp_path, cache_dir) -> None:
    metrics, ckpt, run_dir = trained("classification")
    got = evaluate(tmp_path, cache_dir, ckpt, *TSV, f"data.test_file={SST2_DEV}")
    assert got["test/acc"] == metrics["test/acc"] and got["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    evaluated, at_training = load_predictions(tmp_path), load_predictions(run_dir)
    assert len(evaluated) == len(SST2_DEV.read_text().splitlines()) - 1  # every row of the file, nothing carved
    assert [(r["index"], r["pred"], r["gold"]) for r in evaluated] == [(r["index"], r["pred"], r["gold"])
                                                                      for r in at_training]


def test_label_names_in_the_file_map_to_the_checkpoints_ids(trained, tmp_path, cache_dir) -> None:
    metrics, ckpt, _ = trained("classification")
    named = tmp_path / "named.tsv"
    header, *rows = SST2_DEV.read_text().splitlines()
    named.write_text("\n".join([header, *(r[:-1] + ["negative", "positive"][int(r[-1])] for r in rows)]) + "\n")
    got = evaluate(tmp_path / "out", cache_dir, ckpt, *TSV, f"data.test_file={named}")
    assert got["test/acc"] == metrics["test/acc"]


def test_ids_in_a_test_file_are_read_only_for_names_given_in_order(trained, tmp_path, cache_dir) -> None:
    """SST-2's 0/1 mean negative/positive because data=sst2 lists the names; a model trained on names sorted from
    its training file ('bad' < 'good' by chance) gives ids no meaning: one line, not a silent 0 = 'bad'."""
    _, ckpt, _ = trained("classification")
    assert evaluate(tmp_path / "ordered", cache_dir, ckpt, *TSV, f"data.test_file={SST2_DEV}")["test/acc"] > 0
    words = tmp_path / "words.tsv"
    rows = (FIXTURES / "sst2" / "train.tsv").read_text().splitlines()[:40]
    words.write_text("\n".join([rows[0]] + [r.replace("\t0", "\tgood").replace("\t1", "\tbad") for r in rows[1:]]))
    out = tmp_path / "sorted"
    run(compose_cfg(out, *TSV, f"data.train_file={words}", f"data.test_file={words}", *SHORT, cache=cache_dir))
    sorted_ckpt = json.loads((out / "metrics.json").read_text())["best_checkpoint"] or str(out / "checkpoints/last.ckpt")
    with pytest.raises(ConfigError, match=r":2: label '\d' is not in the label set \['bad', 'good'\]; the model was "):
        evaluate(tmp_path / "ids", cache_dir, sorted_ckpt, *TSV, f"data.test_file={SST2_DEV}")


def test_another_tasks_checkpoint_names_the_data_it_was_trained_on(trained, tmp_path, cache_dir) -> None:
    metrics, ckpt, _ = trained("pairs")
    # no data option: the run's own (STS-B pairs), not eval.yaml's default
    assert evaluate(tmp_path / "own", cache_dir, ckpt)["test/spearman"] == metrics["test/spearman"]
    with pytest.raises(ConfigError) as err:
        evaluate(tmp_path, cache_dir, ckpt, "data=sst2")
    assert str(err.value) == (f"ckpt_path={ckpt} is a regression checkpoint but data=sst2 is a classification task; "
                              "pass a checkpoint trained for classification, or the data config it was trained with "
                              "(data=stsb).")


def test_a_run_dir_as_ckpt_path_names_the_checkpoint_its_run_tested(trained, tmp_path, cache_dir) -> None:
    _, best, run_dir = trained("classification")
    assert Path(best).name != "last.ckpt"  # the one whose test metrics the run reported, not the newest file
    for given in (run_dir, run_dir / "checkpoints"):
        with pytest.raises(ConfigError) as err:
            evaluate(tmp_path, cache_dir, str(given))
        assert str(err.value) == f"ckpt_path={given} is a run directory; pass the checkpoint its run tested, ckpt_path={best}"


def test_a_label_the_checkpoint_does_not_know_is_one_line_and_gives_the_run_dir_back(trained, tmp_path,
                                                                                     cache_dir) -> None:
    _, ckpt, _ = trained("classification")
    odd = tmp_path / "odd.tsv"
    odd.write_text("sentence\tlabel\ngreat fun\tpositive\ndull\tneutral\n")
    with pytest.raises(ConfigError) as err:
        evaluate(tmp_path / "out", cache_dir, ckpt, *TSV, f"data.test_file={odd}")
    assert str(err.value) == (f"{odd}:3: label 'neutral' is not in the label set ['negative', 'positive']; the model "
                              "was trained on these and cannot predict it: fix or drop the row.")
    assert not (tmp_path / "out" / ".tunelab_run").exists()  # the corrected command may use the same dir
    evaluate(tmp_path / "out", cache_dir, ckpt, *TSV, f"data.test_file={SST2_DEV}")


def test_testing_needs_no_training_batch_of_rows(trained, tmp_path, cache_dir) -> None:
    """A test split carved from a training file smaller than data.batch_size: only training needs a batch."""
    _, ckpt, _ = trained("classification")
    evaluate(tmp_path, cache_dir, ckpt, "data.test_file=null", "data.batch_size=100000")


def test_no_file_at_all_names_both_ways_to_test(trained, tmp_path, cache_dir) -> None:
    _, ckpt, _ = trained("classification")
    with pytest.raises(ConfigError) as err:
        evaluate(tmp_path, cache_dir, ckpt, *TSV)
    assert str(err.value) == ("data.train_file is not set (data=tsv needs it): pass data.test_file=<file> to test "
                              "the checkpoint on it, or data.train_file=<file> to test on the split cut from it.")


def test_a_checkpoint_tested_on_its_training_file_gets_the_rows_its_run_held_out(trained, tmp_path, cache_dir) -> None:
    metrics, ckpt, run_dir = trained("carved")
    got = evaluate(tmp_path, cache_dir, ckpt, "data=tsv", "data.text_column=sentence",
                   f"data.train_file={FIXTURES}/sst2/train.tsv", "data.test_file=null")
    assert [r["index"] for r in load_predictions(tmp_path)] == [r["index"] for r in load_predictions(run_dir)]
    assert got["test/acc"] == metrics["test/acc"] and got["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)


def test_a_checkpoint_moved_from_its_install_finds_its_base_model_here(trained, tmp_path, cache_dir) -> None:
    """A checkpoint names its tokenizer (and base model) by path: the shipped MiniLM lives in a venv's site-packages,
    so another clone or machine has it elsewhere. The same directory here is found; another one is taken from the
    command line; neither is one line."""
    import torch

    metrics, ckpt, _ = trained("classification")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    here = Path(state["hyper_parameters"]["model"]["tokenizer"])
    moved = tmp_path / "moved.ckpt"
    for stored, extra, out in [(f"/gone/{here.parent.name}/{here.name}", [], "same"),
                               ("/gone/elsewhere", [f"model.tokenizer={here}"], "given")]:
        state["hyper_parameters"]["model"]["tokenizer"] = stored
        torch.save(state, moved)
        got = evaluate(tmp_path / out, cache_dir, moved, *TSV, f"data.test_file={SST2_DEV}", *extra)
        assert got["test/acc"] == metrics["test/acc"]
    with pytest.raises(ConfigError, match=r"^the tokenizer this checkpoint was trained with is gone \(/gone/elsewhere\)"):
        evaluate(tmp_path / "other", cache_dir, moved, *TSV, f"data.test_file={SST2_DEV}")


def test_ner_on_a_conll_test_file_alone_uses_the_checkpoints_tags(trained, tmp_path, cache_dir) -> None:
    """data=conll has no label_names: the tags come from the checkpoint (conll2003's order, not sorted); the
    sentences are cut at the training run's data.max_length (24), not data=conll's 128, unless one is given."""
    metrics, ckpt, _ = trained("ner")
    got = evaluate(tmp_path, cache_dir, ckpt, *CONLL_TEST)
    assert got["test/f1"] == metrics["test/f1"] and got["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    longer = evaluate(tmp_path / "longer", cache_dir, ckpt, *CONLL_TEST, "data.max_length=128")
    assert longer["test/loss"] != pytest.approx(metrics["test/loss"], rel=1e-6)


def predict(out, cache_dir, model, *overrides: str) -> list[dict]:
    run(compose_cfg(out, f"ckpt_path={model}", *overrides, config_name="predict", cache=cache_dir))
    return load_predictions(out)


def test_the_trained_threshold_travels_with_the_model_and_a_given_one_wins(trained, tmp_path, cache_dir) -> None:
    _, ckpt, run_dir = trained("multilabel")
    at_training = load_predictions(run_dir)  # decided at data.threshold=0.3
    # the test is only as good as the probabilities between 0.3 and the 0.5 default
    assert any(0.3 < p <= 0.5 for r in at_training for p in r["probs"].values())
    texts = tmp_path / "texts.tsv"
    texts.write_text("sentence\n" + "".join(f"{r['text']}\n" for r in at_training))
    for model in (ckpt, run_dir / "hf_model"):
        rows = predict(tmp_path / Path(model).name, cache_dir, model, *MULTILABEL, f"data.predict_file={texts}")
        assert [r["pred"] for r in rows] == [r["pred"] for r in at_training]
    rows = predict(tmp_path / "given", cache_dir, ckpt, *MULTILABEL, f"data.predict_file={texts}", "data.threshold=0.9")
    assert [r["pred"] for r in rows] == [[n for n, p in r["probs"].items() if p > 0.9] for r in at_training]


def test_an_adapter_is_tested_with_its_own_labels_on_a_test_file_alone(trained, tmp_path, cache_dir) -> None:
    metrics, _, run_dir = trained("lora")
    adapter = run_dir / "adapter"
    got = evaluate(tmp_path / "alone", cache_dir, adapter, *TSV, f"data.test_file={SST2_DEV}")
    assert got["test/acc"] == metrics["test/acc"] and got["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    assert got["params/trainable"] == metrics["params/trainable"] > 0  # the adapter's, as the training run counted
    with pytest.raises(ConfigError) as err:  # not the classes silently swapped
        evaluate(tmp_path / "swapped", cache_dir, adapter, "data.label_names=[positive,negative]")
    assert str(err.value).startswith(f"ckpt_path={adapter} was trained on the labels ['negative', 'positive'] but "
                                     "data=sst2 has ['positive', 'negative']")


def test_an_adapter_copied_away_from_its_run_is_tested_at_its_training_length(trained, tmp_path, cache_dir) -> None:
    """No .hydra beside the copy: the length comes from the tokenizer saved with the adapter (data.max_length=12),
    not from data=sst2's 128."""
    metrics, _, run_dir = trained("lora")
    copied = tmp_path / "adapter"
    shutil.copytree(run_dir / "adapter", copied)
    got = evaluate(tmp_path / "copied", cache_dir, copied)
    assert got["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)


def test_a_language_model_is_tested_with_the_tokenizer_it_trained(trained, tmp_path, cache_dir) -> None:
    """model.tokenizer=char is trained on the training text: a test file alone, or a training file cut
    differently (another character set), must use the checkpoint's tokenizer."""
    _, ckpt, _ = trained("lm")
    test_text = tmp_path / "test.txt"
    test_text.write_text((FIXTURES / "lm" / "input.txt").read_text()[:3000] + "\nnew characters: {}~|\n")
    alone = evaluate(tmp_path / "alone", cache_dir, ckpt, *LM, f"data.test_file={test_text}")
    beside = evaluate(tmp_path / "beside", cache_dir, ckpt, *LM, f"data.test_file={test_text}",
                      f"data.train_file={test_text}", "data.val_fraction=0.5")
    assert alone["test/loss"] == beside["test/loss"]


def test_a_pair_model_refuses_single_texts(trained, tmp_path, cache_dir) -> None:
    _, ckpt, run_dir = trained("pairs")
    with pytest.raises(ConfigError) as err:
        evaluate(tmp_path / "eval", cache_dir, ckpt, "data=stsb", "data.text_pair_column=null")
    assert str(err.value) == (f"ckpt_path={ckpt} was trained on text pairs (data.text_pair_column=sentence2); pass "
                              "data.text_pair_column=<the second text's column>.")
    texts = tmp_path / "texts.tsv"
    texts.write_text("sentence1\nA man plays a guitar.\n")
    with pytest.raises(ConfigError, match="was trained on text pairs"):
        predict(tmp_path / "predict", cache_dir, ckpt, "data=stsb", "data.text_pair_column=null",
                f"data.predict_file={texts}")


def test_a_run_on_ones_own_csv_is_tested_and_predicted_with_its_data_config_alone(tmp_path, cache_dir) -> None:
    """`eval.py ckpt_path=...` with no data option tests on the data config the run trained with (its file, columns,
    labels, held-out rows), not on eval.yaml's default SST-2; predict.py reads the run's text column."""
    rows = [line.split("\t") for line in (FIXTURES / "sst2" / "train.tsv").read_text().splitlines()[1:201]]
    own = tmp_path / "reviews.csv"
    own.write_text("review,sentiment\n" + "".join(f'"{t}",{"pos" if y == "1" else "neg"}\n' for t, y in rows))
    out = tmp_path / "trained"
    cfg = compose_cfg(out, "data=csv", f"data.train_file={own}", "data.text_column=review",
                      "data.label_column=sentiment", "data.test_fraction=0.3", *SHORT, cache=cache_dir)
    metrics = run(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    ckpt = str(out / "checkpoints" / "last.ckpt")
    got = evaluate(tmp_path / "eval", cache_dir, ckpt)
    assert [r["index"] for r in load_predictions(tmp_path / "eval")] == [r["index"] for r in load_predictions(out)]
    assert got["test/acc"] == metrics["test/acc"]
    new = tmp_path / "new.csv"
    new.write_text('review\n"A moving, beautiful film."\nDull and far too long.\n')
    run(compose_cfg(tmp_path / "predict", f"ckpt_path={out / 'hf_model'}", f"data.predict_file={new}",
                    config_name="predict", cache=cache_dir))
    assert [r["text"] for r in load_predictions(tmp_path / "predict")] == ["A moving, beautiful film.",
                                                                          "Dull and far too long."]


def test_eval_without_data_takes_the_newest_run_of_any_task_on_this_data_dir(tmp_path) -> None:
    """`eval.py ckpt_path=last` with no data option: the newest run even of another task than eval.yaml's default
    (it found none), its data config resolved under the command line's paths.data_dir (ignored: the old files were
    read), the same as a sweep of such evals (its pre-flight checked eval.yaml's default data and refused it); a
    data config that does not resolve here is one line (SST-2 dev was tested instead, without a word)."""
    from conftest import run_script

    rows = [line.split("\t") for line in (FIXTURES / "sst2" / "train.tsv").read_text().splitlines()[1:]]
    for name, count in (("then", 100), ("now", 60)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "own.tsv").write_text("sentence\tscore\n" + "".join(
            f"{t.strip()}\t{float(y) + i % 3 / 10}\n" for i, (t, y) in enumerate(rows[:count])))
    common = ["debug=quick", "logger=csv", f"paths.log_dir={tmp_path / 'logs'}"]
    own = ["data=tsv", "data.task=regression", "loss=mse", "data.text_column=sentence", "data.label_column=score",
           "data.test_fraction=0.3", "data.val_fraction=0.2", "trainer.max_epochs=1", "data.batch_size=16"]
    trained = run_script("train.py", *common, *own, "data.train_file=${paths.data_dir}/own.tsv",
                         f"paths.data_dir={tmp_path / 'then'}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    tested = run_script("eval.py", *common, "ckpt_path=last", f"paths.data_dir={tmp_path / 'now'}",
                        f"hydra.run.dir={tmp_path / 'eval'}")
    assert tested.returncode == 0, tested.stderr[-2000:]
    assert len(load_predictions(tmp_path / "eval")) == 18  # 30% of now/own.tsv's 60 rows, not of then/'s 100
    swept = run_script("eval.py", "-m", *common, "ckpt_path=last", "seed=1,2", f"paths.data_dir={tmp_path / 'now'}",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert swept.returncode == 0, swept.stderr[-2000:]
    env_run = run_script("train.py", *common, *own, "data.train_file=${oc.env:OWN_DATA}/own.tsv",
                         f"hydra.run.dir={tmp_path / 'env_run'}", env={"OWN_DATA": str(tmp_path / "then")})
    assert env_run.returncode == 0, env_run.stderr[-2000:]
    ckpt = tmp_path / "env_run" / "checkpoints" / "last.ckpt"
    unresolved = run_script("eval.py", *common, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval2'}")
    assert unresolved.returncode == 2
    assert unresolved.stderr.strip().splitlines()[-1] == (
        f"error: ckpt_path={ckpt}: the data config its run trained with does not resolve here (Environment variable "
        "'OWN_DATA' not found): pass what it reads, or data=... for the data to test on.")
