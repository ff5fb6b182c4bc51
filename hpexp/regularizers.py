"""Regularizers that add a penalty on the weights to the cost (biases are never regularized).

Each has `value(w, n)`, the penalty of one weight array for a training set of n examples, and
`grad(w, n)`, its gradient, which the training loop adds to the weight gradient before the
optimizer's step. With plain SGD, L2 is then exactly the book's weight decay w <- (1 - eta lmbda/n) w.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Regularizer(Protocol):
    def value(self, w: np.ndarray, n: int) -> np.ndarray: ...

    def grad(self, w: np.ndarray, n: int) -> np.ndarray: ...


@dataclass(frozen=True)
class NoPenalty:
    """No regularization."""

    def value(self, w: np.ndarray, n: int) -> np.ndarray:
        return np.zeros(w.shape[:-2])

    def grad(self, w: np.ndarray, n: int) -> np.ndarray:
        return np.zeros_like(w)


@dataclass(frozen=True)
class L2:
    """Penalty (lmbda / 2n) sum w^2, gradient (lmbda / n) w (network2's convention)."""

    lmbda: float

    def __post_init__(self) -> None:
        if not self.lmbda >= 0:
            raise ValueError(f"regularizer.lmbda must be >= 0, got {self.lmbda}")

    def value(self, w: np.ndarray, n: int) -> np.ndarray:
        return 0.5 * self.lmbda / n * np.sum(w * w, axis=(-2, -1))

    def grad(self, w: np.ndarray, n: int) -> np.ndarray:
        return (self.lmbda / n) * w
