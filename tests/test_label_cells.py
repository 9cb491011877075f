"""Label cells as users write them: numeric class names, stray whitespace, JSON numbers, letter case, one class,
JSON lists, long label sets and NER tags without IOB2 prefixes. Each ends in the classes meant or in ONE line
naming the file and the fix, from the datamodule's setup (before any training)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import FIXTURES, compose_cfg
from tunelab.data.labels import LabelSet
from tunelab.errors import ConfigError
from tunelab.pipeline import build_datamodule

TEXTS = ["a fine film", "dull and slow", "great fun", "a mess", "warm and witty", "tedious"]


def _csv(path: Path, labels: list[str]) -> Path:
    path.write_text("text,label\n" + "".join(f"{TEXTS[i % len(TEXTS)]} {i},{y}\n" for i, y in enumerate(labels)))
    return path


def _jsonl(path: Path, labels: list) -> Path:
    path.write_text("".join(json.dumps({"text": f"{TEXTS[i % len(TEXTS)]} {i}", "label": y}) + "\n"
                            for i, y in enumerate(labels)))
    return path


def _conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text("\n".join("".join(f"{w} {t}\n" for w, t in s) for s in sentences))
    return path


def _setup(tmp_path: Path, *overrides: str):
    """The datamodule of these overrides after setup("fit"): labels read, nothing trained."""
    dm = build_datamodule(compose_cfg(tmp_path / "run", "data.batch_size=1", *overrides, cache=tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _text_files(tmp_path: Path, train: Path, test: Path) -> list[str]:
    return [f"data.train_file={train}", f"data.val_file={train}", f"data.test_file={test}"]


def test_a_label_spelled_like_a_class_id_is_read_as_one_only_when_no_name_is_a_number(tmp_path) -> None:
    for i, train_labels in enumerate((["-1", "1"], ["1", "2"])):  # a test row "0" is no class of these
        train = _csv(tmp_path / f"train{i}.csv", train_labels * 3)
        test = _csv(tmp_path / f"test{i}.csv", [train_labels[1], "0"])
        with pytest.raises(ConfigError) as err:
            _setup(tmp_path, "data=csv", *_text_files(tmp_path, train, test))
        assert str(err.value) == (f"{test}:3: label '0' is not in the label set {train_labels}; fix the row or list "
                                  "every label in data.label_names.")
    # SST-2's files say 0/1 for data.label_names [negative, positive]
    train = _csv(tmp_path / "train.csv", ["0", "1", "1", "0"])
    test = _csv(tmp_path / "test.csv", ["1", "positive"])
    dm = _setup(tmp_path, "data=csv", "data.label_names=[negative,positive]", *_text_files(tmp_path, train, test))
    assert dm.label_names == ["negative", "positive"]
    assert [e["labels"] for e in dm.splits["train"]] == [0, 1, 1, 0]
    assert [e["labels"] for e in dm.splits["test"]] == [1, 1]


def test_whitespace_and_integral_json_numbers_make_no_extra_classes(tmp_path) -> None:
    train = _csv(tmp_path / "train.csv", ["very good ", "not good", " very good", "not good  "])
    dm = _setup(tmp_path, "data=csv", *_text_files(tmp_path, train, train))
    assert dm.label_names == ["not good", "very good"]
    assert [e["labels"] for e in dm.splits["train"]] == [1, 0, 1, 0]
    numbers = _jsonl(tmp_path / "numbers.jsonl", [0.0, 0, 1.0, 1, "1", " 0 "])
    dm = _setup(tmp_path, "data=jsonl", *_text_files(tmp_path, numbers, numbers))
    assert dm.label_names == ["0", "1"]
    assert [e["labels"] for e in dm.splits["train"]] == [0, 0, 1, 1, 1, 0]


def test_labels_differing_only_in_case_stay_classes_with_one_warning(tmp_path, caplog) -> None:
    train = _csv(tmp_path / "train.csv", ["Not Good", "not good", "good", "GOOD", "Good", "bad"])
    with caplog.at_level(logging.WARNING, logger="tunelab"):
        dm = _setup(tmp_path, "data=csv", *_text_files(tmp_path, train, train))
    assert dm.label_names == ["GOOD", "Good", "Not Good", "bad", "good", "not good"]
    warnings = [r.getMessage() for r in caplog.records if "letter case" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "['Not Good', 'not good']" in warnings[0] and "['GOOD', 'Good', 'good']" in warnings[0]
    assert "'bad'" not in warnings[0]


def test_one_class_in_the_training_split_is_one_line_before_training(tmp_path) -> None:
    train = _csv(tmp_path / "train.csv", ["pos"] * 4)
    with pytest.raises(ConfigError) as err:
        _setup(tmp_path, "data=csv", *_text_files(tmp_path, train, train))
    assert str(err.value) == (f"{train}: the training split has one label ('pos'); classification needs at least "
                              "two: check data.label_column, or list the labels in data.label_names.")
    dm = _setup(tmp_path, "data=csv", "data.label_names=[neg,pos]", *_text_files(tmp_path, train, train))
    assert dm.label_names == ["neg", "pos"] and dm.class_counts == [0, 4]


def test_one_ner_tag_in_the_training_split_is_one_line(tmp_path) -> None:
    train = _conll(tmp_path / "train.conll", [[("Paris", "O"), ("is", "O")], [("Bob", "O"), ("sings", "O")]])
    with pytest.raises(ConfigError) as err:
        _setup(tmp_path, "data=conll", "loss=token_cross_entropy", *_text_files(tmp_path, train, train))
    assert str(err.value) == (f"{train}: the training split has one tag ('O'); token classification needs at least "
                              "two: check data.tag_column, or list the tags in data.label_names.")


def test_json_list_labels_in_classification_name_the_row(tmp_path) -> None:
    rows = _jsonl(tmp_path / "lists.jsonl", ["neg", "pos", ["pos", "drama"], "neg"])
    with pytest.raises(ConfigError) as err:
        _setup(tmp_path, "data=jsonl", *_text_files(tmp_path, rows, rows))
    assert str(err.value) == (f"{rows}:3: the label is a list ['pos', 'drama']; rows with several labels need "
                              "data.task=multilabel.")


def test_an_unknown_label_lists_ten_names_of_a_long_label_set() -> None:
    names = [f"class{i:02d}" for i in range(300)]
    with pytest.raises(ConfigError) as err:
        LabelSet(None, names, "tag").id("B-PER", "dev.conll:7")
    message = str(err.value)
    assert message == ("dev.conll:7: tag 'B-PER' is not in the label set ['class00', 'class01', 'class02', 'class03', "
                       "'class04', 'class05', 'class06', 'class07', 'class08', 'class09', ... (300 in all)]; fix the "
                       "row or list every tag in data.label_names.")
    with pytest.raises(ConfigError, match=r"in the label set \['a', 'b'\]; "):  # short sets in full
        LabelSet(None, ["a", "b"], "label").id("c", "f:2")


def test_ner_tags_without_iob2_prefixes_are_one_line(tmp_path) -> None:
    train = _conll(tmp_path / "plain.conll", [[("EU", "ORG"), ("rejects", "O"), ("German", "MISC")],
                                              [("Peter", "PER"), ("Blackburn", "PER")], [("Bonn", "LOC")]])
    with pytest.raises(ConfigError) as err:
        _setup(tmp_path, "data=conll", "loss=token_cross_entropy", *_text_files(tmp_path, train, train))
    assert str(err.value) == (f"{train}: the tags ['LOC', 'MISC', 'O', 'ORG', 'PER'] have no B-/I- prefixes; entity "
                              "F1 scores IOB2 spans: convert the tags to IOB2 (B-PER, I-PER, O).")
    for data in ("conll2003", "wnut17"):  # the shipped IOB2 data passes
        dm = _setup(tmp_path / data, f"data={data}", "loss=token_cross_entropy", f"paths.data_dir={FIXTURES}")
        assert "O" in dm.label_names and any(n.startswith("B-") for n in dm.label_names)
        assert all(len(dm.splits[s]) for s in ("train", "val", "test"))
