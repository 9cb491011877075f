"""Read rows from delimited text (csv/tsv), JSON lines, CoNLL token files and plain text."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from tunelab.errors import ConfigError

csv.field_size_limit(sys.maxsize)  # IMDb reviews exceed the default 128 KiB field limit


def existing_file(path: str | Path, keys: str = "data.train_file / data.val_file / data.test_file") -> Path:
    """`path` as a Path; a ConfigError naming the config keys to check when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}; check {keys}.")
    return path


def read_rows(path: str | Path, fmt: str) -> list[dict[str, str]]:
    """All rows of a csv/tsv/jsonl file as dicts of column -> raw string value."""
    path = existing_file(path)
    if fmt == "jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ConfigError(f"{path}:{line_no}: malformed JSON line ({err.msg}); fix or remove it.") from err
        return rows
    if fmt not in {"csv", "tsv"}:
        raise ConfigError(f"data.format={fmt!r} is not supported; use csv, tsv or jsonl.")
    # GLUE-style TSVs are unquoted and contain bare '"' characters: read them with QUOTE_NONE
    kwargs = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else dict(delimiter=",")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, **kwargs)
        try:
            header = next(reader)
        except StopIteration:
            raise ConfigError(f"{path} is empty; it needs a header line and at least one row.") from None
        rows = []
        for line_no, values in enumerate(reader, 2):
            if not values:
                continue
            if len(values) != len(header):
                raise ConfigError(
                    f"{path}:{line_no}: {len(values)} columns where the header has {len(header)}; "
                    f"fix the row (is data.format={fmt} right?)."
                )
            rows.append(dict(zip(header, values)))
    return rows


def require_columns(rows: list[dict], columns: dict[str, str | None], path: str | Path) -> None:
    """Fail with the available columns when a configured column is missing."""
    if not rows:
        return
    available = list(rows[0].keys())
    for key, column in columns.items():
        if column is not None and column not in rows[0]:
            raise ConfigError(f"data.{key}={column!r} is not a column of {path}; columns are {available}.")


def read_conll(
    path: str | Path,
    tag_column: int = -1,
    token_column: int = 0,
    delimiter: str | None = None,
    skip_prefixes: tuple[str, ...] = ("-DOCSTART-",),
) -> list[dict]:
    """Sentences of a CoNLL-style file: one token per line, columns split by `delimiter` (None = any
    whitespace), blank (or whitespace-only) lines between sentences. Each sentence is
    {"tokens", "tags", "lines"} with the 1-based line number of every token, for error messages."""
    path = existing_file(path)
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def flush() -> None:
        if tokens:
            sentences.append({"tokens": list(tokens), "tags": list(tags), "lines": list(lines)})
        tokens.clear(), tags.clear(), lines.clear()

    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            if line.startswith(skip_prefixes):
                flush()  # -DOCSTART- separates documents
                continue
            columns = line.split(delimiter)
            try:
                token, tag = columns[token_column], columns[tag_column]
            except IndexError:
                raise ConfigError(
                    f"{path}:{line_no}: {len(columns)} column(s) but data.token_column={token_column} / "
                    f"data.tag_column={tag_column}; fix the row or set data.delimiter / data.tag_column."
                ) from None
            tokens.append(token), tags.append(tag.strip()), lines.append(line_no)
    flush()
    return sentences


def read_documents(path: str | Path, fmt: str = "txt", text_column: str = "text", separator: str = "\n\n") -> list[str]:
    """Documents of a plain-text file (split on `separator`; empty = the whole file is one document)
    or of a JSON-lines file (one document per line, `text_column`)."""
    path = Path(path)
    if fmt == "jsonl":
        rows = read_rows(path, "jsonl")
        require_columns(rows, {"text_column": text_column}, path)
        return [str(r[text_column]) for r in rows if str(r[text_column]).strip()]
    if fmt != "txt":
        raise ConfigError(f"data.format={fmt!r} is not supported for language modelling; use txt or jsonl.")
    text = existing_file(path).read_text(encoding="utf-8")
    docs = text.split(separator) if separator else [text]
    return [d for d in docs if d.strip()]
