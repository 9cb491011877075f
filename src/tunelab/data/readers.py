"""Read rows from delimited text (csv/tsv), JSON lines, CoNLL token files and plain text."""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import sys
from pathlib import Path

from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

csv.field_size_limit(sys.maxsize)  # IMDb reviews exceed the default 128 KiB field limit


def existing_file(path: str | Path, keys: str = "data.train_file / data.val_file / data.test_file") -> Path:
    """`path` as a Path; a ConfigError naming the config keys to check when it is not a file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a data file; check {keys}.")
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}; check {keys}.")
    return path


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The decoded text of a data file, with universal newlines (\\r\\n and \\r -> \\n, so a Windows copy
    gives the same rows and documents). Undecodable bytes are a ConfigError naming file:line and the fix;
    a UTF-8 byte-order mark is dropped (Excel writes one, and it would stick to the first column name)."""
    path = existing_file(path)
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        message = f"data.encoding={encoding!r} is not a known text encoding; use e.g. utf-8 or latin-1."
        raise ConfigError(message) from None
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not codec.startswith(("utf-16", "utf-32")):
        # Excel's "Unicode Text": any 8-bit codec would read it as NUL-interleaved garbage
        raise ConfigError(f"{path} is UTF-16 text (it starts with a UTF-16 byte-order mark); set "
                          "data.encoding=utf-16 or save the file as UTF-8.")
    if data.startswith(codecs.BOM_UTF8) and not codec.startswith("utf-8"):
        if _decodes(data, "utf-8"):  # latin-1 would read the mark as 'ï»¿' glued to the first column / token
            raise ConfigError(f"{path} is UTF-8 with a byte-order mark, not {encoding}; drop data.encoding "
                              "(or set data.encoding=utf-8).")
        data = data[len(codecs.BOM_UTF8):]  # a mark on mixed-encoding text is still no content
    try:
        text = data.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as err:  # positions are within err.object (after a BOM the codec skipped)
        head = err.object[: err.start]
        line = head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1  # as universal newlines count
        raise ConfigError(
            f"{path}:{line}: not valid {encoding} text (byte {err.object[err.start]:#04x}); save the file as "
            "UTF-8 or set data.encoding to the file's encoding (e.g. data.encoding=latin-1)."
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decodes(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
    except UnicodeDecodeError:
        return False
    return True


TABLE_FORMATS = ("csv", "tsv", "jsonl")  # what read_table reads


def read_rows(path: str | Path, fmt: str, *, encoding: str = "utf-8") -> list[dict[str, str]]:
    """All rows of a csv/tsv/jsonl file as dicts of column -> raw string value."""
    return read_table(path, fmt, encoding=encoding)[0]


def read_table(path: str | Path, fmt: str, *, encoding: str = "utf-8") -> tuple[list[dict], list[int]]:
    """The rows of a csv/tsv/jsonl file and the line each starts on (for error messages). A file without
    rows is a ConfigError naming it."""
    path = existing_file(path)
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"data.format={fmt!r} is not supported; use csv, tsv or jsonl.")
    text = read_text(path, encoding)
    rows, lines = _read_jsonl(path, text) if fmt == "jsonl" else _read_delimited(path, text, fmt)
    if not rows:
        raise ConfigError(f"{path} has {'a header but ' if fmt != 'jsonl' else ''}no rows; add at least one row.")
    return rows, lines


def _read_jsonl(path: Path, text: str) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    for line_no, line in enumerate(io.StringIO(text, newline=None), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{line_no}: malformed JSON line ({err.msg}); fix or remove it.") from err
        if not isinstance(row, dict):
            raise ConfigError(
                f"{path}:{line_no}: a JSON {type(row).__name__} where a JSON object ({{\"column\": value, ...}}) "
                "was expected; fix or remove the line."
            )
        rows.append(row), lines.append(line_no)
    return rows, lines


def _read_delimited(path: Path, text: str, fmt: str) -> tuple[list[dict], list[int]]:
    # GLUE-style TSVs are unquoted and contain bare '"' characters: read them with QUOTE_NONE
    kwargs = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else dict(delimiter=",")
    reader = csv.reader(io.StringIO(text, newline=""), **kwargs)
    rows, lines = [], []
    try:
        header = next(reader, None)
        if header is None:
            raise ConfigError(f"{path} is empty; it needs a header line and at least one row.")
        start = reader.line_num + 1
        for values in reader:
            if values:
                if len(values) != len(header):
                    raise ConfigError(
                        f"{path}:{start}: {len(values)} columns where the header has {len(header)}; "
                        f"fix the row (is data.format={fmt} right?){_quoted_tsv_hint(fmt, header, rows, values)}"
                    )
                rows.append(dict(zip(header, values))), lines.append(start)
            start = reader.line_num + 1
    except csv.Error as err:
        raise ConfigError(f"{path}:{reader.line_num}: {err}; fix the row (is data.format={fmt} right?).") from None
    return rows, lines


def _quoted_tsv_hint(fmt: str, header: list[str], rows: list[dict], values: list[str]) -> str:
    """A hint when a tsv looks quoted (pandas to_csv(sep='\\t'), csv.writer): its quoted tabs and
    newlines split cells and rows, as QUOTE_NONE reads them."""
    cells = [*header, *values, *(rows[0].values() if rows else ())]
    if fmt != "tsv" or not any(c.startswith('"') for c in cells):
        return "."
    return ("; tsv files are read unquoted (as GLUE writes them) and this one has quoted cells: write "
            "it unquoted (no tab or newline inside a cell) or save it comma-separated and set data.format=csv.")


def require_columns(
    rows: list[dict],
    columns: dict[str, str | None],
    path: str | Path,
    *,
    lines: list[int] | None = None,
    non_empty: tuple[str, ...] = (),
) -> None:
    """Fail with the available columns when a configured column is missing. With the rows' `lines`,
    also every row must hold every column (JSON lines may leave fields out), not as a JSON null (it would
    become the text "None"), and the `non_empty` ones (e.g. "label_column") a value: a row without one
    is an error naming file:line."""
    if not rows:
        return
    available = list(rows[0].keys())
    for key, column in columns.items():
        if column is not None and column not in rows[0]:
            # one column whose name holds the other separator: the file was read with the wrong data.format
            other = next((fmt for sep, fmt in ((",", "csv"), ("\t", "tsv")) if len(available) == 1
                          and sep in available[0]), None)
            hint = f" (the header reads as one column: is it data.format={other}?)" if other else ""
            raise ConfigError(f"data.{key}={column!r} is not a column of {path}; columns are {available}{hint}.")
    for row, line in zip(rows, lines or ()):
        for key, column in columns.items():
            if column is None:
                continue
            if column not in row:
                raise ConfigError(f"{path}:{line}: no {column!r} field (data.{key}); add it or remove the row.")
            value = row[column]
            if value is None or (key in non_empty and not str(value).strip()):
                null = ", a JSON null" if value is None else ""
                raise ConfigError(f"{path}:{line}: empty {column!r} (data.{key}{null}); fill it in or remove the row.")


def read_conll(
    path: str | Path,
    tag_column: int | None = -1,
    token_column: int = 0,
    delimiter: str | None = None,
    skip_prefixes: tuple[str, ...] = ("-DOCSTART-",),
    *,
    encoding: str = "utf-8",
) -> list[dict]:
    """Sentences of a CoNLL-style file: one token per line, columns split by `delimiter` (None = any
    whitespace), blank (or whitespace-only) lines between sentences. Each sentence is
    {"tokens", "tags", "lines"} with the 1-based line number of every token, for error messages;
    tag_column=None reads untagged text (tokens only, "tags" empty)."""
    text = read_text(path, encoding)
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    widths: dict[int, tuple[int, str]] = {}  # columns per line -> the first line that has that many

    def flush() -> None:
        if tokens:
            sentences.append({"tokens": list(tokens), "tags": list(tags), "lines": list(lines)})
        tokens.clear(), tags.clear(), lines.clear()

    for line_no, line in enumerate(io.StringIO(text, newline=None), 1):
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            continue
        if line.startswith(skip_prefixes):
            flush()  # -DOCSTART- separates documents
            continue
        columns = line.split(delimiter)
        widths.setdefault(len(columns), (line_no, line))
        if tag_column is None:
            needed = [token_column]
        else:  # the token and the tag must be two different columns (-1 and 0 are one on a 1-column line)
            needed = [token_column, tag_column]
        positions = {i % len(columns) for i in needed if -len(columns) <= i < len(columns)}
        if len(positions) < len(needed):
            raise ConfigError(_conll_columns_message(path, line_no, line, len(columns), token_column, tag_column,
                                                     delimiter))
        token = columns[token_column]
        tag = columns[tag_column].strip() if tag_column is not None else None
        if tag_column is not None and not tag:
            raise ConfigError(f"{path}:{line_no}: the token {token!r} has an empty tag; fill it in or remove the line.")
        tokens.append(token), lines.append(line_no)
        if tag is not None:
            tags.append(tag)
    flush()
    if not sentences:
        line = "'token ... tag'" if tag_column is not None else "token"  # a file to predict on has no tags
        raise ConfigError(f"{path} has no tokens; it needs one {line} line per token, a blank line between sentences.")
    if tag_column is None and len(widths) > 1:
        # a CoNLL file's lines have fixed columns; lines of free text are each read as one word, the rest dropped
        (narrow, _), (wide, (line_no, line)) = min(widths.items()), max(widths.items())
        log.warning("%s:%d: %d columns where other lines have %d (%r): each line is read as one token (column "
                    "data.token_column=%d); a CoNLL file has one token per line and a blank line between sentences",
                    path, line_no, wide, narrow, line[:60], token_column)
    return sentences


def _conll_columns_message(path: str | Path, line_no: int, line: str, count: int, token_column: int,
                           tag_column: int | None, delimiter: str | None) -> str:
    split = "whitespace" if delimiter is None else repr(delimiter)
    if "\t" in line and delimiter not in (None, "\t"):
        fix = "the line has tabs: set data.delimiter=null (any whitespace) or a tab"
    elif delimiter == "\t" and "\t" not in line and " " in line.strip():
        fix = "the line has no tab but spaces: set data.delimiter=' ' or null (any whitespace)"
    else:
        fix = "fix the line or check data.delimiter / data.tag_column"
    return (f"{path}:{line_no}: {count} column(s) split by {split}, too few for data.token_column={token_column} "
            f"and data.tag_column={tag_column}; {fix}.")


def read_documents(
    path: str | Path, fmt: str = "txt", text_column: str = "text", separator: str = "\n\n", *, encoding: str = "utf-8"
) -> list[str]:
    """Documents of a plain-text file (split on `separator`; empty = the whole file is one document)
    or of a JSON-lines file (one document per line, `text_column`)."""
    if fmt == "jsonl":
        rows, lines = read_table(path, "jsonl", encoding=encoding)
        require_columns(rows, {"text_column": text_column}, path, lines=lines)
        return [str(r[text_column]) for r in rows if str(r[text_column]).strip()]
    if fmt != "txt":
        raise ConfigError(f"data.format={fmt!r} is not supported for language modelling; use txt or jsonl.")
    text = read_text(path, encoding)
    separator = separator.replace("\r\n", "\n").replace("\r", "\n")  # the text has universal newlines
    docs = text.split(separator) if separator else [text]
    return [d for d in docs if d.strip()]
