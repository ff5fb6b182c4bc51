"""Preprocessing as config (`data.preprocess`): what the network sees of the raw values.

- `scale`: x = raw / data.scale (the book's bytes/256 for MNIST-like images, 255 maps to [0, 1],
  1.0 leaves the user's floats as they are);
- `standardize`: x = (raw - mean) / std per feature, both computed on the training split alone
  (never on validation or test data); a feature constant in training gets std 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["METHODS", "Preprocess", "fit"]

METHODS = ("scale", "standardize")


@dataclass(frozen=True, eq=False)
class Preprocess:
    """x -> (x - shift) / divisor, per feature; fitted by `fit` on the training split only."""

    shift: np.ndarray | float
    divisor: np.ndarray | float

    def __call__(self, raw: np.ndarray, dtype: str) -> np.ndarray:
        x = raw.reshape(len(raw), -1).astype(dtype)
        if not isinstance(self.shift, float) or self.shift != 0.0:
            x -= np.asarray(self.shift, dtype=dtype)
        x /= np.asarray(self.divisor, dtype=dtype)  # in `dtype`: float32 byte / 256 is exact
        return x


def check(method: object, scale: object) -> None:
    if method not in METHODS:
        raise ValueError(f"data.preprocess must be one of {list(METHODS)}, got {method!r}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
        raise ValueError(f"scale must be a finite number > 0 (256: the book; 255), got {scale!r}")


def fit(method: str, scale: float, train: np.ndarray | None) -> Preprocess:
    """The preprocessing `method`; `standardize` takes its statistics from `train` (the training
    split's raw examples) and nothing else."""
    check(method, scale)
    if method == "scale":
        return Preprocess(0.0, float(scale))
    assert train is not None
    rows = train.reshape(len(train), -1).astype(np.float64)
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    std[std == 0] = 1.0
    return Preprocess(mean, std)
