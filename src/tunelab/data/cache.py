"""The on-disk cache of encoded files: a file is tokenized once per tokenizer and encoding options, and every
later run (and every job of a sweep) reads its columns back."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable

CACHE_VERSION = 3  # part of every key: raising it retires the files written before (an encoding change)


def cached(cache_dir: Path | None, stem: str, key: dict[str, Any], build: Callable[[], dict[str, list]]
           ) -> dict[str, list]:
    """The columns stored under `key` in cache_dir, else build() stored there (no cache_dir: build())."""
    if cache_dir is None:
        return build()
    digest = hashlib.sha1(json.dumps({"version": CACHE_VERSION, **key}, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{stem}-{digest}.pkl"
    if cache.is_file():
        # pickle, not torch.load(weights_only=True): the safe unpickler is pure Python and slower by an order of
        # magnitude on lists of token ids. The file is one this program wrote into the user's own cache dir.
        with cache.open("rb") as f:
            return pickle.load(f)
    columns = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("wb") as f:
        pickle.dump(columns, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, cache)  # atomic: concurrent runs never read a half-written cache
    return columns


def file_stats(folder: str | os.PathLike) -> dict[str, list[int]]:
    """Size and mtime of each file in a tokenizer dir: a tokenizer saved again into the same dir (another vocabulary)
    must not reuse the ids encoded with the old one."""
    if not os.path.isdir(folder):
        return {}
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(Path(folder).iterdir()) if p.is_file()
            and p.suffix in (".json", ".txt", ".model")}
