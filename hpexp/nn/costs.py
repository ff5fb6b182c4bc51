"""Cost functions. Each takes the output layer's pre-activation z and owns the output nonlinearity.

`value(z, y)` is the cost averaged over the mini-batch (axis -2), summed over outputs;
`delta(z, y)` is dC_x/dz for each example x, so the network's gradient is a^T delta / m.
Labels y are integer class indices; the one-hot targets exist only inside these functions.
A leading population axis on z (K, m, n_out) gives a value per member, shape (K,).
`delta` of float32 runs compiled when the optional kernels are installed (hpexp.kernels.costs, the
`fast` extra; not with HPEXP_KERNELS=numpy): one pass instead of NumPy's three to nine small ones,
equal to them to rounding. float64, the exact path, is NumPy's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hpexp.nn import compiled
from hpexp.nn.activations import sigmoid

__all__ = ["Cost", "CrossEntropy", "LogLikelihood", "Quadratic", "log_softmax", "one_hot", "softplus"]


class Cost(Protocol):
    def value(self, z: np.ndarray, y: np.ndarray) -> np.ndarray: ...

    def delta(self, z: np.ndarray, y: np.ndarray) -> np.ndarray: ...

    def output(self, z: np.ndarray) -> np.ndarray: ...


KERNELS = compiled.kernels("costs")  # the engine's choice; tests and benchmarks may set it


def _compiled(z: np.ndarray) -> bool:
    return KERNELS is not None and z.dtype == np.float32


@functools.cache
def _identity(n: int, dtype: np.dtype) -> np.ndarray:
    return np.eye(n, dtype=dtype)


def one_hot(y: np.ndarray, n: int, dtype: np.dtype) -> np.ndarray:
    """Rows of the identity matrix: one fancy-index per mini-batch instead of a comparison."""
    return _identity(n, np.dtype(dtype)).take(y, axis=0)


def softplus(z: np.ndarray) -> np.ndarray:
    """ln(1 + e^z) = max(z, 0) + ln(1 + e^-|z|): finite for any z, and built from ufuncs NumPy
    vectorizes (an order of magnitude faster than np.logaddexp(0, z), which it equals)."""
    t = np.abs(z)
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)
    t += np.maximum(z, 0.0)
    return t


def _mean_over_batch(per_output: np.ndarray) -> np.ndarray:
    return per_output.sum(axis=-1).mean(axis=-1)


@dataclass(frozen=True)
class Quadratic:
    """C = (1/2n) sum_x ||y(x) - a||^2 with a = sigma(z); delta = (a - y) sigma'(z)."""

    def output(self, z: np.ndarray) -> np.ndarray:
        return sigmoid(z)

    def value(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        diff = sigmoid(z) - one_hot(y, z.shape[-1], z.dtype)
        return 0.5 * _mean_over_batch(diff * diff)

    def delta(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        if _compiled(z):
            return KERNELS.delta(z, y, "quadratic")  # type: ignore[union-attr,no-any-return]
        a = sigmoid(z)
        return (a - one_hot(y, z.shape[-1], z.dtype)) * a * (1.0 - a)


@dataclass(frozen=True)
class CrossEntropy:
    """C = -(1/n) sum_x sum_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)] with a = sigma(z); delta = a - y.

    Per output this equals softplus(z) - y z, which stays finite where a saturates to exactly 0
    or 1 (the book's code needs nan_to_num for that case).
    """

    def output(self, z: np.ndarray) -> np.ndarray:
        return sigmoid(z)

    def value(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        target = one_hot(y, z.shape[-1], z.dtype)
        return _mean_over_batch(softplus(z) - target * z)

    def delta(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        if _compiled(z):
            return KERNELS.delta(z, y, "cross_entropy")  # type: ignore[union-attr,no-any-return]
        return sigmoid(z) - one_hot(y, z.shape[-1], z.dtype)


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)  # the shift cancels and keeps exp() finite
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class LogLikelihood:
    """C = -(1/n) sum_x ln a_y(x) with a = softmax(z); delta = a - y."""

    def output(self, z: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(z))

    def value(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return -_mean_over_batch(log_softmax(z) * one_hot(y, z.shape[-1], z.dtype))

    def delta(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        if _compiled(z):
            return KERNELS.delta(z, y, "log_likelihood")  # type: ignore[union-attr,no-any-return]
        return np.exp(log_softmax(z)) - one_hot(y, z.shape[-1], z.dtype)
