"""The datamodules, by the names the data configs' _target_ use (tunelab.data.TextDataModule). Imported when
first named, so the light modules of this package (readers, cache) load without torch and Lightning."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {"BaseDataModule": "datamodule", "TextDataModule": "text", "TokenClassificationDataModule":
            "token_classification", "LanguageModelingDataModule": "language_modeling"}
__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
