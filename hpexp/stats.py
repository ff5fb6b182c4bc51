"""Statistics for conclusions: Student-t intervals, exact for every number of degrees of freedom.

One module serves reports, study finalization and the book, so an interval printed anywhere in
hpexp is computed one way: mean +/- t_{n-1, 0.975} * s / sqrt(n) over n independent runs (seeds).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["mean_ci", "t_quantile", "t_two_sided"]


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
