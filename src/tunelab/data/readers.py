"""Read rows from delimited text (csv/tsv), JSON lines, CoNLL token files and plain text."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from tunelab.errors import ConfigError

csv.field_size_limit(sys.maxsize)  # IMDb reviews exceed the default 128 KiB field limit


def read_rows(path: str | Path, fmt: str) -> list[dict[str, str]]:
    """All rows of a csv/tsv/jsonl file as dicts of column -> raw string value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}; check data.train_file / data.val_file / data.test_file.")
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
