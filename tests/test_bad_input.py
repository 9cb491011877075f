"""Bad input a new user gives ends in ONE line `error: <fix>` (exit status 2) before training, never a
traceback: corrupted files for every reader, wrong values for every kind of config key, files that are
not checkpoints, and the CLI's six classic cases."""

from __future__ import annotations

import csv
import io
import json
import random
import zipfile
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import FAST, FIXTURES, compose_cfg, run_script
from tunelab import cli, schema
from tunelab.checkpoints import check_checkpoint
from tunelab.data.readers import read_rows
from tunelab.errors import ConfigError
from tunelab.validation import validate

ROWS = 36  # rows (sentences for CoNLL, lines for text) per base file: three splits, yet every run is fast
HUGE = "word " * 20_000  # a 100 kB line


def _sst2() -> list[list]:
    lines = (FIXTURES / "sst2" / "train.tsv").read_text().splitlines()[1 : ROWS + 1]
    return [line.rsplit("\t", 1) for line in lines]


def _conll() -> list[list]:
    """wnut17 token/tag rows; [] marks a sentence break."""
    rows, sentences = [], 0
    for line in (FIXTURES / "wnut17" / "wnut17train.conll").read_text().splitlines():
        rows.append(line.split("\t") if line.strip() else [])
        sentences += not line.strip()
        if sentences == ROWS:
            return rows
    return rows


def _render_csv(rows: list[list]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["sentence", "label"], *rows])
    return out.getvalue()


def _render_jsonl(rows: list[list]) -> str:
    """A label "" is a missing field; numeric labels are JSON numbers."""
    out = []
    for text, label in rows:
        value = int(label) if isinstance(label, str) and label.isdigit() else label
        out.append(json.dumps({"text": text} | ({"label": value} if label != "" else {})))
    return "\n".join(out) + "\n"


# reader -> (base rows, render rows -> file text, file suffix, overrides, values for the mixed-types variant)
READERS = {
    "csv": (_sst2, _render_csv, "csv", ["data=csv", "data.text_column=sentence"], ["1", "2.5", "yes", "-0"]),
    "tsv": (_sst2, lambda rows: "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), "tsv",
            ["data=sst2", "data.test_file=null"], ["1", "2.5", "yes", "-0"]),
    "jsonl": (_sst2, _render_jsonl, "jsonl", ["data=jsonl"], [1, "1", 2.5, [1], {"a": 1}, True, None]),
    "conll": (_conll, lambda rows: "".join("\t".join(r) + "\n" for r in rows), "conll",
              ["data=wnut17", "loss=token_cross_entropy", "data.val_file=null", "data.test_file=null"],
              ["O", "1", "b-person", "O O"]),
    # one column: the text is its own label (next-token prediction)
    "text": (lambda: [[line] for line in (FIXTURES / "lm" / "input.txt").read_text().splitlines()[: ROWS * 4]],
             lambda rows: "\n".join(r[0] for r in rows) + "\n", "txt",
             ["data=text", "model.tokenizer=char", "loss=next_token_cross_entropy", "data.block_size=32"],
             ["\x00", "\x1b[31m", "\u2028", "\U0001f600"]),
}
WRONG_DELIMITER = {"csv": (",", ";"), "tsv": ("\t", ","), "jsonl": ("\n", " "), "conll": ("\t", " "),
                   "text": ("\n\n", "\n")}


def _with_labels(rows: list[list], values: list) -> list[list]:
    """Rows with their last column (label, tag) cycled through `values`; sentence breaks kept."""
    return [[*r[:-1], values[i % len(values)]] if r else r for i, r in enumerate(rows)]


def _cut_mid_row(text: str) -> str:
    lines = text.splitlines(keepends=True)
    k = next(i for i in range(len(lines) * 2 // 3, len(lines)) if len(lines[i]) > 4)
    return "".join(lines[:k]) + lines[k][: len(lines[k]) // 2]


def _insert_bytes(data: bytes, line: int, extra: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[: line - 1]) + extra + b"".join(lines[line - 1 :])


CORRUPTIONS = {
    "truncated": lambda rows, render, reader: _cut_mid_row(render(rows)).encode(),
    "random_bytes": lambda rows, render, reader: random.Random(0).randbytes(3000),
    "wrong_delimiter": lambda rows, render, reader: render(rows).replace(*WRONG_DELIMITER[reader]).encode(),
    "empty": lambda rows, render, reader: b"",
    "header_only": lambda rows, render, reader: render(rows).splitlines(keepends=True)[0].encode(),
    "missing_labels": lambda rows, render, reader: render(_with_labels(rows, [""])).encode(),
    "mixed_types": lambda rows, render, reader: render(_with_labels(rows, READERS[reader][4])).encode(),
    "huge_line": lambda rows, render, reader: render([*rows[:2], [HUGE, *rows[0][1:]], *rows[2:]]).encode(),
    "non_utf8": lambda rows, render, reader: _insert_bytes(render(rows).encode(), 5, b"\xff\xfe"),
}
MUST_FAIL = {"random_bytes", "empty", "non_utf8"}  # whatever the reader


@pytest.mark.parametrize("corruption", ["none", *CORRUPTIONS])
@pytest.mark.parametrize("reader", READERS)
def test_corrupted_file_is_one_line_naming_it_or_trains(run_cfg, tmp_path, reader, corruption) -> None:
    base, render, suffix, overrides, _ = READERS[reader]
    rows = base()
    data = render(rows).encode() if corruption == "none" else CORRUPTIONS[corruption](rows, render, reader)
    path = tmp_path / f"{corruption}.{suffix}"
    path.write_bytes(data)
    try:
        _, run_dir = run_cfg(*overrides, f"data.train_file={path}", "data.batch_size=2", "trainer=debug")
    except ConfigError as err:  # what the CLI prints as its one `error:` line, exit status 2
        message = str(err)
        assert corruption != "none", message
        assert "\n" not in message and path.name in message, message
        assert not list(tmp_path.glob("run*/metrics.json")), "a failed run wrote metrics"
        if corruption == "non_utf8":
            assert f"{path}:5: not valid utf-8 text" in message
        return
    assert corruption not in MUST_FAIL, f"{corruption} {reader} trained"
    assert (run_dir / "metrics.json").is_file()


def test_bom_and_data_encoding_are_read(tmp_path, cache_dir) -> None:
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + _render_csv(_sst2()).encode())
    assert list(read_rows(bom, "csv")[0]) == ["sentence", "label"]  # not '\ufeffsentence'
    legacy = tmp_path / "legacy.csv"
    legacy.write_bytes(_render_csv([["caf\xe9 cr\xe8me", "1"], *_sst2()]).encode("latin-1"))
    with pytest.raises(ConfigError, match=r"legacy.csv:2: not valid utf-8 text .* data.encoding=latin-1"):
        read_rows(legacy, "csv")
    cfg = compose_cfg(tmp_path, "data=csv", "data.text_column=sentence", f"data.train_file={legacy}",
                      "data.encoding=latin-1", "data.batch_size=2", cache=tmp_path / "cache")
    dm = instantiate(cfg.data, tokenizer=cfg.model.tokenizer, seed=0, _recursive_=False)
    dm.prepare_data()
    dm.setup("fit")
    assert sum(len(s) for s in dm.splits.values()) == ROWS + 1


# key -> (values it refuses, values it takes): one key per kind of rule in tunelab.schema
BAD_VALUES = {
    "data.batch_size": (["abc", 0, -4, 2.5, True, None], [1, 64]),  # positive integer
    "data.train_limit": (["all", 0, -1], [None, 10]),  # positive integer or null
    "model.freeze_layers": ([-1, "two", 1.0], [0, 2]),  # integer >= 0
    "trainer.max_epochs": ([-2, "3"], [-1, 0, 5, None]),  # integer >= -1 (Lightning: -1 = no limit)
    "optimizer.lr": ([-1, 0, "fast", float("inf"), float("nan")], [1e-5, 3, None]),  # number > 0
    "optimizer.weight_decay": ([-0.01, "none"], [0, 0.1]),  # number >= 0
    "optimizer.layer_decay": ([0, 1.5, -0.5, "x"], [0.8, 1, None]),  # number in (0, 1] or null
    "scheduler.warmup_ratio": ([-0.1, 1.5, "x"], [0, 0.5, 1]),  # fraction in [0, 1]
    "model.dropout": ([1, 1.5, -0.1], [0, 0.9, None]),  # probability in [0, 1)
    "data.group_by_length": (["yes", 1, None], [True, False]),  # bool
    "on_nan": (["explode", None, 1], ["stop", "skip", "off"]),  # one of
    "model.pooling": (["max", "cls", 1], ["mean", None]),  # one of, or null
    "trainer.precision": (["17", "fp32"], ["bf16-mixed", 32, None]),
    "data.encoding": (["utf-9", 8], ["utf-8", "latin-1", "utf-8-sig"]),  # a codec
    "data.text_column": (["", " ", 3], ["review"]),  # non-empty string
    "data.label_separator": (["", 3, None], [",", " ", " | "]),  # separator: whitespace counts
    "data.threshold": ([0, 1, 1.5, "half"], [0.05, 0.5, 0.95]),  # number in (0, 1)
    "data.val_fraction": ([0, 1, -0.1], [0.05, 0.5]),  # a share to carve: 0 would still carve one row
    "callbacks.ema.multi_avg_fn.decay": ([0, 1, -0.5], [0.5, 0.999]),  # (callbacks=ema)
    "trainer.limit_train_batches": ([-1, 1.5, "half"], [0, 10, 0.25, 1.0, None]),  # count or fraction
    "trainer.log_every_n_steps": ([-1, 1.5, "often"], [0, 1, 50, None]),  # Lightning's: 0 logs no step values
    "trainer.val_check_interval": ([0, 0.0, 1.5, -1, "00:00:00:00", "30s", {"minuts": 1}],  # 0 never is an interval
                                   [1, 50, 0.25, 1.0, None, "00:00:30:00", {"minutes": 30}]),  # Lightning's times
    "loss.label_smoothing": ([1, 1.5, -0.1], [0, 0.1, 0.9]),  # 1: uniform targets, nothing to learn
    "callbacks.early_stopping.patience": (["abc", -1], [0, 3]),  # (callbacks=early_stopping)
    "callbacks.generate.temperature": ([0, -1], [0.7, 1.0]),  # (callbacks=generate)
    "trainer.fast_dev_run": ([-1, "once"], [True, False, 3]),
    "trainer.devices": ([0, -5, [], [-1], "abc", "-5", ""], [1, 2, -1, "auto", "-1", [0, 1], "0,1"]),  # as Lightning parses
    "loss.class_weights": (["balancd", [], [-1, 1], ["a"], [True], 2, [0, 0]], ["balanced", [1, 2.5], [0, 1], None]),
    "seed": ([-1, 2**32, "x", 1.5], [0, 42, 2**32 - 1]),  # what numpy seeds
    "tags": (["foo", [True]], [[], ["sst2", "minilm"]]),  # a bare string would be read letter by letter
    "data.label_names": (["negative", [["a"]]], [None, ["negative", "positive"], [0, 1]]),
    "ckpt_path": ([5, ""], [None, "last", "outputs/x.ckpt"]),
}


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    cfg = compose_cfg(tmp_path_factory.mktemp("schema"), "callbacks=ema")  # defines callbacks.ema
    more = compose_cfg(tmp_path_factory.mktemp("schema"), "callbacks=generate", "+callbacks.early_stopping.patience=3")
    with open_dict(cfg):  # and the keys of early stopping and text samples
        cfg.callbacks.generate, cfg.callbacks.early_stopping = more.callbacks.generate, more.callbacks.early_stopping
    return cfg


@pytest.mark.parametrize("key", BAD_VALUES)
def test_bad_config_values_are_one_line_naming_key_and_value(base_cfg, key) -> None:
    refused, taken = BAD_VALUES[key]
    for value in taken:
        cfg = base_cfg.copy()
        OmegaConf.update(cfg, key, value)
        schema.check(cfg)
    for value in refused:
        cfg = base_cfg.copy()
        OmegaConf.update(cfg, key, value)
        with pytest.raises(ConfigError) as err:
            schema.check(cfg)
        message = str(err.value)
        assert message.startswith(f"{key} must be ") and "; got " in message and "\n" not in message, message


def test_schema_messages_and_model_positions(base_cfg, tmp_path) -> None:
    cfg = base_cfg.copy()
    OmegaConf.update(cfg, "optimizer.lr", "0.001")  # what ${oc.env:MYLR} gives
    with pytest.raises(ConfigError) as err:
        schema.check(cfg)
    assert str(err.value) == ("optimizer.lr must be a number > 0 or null; got '0.001' (text, not a number: "
                              "${oc.env:NAME} gives text; ${oc.decode:${oc.env:NAME}} reads it as a number)")
    # RoBERTa numbers positions from pad_token_id + 1: 34 position embeddings with pad 0 hold 33 tokens
    (tmp_path / "roberta").mkdir()
    (tmp_path / "roberta" / "config.json").write_text(json.dumps(
        {"model_type": "roberta", "max_position_embeddings": 34, "pad_token_id": 0}))
    roberta = base_cfg.copy()
    OmegaConf.update(roberta, "model.name_or_path", str(tmp_path / "roberta"))
    OmegaConf.update(roberta, "model.config_overrides", {}, merge=False)  # model=tiny's would say 512
    OmegaConf.update(roberta, "data.max_length", 33)
    schema.check(roberta)
    OmegaConf.update(roberta, "data.max_length", 34)
    with pytest.raises(ConfigError, match=r"^data.max_length=34 exceeds the model's 33 positions; set data.max_length"):
        schema.check(roberta)
    for key, value, message in [
        ("data.batch_size", "abc", "data.batch_size must be a positive integer; got 'abc'"),
        ("optimizer.lr", -1, "optimizer.lr must be > 0; got -1"),
        ("data.max_length", 100_000, "data.max_length=100000 exceeds the model's 512 positions; "
                                     "set data.max_length=512 or lower."),
    ]:
        cfg = base_cfg.copy()
        OmegaConf.update(cfg, key, value)
        with pytest.raises(ConfigError) as err:
            schema.check(cfg)
        assert str(err.value) == message
    # a value or keyword the optimizer / scheduler class refuses: one line before the data and model load
    for override, message in [
        ("optimizer.betas=[0.9,2.0]", "the optimizer (AdamW) refuses its optimizer.* settings: Invalid beta parameter "
                                      "at index 1: 2.0"),
        ("+optimizer.beta=0.9", "the optimizer (AdamW) refuses its optimizer.* settings: AdamW.__init__() got an "
                                "unexpected keyword argument 'beta'"),
        ("+scheduler.cycles=2", "the scheduler refuses its scheduler.* settings: get_linear_schedule_with_warmup() "
                                "got an unexpected keyword argument 'cycles'"),
    ]:
        with pytest.raises(ConfigError) as err:
            validate(compose_cfg(tmp_path, override))
        assert str(err.value) == message
    # a tokenizer trained on LM text (gpt2_tiny's character one, byte-level BPE of a given size) for another task
    for tokenizer in ("char", "byte_bpe:512"):
        with pytest.raises(ConfigError, match=rf"^model.tokenizer={tokenizer} is trained on the language-modelling"):
            validate(compose_cfg(tmp_path, "model=gpt2_tiny", f"model.tokenizer={tokenizer}", "data=wnut17",
                                 "loss=token_cross_entropy"))
    # a weight list of the wrong length for the data's labels: before the data loads, not a traceback after it
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(tmp_path, "loss.class_weights=[1,2,3]"))
    assert str(err.value) == ("loss.class_weights has 3 entries but data=sst2 has 2 labels (negative, positive); give "
                              "one weight per label or use loss.class_weights=balanced.")
    assert schema.model_positions({"name_or_path": None, "config": {"n_positions": 256}}) == 256
    assert schema.model_positions({"name_or_path": "/nonexistent"}) is None  # reported when the model loads


def test_every_schema_key_is_a_real_config_key(tmp_path) -> None:
    """The table names keys the configs define (a typo in it would silently check nothing)."""
    groups = ["data=conll", "data=text", "model=gpt2_tiny", "loss=focal", "loss=bce", "loss=huber", "loss=smooth_l1",
              "optimizer=sgd", "peft=adalora", "peft=prefix", "callbacks=ema", "callbacks=early_stopping",
              "callbacks=generate"]
    configs = [("train", [override] if override else []) for override in [None, *groups]]
    defined = set()
    for name, overrides in [*configs, ("predict", ["data.predict_file=new.csv"])]:
        cfg = compose_cfg(tmp_path, *overrides, config_name=name, fast=False)
        defined |= {key for key in schema.RULES if OmegaConf.select(cfg, key, default="<absent>") != "<absent>"}
    assert set(schema.RULES) - defined == set()


def test_files_that_are_not_checkpoints_are_one_line(tmp_path, base_cfg) -> None:
    def saved(name: str, obj) -> Path:
        torch.save(obj, tmp_path / name)
        return tmp_path / name

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(random.Random(1).randbytes(5000))
    archive = tmp_path / "archive.ckpt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    header = {"state_dict": {}, "hyper_parameters": {"task": "classification", "label_names": ["negative", "positive"]}}
    other_labels = {"task": "classification", "label_names": ["a", "b", "c"]}
    cases = [
        (text, "is not a Lightning checkpoint (not a torch zip archive)"),
        (noise, "is not a Lightning checkpoint (not a torch zip archive)"),
        (archive, "is not a Lightning checkpoint (RuntimeError: "),
        (saved("weights.ckpt", {"weight": torch.zeros(2)}), "is not a Lightning checkpoint (no state_dict in it)"),
        (saved("list.ckpt", [1, 2]), "is not a Lightning checkpoint (no state_dict in it)"),
        (saved("other.ckpt", {"state_dict": {}}), "holds no tunelab hyper-parameters"),
        (saved("stsb.ckpt", header | {"hyper_parameters": {"task": "regression", "label_names": []}}),
         "is a regression checkpoint but data=sst2 is a classification task"),
        (saved("labels.ckpt", header | {"hyper_parameters": other_labels}),
         "was trained on the labels ['a', 'b', 'c'] but data=sst2 has ['negative', 'positive']"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError) as err:
            check_checkpoint(path, base_cfg)
        assert f"ckpt_path={path} " in str(err.value) and message in str(err.value), str(err.value)
        assert "\n" not in str(err.value)
    check_checkpoint(saved("good.ckpt", header), base_cfg)
    check_checkpoint(None, base_cfg)


def _table_inputs(tmp_path: Path) -> dict[str, list[str]]:
    """The issue's six inputs, as train.py overrides."""
    not_utf8 = tmp_path / "latin.tsv"
    not_utf8.write_bytes(b"sentence\tlabel\n\xff\xfebad\t1\ngood\t0\n")
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    not_ckpt = tmp_path / "model.ckpt"
    not_ckpt.write_text("hello\n")
    return {
        "not_utf8": [f"data.train_file={not_utf8}"],
        "header_only": ["data=csv", f"data.train_file={header_only}"],
        "not_a_checkpoint": [f"ckpt_path={not_ckpt}"],
        "negative_lr": ["optimizer.lr=-1"],
        "batch_size_abc": ["data.batch_size=abc"],
        "max_length_100000": ["data.max_length=100000"],
    }


EXPECTED = {
    "not_utf8": "latin.tsv:2: not valid utf-8 text (byte 0xff)",
    "header_only": "header.csv has a header but no rows",
    "not_a_checkpoint": "model.ckpt is not a Lightning checkpoint",
    "negative_lr": "optimizer.lr must be > 0; got -1",
    "batch_size_abc": "data.batch_size must be a positive integer; got 'abc'",
    "max_length_100000": "data.max_length=100000 exceeds the model's 512 positions",
}
SUBPROCESS = {"not_utf8", "batch_size_abc"}  # train.py itself; the others through cli.main_entry (what it runs)


@pytest.mark.parametrize("case", EXPECTED)
def test_issue_table_ends_in_one_error_line_exit_2(tmp_path, capsys, case) -> None:
    overrides = [*FAST, "trainer=debug", *_table_inputs(tmp_path)[case]]
    if case in SUBPROCESS:
        proc = run_script("train.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
        status, stderr = proc.returncode, proc.stderr
    else:
        with pytest.raises(SystemExit) as exit_:
            cli.main_entry(compose_cfg(tmp_path / "run", *overrides, fast=False))
        status, stderr = exit_.value.code, capsys.readouterr().err
    assert status == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and EXPECTED[case] in last, last
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_model_without_the_tasks_head_is_one_line_before_anything_loads(tmp_path) -> None:
    import transformers

    transformers.BartConfig(d_model=16, encoder_layers=1, decoder_layers=1).save_pretrained(tmp_path / "bart")
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(tmp_path, "model=hf", f"model.name_or_path={tmp_path / 'bart'}", "data=conll2003",
                             "loss=token_cross_entropy"))
    assert str(err.value) == ("model_type bart has no token_classification head in transformers "
                              "(AutoModelForTokenClassification); use a model that has one, or another task for this "
                              "model.")


@pytest.mark.parametrize("overrides, message", [
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing, yet the run would test and export its untrained "
                               "weights: set trainer.max_epochs above 0 (test a checkpoint with eval.py ckpt_path=...)."),
    (["trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0 trains nothing, yet the run would test and "
                                          "export its untrained weights: set trainer.limit_train_batches above 0 (test "
                                          "a checkpoint with eval.py ckpt_path=...)."),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 trains without end, so the learning-rate schedule has no length "
                                "to span: set trainer.max_steps, or scheduler=none."),
    (["trainer.min_epochs=3", "trainer.max_epochs=1"], "trainer.min_epochs=3 is more than trainer.max_epochs=1: lower "
                                                       "min_epochs or raise max_epochs."),
    (["trainer.check_val_every_n_epoch=5", "trainer.max_epochs=2"],
     "trainer.check_val_every_n_epoch=5 never validates in trainer.max_epochs=2: no best checkpoint, no early "
     "stopping; set check_val_every_n_epoch <= max_epochs."),
    (["optimizer=sgd", "optimizer.momentum=1"], "optimizer.momentum must be in [0, 1); got 1"),  # 1 or more diverges
    (["data.threshold=0.3"], "data.threshold is read by multilabel tasks only; data.task=classification would ignore "
                             "it: drop it."),
    (["data.standardize_targets=false"], "data.standardize_targets is read by regression tasks only; "
                                         "data.task=classification would ignore it: drop it."),
    (["data=stsb", "loss=mse", "loss.scale_m=2"], "loss.scale_m is read by classification tasks only; "
                                                  "data.task=regression would ignore it: drop it."),
    (["trainer.gradient_clip_algorithm=value"], "trainer.gradient_clip_algorithm=value clips at "
                                                "trainer.gradient_clip_val, which is null: set it (e.g. 0.5)."),
    (["callbacks=generate"], "callbacks.generate samples text from a causal LM, but data=sst2 is a classification "
                             "task: drop it (callbacks=default)."),
    (["peft.save_adapter=true"], "peft.save_adapter=true saves an adapter, but peft=none trains none: choose an "
                                 "adapter (peft=lora, ...) or drop it."),
    (["model=hf", "model.name_or_path=${minilm_path:}", "peft=lora", "model.freeze_layers=1"],
     "model.freeze_layers freezes base weights, which peft=lora freezes all of already (its adapters train on every "
     "layer): drop model.freeze_layers."),
    (["model=hf", "model.name_or_path=${minilm_path:}", "peft=adalora", "peft.target_r=20"],
     "peft.target_r=20 is more than peft.init_r=12: AdaLoRA prunes each module's rank from init_r down to target_r."),
    (["model.compile_mode=reduce-overhead"], "model.compile_mode applies only to a compiled model, and model.compile "
                                             "is false: add model.compile=true, or drop model.compile_mode."),
])
def test_settings_that_cannot_work_together_are_one_line_before_anything_loads(tmp_path, overrides, message) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(tmp_path, *overrides))
    assert str(err.value) == message
    validate(compose_cfg(tmp_path, "trainer.max_epochs=-1", "trainer.max_steps=5"))  # an end, in steps
    # a typed model.compile=false beside a compile setting is a choice (-m model.compile=false,true: eager vs compiled)
    validate(compose_cfg(tmp_path, "model.compile=false", "model.compile_mode=reduce-overhead"))


@pytest.mark.parametrize("override, message", [
    ("trainer.profiler=fast", "trainer refuses its settings: When passing string value for the `profiler` parameter of "
                              "`Trainer`, it can only be one of ['simple', 'advanced', 'pytorch', 'xla']"),
    ("callbacks.model_checkpoint.save_top_k=-2", "callbacks.model_checkpoint refuses its settings: Invalid value for "
                                                 "save_top_k=-2. Must be >= -1"),
])
def test_a_setting_lightning_refuses_is_one_line(run_cfg, override, message) -> None:
    with pytest.raises(ConfigError) as err:
        run_cfg(override, "data.train_limit=16", "data.batch_size=8", "trainer.max_steps=1")
    assert str(err.value) == message
