"""eval.py on a test file alone: a checkpoint carries its label names, so `data=tsv data.test_file=...` (or
`data=conll`) needs no training file, and the file's labels map to the ids the model was trained with."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES, compose_cfg, read_metrics
from tunelab.errors import ConfigError
from tunelab.pipeline import run
from tunelab.results import load_predictions

RUNS = {
    "classification": ["data.train_limit=64", "trainer.max_epochs=1"],  # SST-2, tested on dev.tsv
    "ner": ["data=conll2003", "loss=token_cross_entropy", "data.train_limit=64", "trainer.max_epochs=1"],
}
SST2_DEV = FIXTURES / "sst2" / "dev.tsv"
# SST-2's dev file as data=tsv reads it: no train_file, no label_names
TSV = ["data=tsv", "data.text_column=sentence"]
CONLL_TEST = ["data=conll", f"data.test_file={FIXTURES}/conll2003/test.txt", "data.delimiter=' '", "data.tag_column=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """trained(name) -> (test metrics, best checkpoint, run dir), each run of RUNS once per module."""
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            metrics = run(compose_cfg(out, *RUNS[name], cache=cache_dir))
            done[name] = metrics, json.loads((out / "metrics.json").read_text())["best_checkpoint"], out
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


def test_a_label_the_checkpoint_does_not_know_is_one_line(trained, tmp_path, cache_dir) -> None:
    _, ckpt, _ = trained("classification")
    odd = tmp_path / "odd.tsv"
    odd.write_text("sentence\tlabel\ngreat fun\tpositive\ndull\tneutral\n")
    with pytest.raises(ConfigError) as err:
        evaluate(tmp_path / "out", cache_dir, ckpt, *TSV, f"data.test_file={odd}")
    assert str(err.value) == (f"{odd}:3: label 'neutral' is not in the label set ['negative', 'positive']; "
                              "fix the row or list every label in data.label_names.")


def test_no_file_at_all_names_both_ways_to_test(trained, tmp_path, cache_dir) -> None:
    _, ckpt, _ = trained("classification")
    with pytest.raises(ConfigError) as err:
        evaluate(tmp_path, cache_dir, ckpt, *TSV)
    assert str(err.value) == ("data.train_file is not set (data=tsv needs it): pass data.test_file=<file> to test "
                              "the checkpoint on it, or data.train_file=<file> to test on the split cut from it.")


def test_ner_on_a_conll_test_file_alone_uses_the_checkpoints_tags(trained, tmp_path, cache_dir) -> None:
    """data=conll has no label_names: the tags come from the checkpoint (conll2003's order, not sorted)."""
    metrics, ckpt, _ = trained("ner")
    got = evaluate(tmp_path, cache_dir, ckpt, *CONLL_TEST)
    assert got["test/f1"] == metrics["test/f1"] and got["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
