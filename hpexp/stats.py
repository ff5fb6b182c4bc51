"""Statistics for conclusions: Student-t intervals, exact for every number of degrees of freedom.

One module serves reports, study finalization and the book, so an interval printed anywhere in
hpexp is computed one way: mean +/- t_{n-1, 0.975} * s / sqrt(n) over n independent runs (seeds).

For pages: `mean_interval` (the t-interval intersected with the metric's range, and no interval
below MIN_N_INTERVAL runs), `paired_difference` (per-seed differences, when settings share seeds),
`welch_difference` (independent groups), `median_range` (integer quantities such as the best
epoch) and `binomial_se` (the resolution of an accuracy measured on n examples).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MIN_N_INTERVAL",
    "Estimate",
    "binomial_se",
    "mean_ci",
    "mean_interval",
    "median_range",
    "paired_difference",
    "t_critical",
    "t_quantile",
    "t_two_sided",
    "welch_difference",
]


def t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (Abramowitz & Stegun 26.7.3-4, exact)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:
        term, total = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= (2 * k) / (2 * k + 1) * c2
        return 2 / math.pi * (theta + s * total)
    term, total = 1.0, 0.0
    for k in range(df // 2):
        total += term
        term *= (2 * k + 1) / (2 * k + 2) * c2
    return s * total


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided critical value t with P(|T| < t) = confidence (0.95 -> 2.776 for df=4).

    Solved by bisection on the exact distribution function, so there is no table to run out of:
    df=31 gives 2.040, not the normal 1.96.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = 0.0, 1e4
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Any, confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width, n) of the finite values: half-width = t_{n-1} * s / sqrt(n).

    The half-width is NaN for fewer than 2 values (one run says nothing about the spread).
    """
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    return float(x.mean()), t_quantile(confidence, n - 1) * float(x.std(ddof=1)) / math.sqrt(n), n


# --- estimates a report can print ---------------------------------------------------------------

MIN_N_INTERVAL = 3  # below this many runs a report lists the values, never a t-interval


@dataclass(frozen=True)
class Estimate:
    """A statistic over n runs: `value` (a mean, a mean difference or a median), the 95% interval
    [lo, hi] (NaN where none is given), how it was made, and the values it was made from."""

    value: float
    lo: float
    hi: float
    n: int
    method: str
    values: tuple[float, ...] = ()

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)


@functools.lru_cache(maxsize=512)
def t_critical(confidence: float, df: int) -> float:
    """`t_quantile`, remembered (a page asks for the same few quantiles thousands of times)."""
    return t_quantile(confidence, df)


def _finite(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def _interval(
    mean: float, half: float, n: int, values: np.ndarray, low: float, high: float, method: str
) -> Estimate:
    """mean +/- half intersected with [low, high]: the true value lies in the metric's range, so the
    intersection covers it whenever the t-interval does (same coverage, never an impossible bound)."""
    lo, hi = max(mean - half, low), min(mean + half, high)
    clipped = lo > mean - half or hi < mean + half
    return Estimate(
        mean,
        lo,
        hi,
        n,
        method + (f", intersected with [{low:g}, {high:g}]" if clipped else ""),
        tuple(map(float, values)),
    )


def mean_interval(
    values: Any, low: float = -math.inf, high: float = math.inf, confidence: float = 0.95
) -> Estimate:
    """The mean of the finite values with its t-interval, mean +/- t_{n-1} s / sqrt(n), intersected
    with the metric's range [low, high]. Fewer than MIN_N_INTERVAL values: the mean and the values,
    no interval (two seeds give a t quantile of 12.7 and an interval that says nothing)."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "no values")
    if n < MIN_N_INTERVAL:
        return Estimate(float(x.mean()), math.nan, math.nan, n, "values (too few for an interval)", tuple(x))
    half = t_critical(confidence, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return _interval(float(x.mean()), half, n, x, low, high, f"t-interval, {n - 1} df")


def paired_difference(
    a: Mapping[Any, float],
    b: Mapping[Any, float],
    low: float = -math.inf,
    high: float = math.inf,
    confidence: float = 0.95,
) -> Estimate:
    """a - b paired by key (the seed): the mean of the per-key differences and its t-interval over
    the keys both have (n - 1 df), intersected with [low, high]; `values` are the differences."""
    keys = [k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    diffs = np.array([a[k] - b[k] for k in keys], dtype=float)
    est = mean_interval(diffs, low, high, confidence)
    return Estimate(est.value, est.lo, est.hi, est.n, "paired " + est.method, est.values)


def welch_difference(
    a: Any, b: Any, low: float = -math.inf, high: float = math.inf, confidence: float = 0.95
) -> Estimate:
    """mean(a) - mean(b) for independent groups, Welch's interval: half-width t_df sqrt(s_a^2/n_a +
    s_b^2/n_b), df by Welch-Satterthwaite rounded down (conservative: the exact t here needs an
    integer df). Fewer than MIN_N_INTERVAL values in either group: the difference, no interval."""
    x, y = _finite(a), _finite(b)
    if not len(x) or not len(y):
        return Estimate(math.nan, math.nan, math.nan, 0, "no values")
    diff, n = float(x.mean() - y.mean()), min(len(x), len(y))
    if n < MIN_N_INTERVAL:
        return Estimate(diff, math.nan, math.nan, n, "Welch: too few values for an interval")
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if va + vb == 0:
        df = len(x) + len(y) - 2
    else:
        df = max(1, math.floor((va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))))
    half = t_critical(confidence, df) * math.sqrt(va + vb)
    return _interval(diff, half, n, np.array([]), low, high, f"Welch t-interval, {df} df")


def median_range(values: Any) -> Estimate:
    """For integer quantities (the best epoch): the median and the range [min, max] of the values."""
    x = _finite(values)
    if not len(x):
        return Estimate(math.nan, math.nan, math.nan, 0, "no values")
    return Estimate(float(np.median(x)), float(x.min()), float(x.max()), len(x), "median, range", tuple(x))


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent examples: sqrt(p (1 - p) / n).
    It is the resolution of the evaluation set: 0.0017 (0.17 points) for p = 0.97 on 10,000 images."""
    if n < 1:
        raise ValueError(f"n must be >= 1 examples, got {n}")
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(p * (1 - p) / n)
