"""The statistics of reports and comparisons. Over seeds: mean, std and t-interval of a config
(`describe`), Welch and paired t-tests of two configs (`compare_over_seeds`), notes on seed counts too small
for them. Over test examples: a paired bootstrap of a metric difference and Holm's correction for several
configs tested against one baseline. And how their numbers are written (`fmt`, `fmt_p`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

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


@dataclass
class Stat:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def describe(values: list[float], confidence: float = 0.95) -> Stat:
    """Mean, sample std (ddof=1) and the t-distribution confidence interval of the mean."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n if n else math.nan
    if n < 2:
        return Stat(n, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Stat(n, mean, std, mean - half, mean + half)


def compare_over_seeds(a: dict[Any, float], b: dict[Any, float]) -> dict[str, float | int | None]:
    """Two-sided p-values that configs a and b have the same mean: Welch's t-test over all seeds and
    a paired t-test over the seeds both ran (same seed = same init and data order)."""
    import warnings

    from scipy import stats

    def p(result) -> float | None:
        value = float(result.pvalue)
        return None if math.isnan(value) else value

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)  # near-identical seeds: p is still right
        welch = p(stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)) \
            if len(a) >= 2 and len(b) >= 2 else None
        common = sorted(set(a) & set(b), key=str)
        paired = p(stats.ttest_rel([a[s] for s in common], [b[s] for s in common])) if len(common) >= 2 else None
    return {"welch_p": welch, "paired_p": paired, "n_paired": len(common)}


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_p(value: float | None) -> str:
    return "n/a" if value is None else (f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}")
