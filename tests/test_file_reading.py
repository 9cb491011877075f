"""Files as other tools write them read like the plain ones, or fail with one line naming the fix: Windows
line endings, JSON nulls, CoNLL lines split by the wrong delimiter, UTF-16 and byte-order marks under the
wrong data.encoding, and quoted TSVs."""

from __future__ import annotations

import csv
import io
import json
import logging

import pytest
from hydra.utils import instantiate

from conftest import compose_cfg
from tunelab.data.readers import read_conll, read_documents, read_rows, read_table, require_columns
from tunelab.errors import ConfigError

ROWS = [["a fine film", "1"], ["dull , \"flat\" and long", "0"], ["it works", "1"]]
LM = ["data=text", "model=gpt2_tiny", "model.tokenizer=char", "loss=next_token_cross_entropy"]
CONLL = "EU\tB-ORG\nrejects\tO\nGerman\tB-MISC\n\nPeter\tB-PER\nBlackburn\tI-PER\n"


def _csv(rows: list[list[str]], **fmt) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", **fmt).writerows([["sentence", "label"], *rows])
    return out.getvalue()


def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        call(*args, **kwargs)
    assert "\n" not in str(err.value), str(err.value)
    return str(err.value)


def _lm_datamodule(tmp_path, cache_dir, train_file, *overrides):
    cfg = compose_cfg(tmp_path, *LM, f"data.train_file={train_file}", *overrides, cache=cache_dir)
    dm = instantiate(cfg.data, tokenizer=cfg.model.tokenizer, seed=cfg.seed, _recursive_=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ---- 1. Windows (CRLF) and old-Mac (CR) line endings ---------------------------------------------------
def test_crlf_text_gives_the_documents_of_its_lf_copy(tmp_path) -> None:
    lf = "First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved.\n"
    docs = {}
    for name, newline in {"lf": "\n", "crlf": "\r\n", "cr": "\r"}.items():
        path = tmp_path / f"{name}.txt"
        path.write_bytes(lf.replace("\n", newline).encode())
        docs[name] = read_documents(path)
    assert len(docs["lf"]) == 3
    assert docs["crlf"] == docs["cr"] == docs["lf"]  # one document each, no '\r' in the text
    # a separator written with Windows newlines still splits the (translated) text
    assert read_documents(tmp_path / "crlf.txt", separator="\r\n\r\n") == docs["lf"]


def test_crlf_text_trains_a_char_vocabulary_without_cr(tmp_path, cache_dir) -> None:
    text = "".join(f"speech {i}:\nto be or not {i}\n\n" for i in range(40))
    blocks = {}
    for name, newline in {"lf": "\n", "crlf": "\r\n"}.items():
        path = tmp_path / f"{name}.txt"
        path.write_bytes(text.replace("\n", newline).encode())
        dm = _lm_datamodule(tmp_path / name, cache_dir, path, "data.packing=false", "data.block_size=16")
        assert "\r" not in dm.tokenizer.get_vocab()
        blocks[name] = [dm.tokenizer.decode(e["input_ids"]) for e in dm.splits["train"].examples]
    assert blocks["crlf"] == blocks["lf"]
    assert sum("<|endoftext|>" in b for b in blocks["lf"]) >= 30  # an EOS after every document


def test_crlf_csv_keeps_rows_quoted_newlines_and_line_numbers(tmp_path) -> None:
    rows = [["line one\nline two", "1"], *ROWS]
    lf, crlf = tmp_path / "lf.csv", tmp_path / "crlf.csv"
    lf.write_text(_csv(rows))
    crlf.write_bytes(_csv(rows).replace("\n", "\r\n").encode())
    assert read_table(crlf, "csv") == read_table(lf, "csv")
    assert read_table(lf, "csv")[1] == [2, 4, 5, 6]  # the quoted row spans lines 2-3
    # a short row's line number is the same either way
    crlf.write_bytes((_csv(rows) + "only one cell\n").replace("\n", "\r\n").encode())
    assert f"{crlf}:7: 1 columns where the header has 2" in _one_line_error(read_table, crlf, "csv")


# ---- 2. JSON null in a required column ----------------------------------------------------------------
@pytest.mark.parametrize("key, column", [("text_column", "text"), ("text_pair_column", "pair"),
                                         ("label_column", "label")])
def test_json_null_in_a_required_column_names_file_line(tmp_path, key, column) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "a fine film", "pair": "yes", "label": 1}, {"text": "dull", "pair": "no", "label": 0}]
    rows[1][column] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, lines = read_table(path, "jsonl")
    columns = {"text_column": "text", "text_pair_column": "pair", "label_column": "label"}
    message = _one_line_error(require_columns, records, columns, path, lines=lines, non_empty=("label_column",))
    assert message.startswith(f"{path}:2: empty '{column}' (data.{key}")
    assert "fill it in or remove the row" in message


def test_json_null_text_fails_the_datamodule_and_language_modelling(tmp_path, cache_dir) -> None:
    path = tmp_path / "null.jsonl"
    path.write_text('{"text": "fine", "label": 1}\n{"text": 5, "label": 0}\n{"text": null, "label": 1}\n')
    cfg = compose_cfg(tmp_path, "data=jsonl", f"data.train_file={path}", cache=cache_dir)
    dm = instantiate(cfg.data, tokenizer=cfg.model.tokenizer, seed=0, _recursive_=False)
    with pytest.raises(ConfigError, match=rf"^{path}:3: empty 'text' \(data.text_column"):
        dm.prepare_data()
    assert f"{path}:3: empty 'text'" in _one_line_error(read_documents, path, "jsonl")
    path.write_text('{"text": "fine", "label": 1}\n{"text": 5, "label": 0}\n')
    assert read_documents(path, "jsonl") == ["fine", "5"]  # a number is its text


def test_empty_text_cells_in_csv_stay_allowed(tmp_path) -> None:
    path = tmp_path / "empty_text.csv"
    path.write_text(_csv([["", "1"], *ROWS]))
    rows, lines = read_table(path, "csv")
    require_columns(rows, {"text_column": "sentence", "label_column": "label"}, path, lines=lines,
                    non_empty=("label_column",))
    assert rows[0] == {"sentence": "", "label": "1"}


# ---- 3. CoNLL lines with too few columns --------------------------------------------------------------
def test_conll_split_by_the_wrong_delimiter_names_line_and_fix(tmp_path, caplog) -> None:
    tabs = tmp_path / "tabs.conll"
    tabs.write_text(CONLL)
    message = _one_line_error(read_conll, tabs, delimiter=" ")
    assert message.startswith(f"{tabs}:1: 1 column(s) split by ' '")
    assert "the line has tabs" in message and "data.delimiter=null" in message
    assert "EU\tB-ORG" not in message  # no tag made of the whole line
    spaces = tmp_path / "spaces.conll"
    spaces.write_text(CONLL.replace("\t", " "))
    message = _one_line_error(read_conll, spaces, tag_column=1, delimiter="\t")
    assert message.startswith(f"{spaces}:1: 1 column(s)") and "no tab but spaces" in message
    assert "data.delimiter=' '" in message
    bare = tmp_path / "bare.conll"
    bare.write_text("EU\tB-ORG\nrejects\n")
    assert _one_line_error(read_conll, bare).startswith(f"{bare}:2: 1 column(s) split by whitespace")
    # untagged text (a file to predict on) needs the token column only; the right delimiter reads the tags
    with caplog.at_level(logging.WARNING, logger="tunelab.data.readers"):
        assert read_conll(bare, tag_column=None)[0]["tokens"] == ["EU", "rejects"]
    # lines of different widths: free text read as CoNLL keeps one word per line, which the log says
    assert f"{bare}:1: 2 columns where other lines have 1 ('EU\\tB-ORG'): each line is read as one token" in caplog.text
    assert read_conll(tabs, delimiter="\t")[1] == {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"],
                                                    "lines": [5, 6]}


# ---- 4. UTF-16 and the UTF-8 byte-order mark under the wrong data.encoding ---------------------------
@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be"])
def test_utf16_file_hints_utf16_and_reads_with_it(tmp_path, codec) -> None:
    text = "sentence\tlabel\r\n" + "".join(f"{t}\t{y}\r\n" for t, y in [["caf\u00e9 cr\u00e8me", "1"], *ROWS])
    path = tmp_path / "unicode.tsv"
    path.write_bytes(("\ufeff" + text).encode(codec) if codec.endswith("be") else text.encode(codec))
    assert path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    for encoding in ("utf-8", "latin-1", "cp1252"):
        message = _one_line_error(read_rows, path, "tsv", encoding=encoding)
        assert str(path) in message and "data.encoding=utf-16" in message and "latin-1" not in message
    rows = read_rows(path, "tsv", encoding="utf-16")
    assert list(rows[0]) == ["sentence", "label"] and rows[0]["sentence"] == "caf\u00e9 cr\u00e8me"
    assert len(rows) == 4


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_utf8_bom_under_a_legacy_encoding_names_the_fix(tmp_path, encoding) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _csv([["caf\u00e9", "1"], *ROWS]).encode())
    message = _one_line_error(read_rows, path, "csv", encoding=encoding)
    assert str(path) in message and "byte-order mark" in message and "drop data.encoding" in message
    assert "\u00ef\u00bb\u00bf" not in message
    conll = tmp_path / "excel.conll"
    conll.write_bytes(b"\xef\xbb\xbf" + CONLL.encode())
    assert "byte-order mark" in _one_line_error(read_conll, conll, encoding=encoding)
    # a legacy file that merely starts with the mark still reads, without it
    mixed = tmp_path / "mixed.csv"
    mixed.write_bytes(b"\xef\xbb\xbf" + _csv([["caf\u00e9", "1"]]).encode("latin-1"))
    assert read_rows(mixed, "csv", encoding=encoding) == [{"sentence": "caf\u00e9", "label": "1"}]


# ---- 5. quoted TSVs -----------------------------------------------------------------------------------
def test_quoted_tsv_error_says_tsv_is_read_unquoted(tmp_path) -> None:
    rows = [["he said \"great\" movie", "1"], ["plain text", "0"], ["multi\nline review", "1"]]
    path = tmp_path / "quoted.tsv"
    path.write_text(_csv(rows, delimiter="\t"))  # csv.writer / pandas to_csv(sep="\t") quote these cells
    message = _one_line_error(read_rows, path, "tsv")
    assert message.startswith(f"{path}:4: 1 columns where the header has 2")
    assert "read unquoted" in message and "data.format=csv" in message
    # the fix the hint gives reads the rows as written
    fixed = tmp_path / "quoted.csv"
    fixed.write_text(_csv(rows))
    assert read_rows(fixed, "csv") == [{"sentence": t, "label": y} for t, y in rows]
    # GLUE-style: bare quotes inside unquoted cells are text, and a short row there gets no quoting hint
    glue = tmp_path / "glue.tsv"
    glue.write_text("sentence\tlabel\nhe said \"great\" movie\t1\nno label here\n")
    message = _one_line_error(read_rows, glue, "tsv")
    assert message.startswith(f"{glue}:3: 1 columns") and "unquoted" not in message


def test_a_tab_delimiter_spelled_backslash_t_reads_tab_separated_conll(tmp_path, cache_dir) -> None:
    """data.delimiter='\t' on a command line reaches the config as backslash + t (it split nothing, and every
    line failed as one column); an empty delimiter is one line before anything reads."""
    from tunelab import schema

    path = tmp_path / "tabs.conll"
    path.write_text(CONLL.replace("Blackburn\t", "Black burn\t"))  # a space inside a token: only a tab splits it
    cfg = compose_cfg(tmp_path, "data=conll", f"data.train_file={path}", "data.delimiter=\\t", cache=cache_dir)
    dm = instantiate(cfg.data, tokenizer=cfg.model.tokenizer, seed=0, _recursive_=False)
    assert dm.delimiter == "\t"
    assert read_conll(path, delimiter=dm.delimiter)[1]["tokens"] == ["Peter", "Black burn"]
    with pytest.raises(ConfigError, match="^data.delimiter must be a non-empty string"):
        schema.check(compose_cfg(tmp_path, "data=conll", "data.delimiter=''"))


def test_a_directory_given_as_a_data_file_says_so(tmp_path) -> None:
    from tunelab.data.readers import existing_file

    with pytest.raises(ConfigError) as err:
        existing_file(tmp_path, "data.predict_file")
    assert str(err.value) == f"{tmp_path} is a directory, not a data file; check data.predict_file."


def test_an_empty_conll_file_names_the_lines_it_needs(tmp_path) -> None:
    from tunelab.data.readers import read_conll

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    for tag_column, line in ((-1, "'token ... tag'"), (None, "token")):  # training data / a file to predict on
        with pytest.raises(ConfigError) as err:
            read_conll(empty, tag_column=tag_column)
        assert str(err.value) == f"{empty} has no tokens; it needs one {line} line per token, a blank line between sentences."


def test_a_csv_read_as_tsv_hints_at_data_format(tmp_path) -> None:
    from tunelab.data.readers import read_table, require_columns

    path = tmp_path / "new.csv"
    path.write_text("text,id\ngreat film,1\n")
    rows, lines = read_table(path, "tsv")
    with pytest.raises(ConfigError) as err:
        require_columns(rows, {"text_column": "text"}, path, lines=lines)
    assert str(err.value) == (f"data.text_column='text' is not a column of {path}; columns are ['text,id'] (the header "
                              "reads as one column: is it data.format=csv?).")
