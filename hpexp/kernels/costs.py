"""The output error dC/dz of a float32 mini-batch, compiled: one pass over its m x n outputs where
NumPy makes three to nine (the softmax: a maximum, a shift, an exponential, a sum, a logarithm, a
shift and an exponential again; the targets one-hot; the difference), each costing about a
microsecond for the book's mini-batch of 10, whose numbers are few: 784-30-10's whole SGD step
takes 35-39 us, of which NumPy's error took 4-8.

The formulas of hpexp.nn.costs, evaluated otherwise, so equal to them to rounding: the softmax as
exp(z - max) / sum (NumPy: the exponential of the log-softmax), the sigmoid as 1 / (1 + exp(-z))
(NumPy: (1 + tanh(z/2)) / 2; with the C library's float32 tanh the cross-entropy's error of 10 x 10
outputs took 3.0 us, with exp 2.0). A NaN in a row of z gives NaN in that row, as NumPy's does; a
label outside 0..n-1 is an IndexError, as NumPy's one-hot rows give.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["KINDS", "delta"]

KINDS = ("log_likelihood", "cross_entropy", "quadratic")  # hpexp.nn.costs' classes, by kind


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _delta(z: np.ndarray, y: np.ndarray, kind: int, out: np.ndarray) -> None:
    lead, m, n = z.shape  # z and out (K, m, n), any layout; y (K, m), or (1, m) shared by all K
    one, zero = np.float32(1), np.float32(0)
    for k in range(lead):
        labels = y[k if y.shape[0] > 1 else 0]
        for b in range(m):
            label = labels[b]
            if label < 0 or label >= n:
                raise IndexError("a label is outside the output layer's classes")
            row, o = z[k, b], out[k, b]
            if kind == 0:  # softmax(z) - y
                top = row[0]
                for j in range(1, n):
                    v = row[j]
                    top = v if v > top else top  # a NaN anywhere makes the sum, so the row, NaN
                total = zero
                for j in range(n):
                    e = np.exp(row[j] - top)
                    o[j] = e
                    total += e
                for j in range(n):
                    o[j] /= total
                o[label] -= one
            else:  # sigma(z) - y; quadratic cost: times sigma'(z) = a (1 - a)
                for j in range(n):
                    a = one / (one + np.exp(-row[j]))  # exp's overflow to inf gives 0, as it should
                    d = a - one if j == label else a
                    o[j] = d * (a * (one - a)) if kind == 2 else d


def delta(z: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """dC/dz of cost `kind` (one of KINDS) for float32 z (m, n) or a population's (K, m, n) and
    integer labels y (m,) or (K, m), as a new array in z's layout (an output layer's z is a
    transposed view)."""
    if z.dtype != np.float32:
        raise TypeError(f"the compiled costs take float32 arrays, got {z.dtype}")
    if z.ndim not in (2, 3):
        raise ValueError(f"z must be (m, n) or (K, m, n), got shape {z.shape}")
    out = np.empty_like(z)
    z3, out3 = (z, out) if z.ndim == 3 else (z[None], out[None])
    _delta(z3, y.reshape(-1, y.shape[-1]), KINDS.index(kind), out3)
    return out
