"""Significance over test examples: a paired bootstrap of a metric difference and Holm's correction
for several configs tested against one baseline; notes on seed counts too small for the statistics over
seeds. (Tests over seeds: tunelab.report.compare.)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tunelab.errors import ConfigError

RESAMPLES = 10_000
BLOCK = 500  # replicates per weight matrix: bounds memory at BLOCK x examples


@dataclass
class Bootstrap:
    delta: float  # the observed difference
    ci_low: float
    ci_high: float
    p_value: float
    resamples: int


def resample_weights(n: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """[replicates, n]: how often each of n examples is drawn when n are drawn with replacement."""
    drawn = rng.integers(0, n, size=(replicates, n)) + n * np.arange(replicates)[:, None]
    return np.bincount(drawn.ravel(), minlength=replicates * n).reshape(replicates, n).astype(float)


def paired_bootstrap(difference: Callable[[np.ndarray], np.ndarray], n: int, resamples: int = RESAMPLES,
                     seed: int = 0, confidence: float = 0.95) -> Bootstrap:
    """Bootstrap of `difference(weights) -> [replicates]` over n paired examples: each replicate draws
    the examples once and the same draw weighs every paired prediction (all seeds of both configs).
    CI: the percentile interval. p (two-sided): the share of replicates whose difference lies at least
    as far from the observed one as the observed one lies from 0, i.e. the bootstrap distribution
    shifted to the null of no difference; (hits + 1) / (resamples + 1), so never 0."""
    observed = float(difference(np.ones((1, n)))[0])
    rng = np.random.default_rng(seed)
    replicates = np.concatenate([difference(resample_weights(n, min(BLOCK, resamples - done), rng))
                                 for done in range(0, resamples, BLOCK)])
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    hits = int(np.sum(np.abs(replicates - observed) >= abs(observed) - 1e-12))
    return Bootstrap(observed, float(low), float(high), (hits + 1) / (resamples + 1), resamples)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and is not counted): the i-th smallest of m
    is multiplied by m - i + 1, then made non-decreasing in that order and capped at 1."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p))
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def check_alpha(alpha: float) -> None:
    """The significance level of the CLIs (tunelab.compare, tunelab.report): one line for a value outside (0, 1)."""
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha={alpha} must lie in (0, 1), e.g. 0.05.")


def seed_notes(seeds: dict[str, int]) -> list[str]:
    """Notes on configs ({label: distinct seeds}) with fewer seeds than the most-seeded one (marked † in
    the tables) and with fewer than 3 seeds, whose t-interval is too wide to say anything."""
    notes, most = [], max(seeds.values(), default=0)
    fewer = [f"`{label}` ({n})" for label, n in seeds.items() if n < most]
    if fewer:
        notes.append(f"† fewer seeds than the most-seeded config ({most}): {', '.join(fewer)}; their means and CIs "
                     "rest on fewer runs (a failed job or a shorter sweep), so their place in the table is less "
                     "certain.")
    few = [f"`{label}`" for label, n in seeds.items() if n < 3]
    if few:
        notes.append(f"Fewer than 3 seeds: {', '.join(few)}. Their 95% CI is n/a with 1 seed and ±12.7 standard "
                     "errors with 2, too wide to inform: it can leave the metric's range (below 0 or above 1 for "
                     "accuracy) and is shown as computed, not clipped.")
    return notes
