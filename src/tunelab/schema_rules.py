"""The vocabulary of the config schema (schema.RULES): what one key accepts, its wording in the one-line error,
and the rules many keys share."""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Rule:
    """What one key accepts. `kind`: int | number | bool | choice | encoding | text | separator | batches
    (Lightning's int count or float fraction) | bool_or_count | devices | weights ("balanced" or one weight per
    label) | names (a list of names: a bare string would be read letter by letter). Bounds (int / number) are inclusive unless
    `open_low` / `open_high`; `label` replaces the generated wording (e.g. "a positive integer")."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False
    choices: tuple = ()
    label: str | None = None

    def bounds(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        return ""

    def describe(self) -> str:
        if self.label:
            return self.label
        noun = {"int": "an integer", "number": "a number", "bool": "true or false", "text": "a non-empty string",
                "separator": "a non-empty string (whitespace counts)",
                "encoding": "a text encoding (utf-8, utf-8-sig, latin-1, cp1252, ...)",
                "choice": f"one of {list(self.choices)}",
                "batches": "a number of batches (an integer >= 0) or a fraction in [0, 1]",
                "bool_or_count": "true, false or a number of batches",
                "devices": "a count >= 1, -1 (all), auto, or device indices ([0, 1] or \"0,1\")",
                "weights": "balanced or a list of one weight >= 0 per label, not all 0",
                "names": "a list of names ([a, b])",
                "interval": "a number of batches (an integer >= 1), a fraction of an epoch in (0, 1], or a time "
                            "('DD:HH:MM:SS', or timedelta's {minutes: 30})"}[self.kind]
        return f"{noun} {self.bounds()}".strip() + (" or null" if self.nullable else "")

    def type_ok(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "int":
            return is_int(value)
        if self.kind == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "batches":
            return is_int(value) and value >= 0 or isinstance(value, float) and 0 <= value <= 1
        if self.kind == "bool_or_count":
            return isinstance(value, bool) or is_int(value) and value >= 0
        if self.kind == "devices":  # what Lightning's Trainer(devices=...) parses
            if isinstance(value, str):
                parts = [p.strip() for p in value.split(",") if p.strip()]
                return value.strip() in {"auto", "-1"} or bool(parts) and all(p.isdigit() for p in parts)
            if isinstance(value, list):
                return bool(value) and all(is_int(v) and v >= 0 for v in value)
            return is_int(value) and (value >= 1 or value == -1)
        if self.kind == "weights":  # all 0 would weigh every example 0: a loss of 0 / 0
            return value == "balanced" or isinstance(value, list) and bool(value) and all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in value
            ) and any(w > 0 for w in value)
        if self.kind == "interval":  # 0 would validate after every batch (0.0) or divide by zero (0)
            return is_int(value) and value >= 1 or isinstance(value, float) and 0 < value <= 1 or _duration(value)
        if self.kind == "names":
            return isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
        if self.kind == "text":
            return isinstance(value, str) and bool(value.strip())
        if self.kind == "separator":
            return isinstance(value, str) and value != ""
        try:  # encoding
            codecs.lookup(value)
            return True
        except (LookupError, TypeError):
            return False

    def range_ok(self, value: float) -> bool:
        low_ok = self.low is None or (value > self.low if self.open_low else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return low_ok and high_ok


def integer(low: int | None = None, *, nullable: bool = False, label: str | None = None) -> Rule:
    return Rule("int", low=low, nullable=nullable, label=label)


def number(low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False,
           nullable: bool = False) -> Rule:
    return Rule("number", low=low, high=high, open_low=open_low, open_high=open_high, nullable=nullable)


def one_of(*choices: Any, nullable: bool = False) -> Rule:
    return Rule("choice", choices=choices, nullable=nullable)


COUNT = integer(1, label="a positive integer")
COUNT_OR_NULL = integer(1, nullable=True, label="a positive integer or null")
FLAG = Rule("bool")
FLAG_OR_NULL = Rule("bool", nullable=True)
POSITIVE = number(0, open_low=True)
NON_NEGATIVE = number(0)
FRACTION = number(0, 1)  # a probability or a share of steps
DROPOUT = number(0, 1, open_high=True)
BATCHES = Rule("batches", nullable=True)  # null = all
WEIGHTS = Rule("weights", nullable=True)  # per-label loss weights; null = unweighted
NAMES = Rule("names")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TIMEDELTA_KEYS = {"weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds"}


def _duration(value: Any) -> bool:
    """A time Lightning validates after (val_check_interval): 'DD:HH:MM:SS' or timedelta's keywords, above 0."""
    if isinstance(value, str):
        parts = value.strip().split(":")
        return len(parts) == 4 and all(p.isdigit() for p in parts) and any(int(p) for p in parts)
    if isinstance(value, Mapping):
        numbers = [v for v in value.values() if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0]
        return bool(value) and set(map(str, value)) <= _TIMEDELTA_KEYS and len(numbers) == len(value) and any(numbers)
    return False
