"""The sigmoid and tanh of float32 arrays, compiled: one vectorized loop of multiplies, adds and a
division, where NumPy's float32 tanh (or exp) runs about 1 ns per element on an AVX2 CPU and the
sigmoid takes three more passes (conv1's 28,800 pooled units at mini-batch 10, one thread, `python
benchmarks/bench_costs.py`: the sigmoid 39.9 -> 14.2 us with AVX2, 17.1 -> 11.4 with AVX-512; tanh
34.9 -> 14.2 with AVX2, 10.8 -> 11.4 with AVX-512, where NumPy's own is as fast: the engine measures
which to take, hpexp.train.ways).

tanh(x) = x P(x^2) / Q(x^2) on [-9, 9], P and Q of degree 4 (Q(0) = 1, its coefficients
positive, so no poles), and +-1 beyond, where float32's tanh is 1 to rounding; sigma(z) =
(1 + tanh(z/2)) / 2, as hpexp.nn.activations writes it. The coefficients minimize the largest
relative error on [0, 9] (least squares of x P - tanh Q = tanh, reweighted towards the largest
errors, in float64): 2e-8 in exact arithmetic, within 4e-7 of tanh (2e-7 of the sigmoid) evaluated
in float32 (tests/test_activations.py checks it on a million points); NumPy's own float32 tanh is
within 6e-8, so the two differ by rounding, as the engine's other compiled kernels do. Never past
+-1; NaN stays NaN, +-inf gives +-1 (0 and 1). No `fastmath` beyond fused multiply-adds: it would
let the compiler assume there are no NaNs, and a diverged run must show its NaNs. (The two selects
keep +-1 exact, at a small cost.)
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["sigmoid", "tanh"]

_P = (9.99999983e-01, 1.33814167e-01, 3.49604482e-03, 2.06161796e-05, 1.33634681e-08)
_Q = (1.0, 4.67147331e-01, 2.58787400e-02, 3.28636544e-04, 7.78039072e-07)
_EDGE = 9.0  # tanh(9) = 1 - 3.05e-8: half a float32 step below 1 (spacing 6e-8), 1 from 9.01 on


@numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def _tanh(z: np.ndarray, scale: float, shift: float, out: np.ndarray) -> None:
    """out = shift + scale tanh(scale z) element by element, flat float32 arrays: tanh itself with
    (1, 0), the sigmoid with (0.5, 0.5). error_model numpy: no zero-division check (Q >= 1), which
    would stop the loop vectorizing."""
    f = np.float32
    p0, p1, p2, p3, p4 = f(_P[0]), f(_P[1]), f(_P[2]), f(_P[3]), f(_P[4])
    q1, q2, q3, q4 = f(_Q[1]), f(_Q[2]), f(_Q[3]), f(_Q[4])
    lo, hi, a, b, one = f(-_EDGE), f(_EDGE), f(scale), f(shift), f(1)
    for i in range(z.size):
        x = a * z[i]
        x = hi if x > hi else x  # comparisons false for NaN: it passes through
        x = lo if x < lo else x
        s = x * x
        p = (((p4 * s + p3) * s + p2) * s + p1) * s + p0
        q = (((q4 * s + q3) * s + q2) * s + q1) * s + one
        t = x * p / q
        t = one if (t > one) | (x == hi) else t  # +-1 from the edge on, never past
        t = -one if (t < -one) | (x == lo) else t
        out[i] = b + a * t


def _apply(z: np.ndarray, scale: float, shift: float) -> np.ndarray:
    if z.dtype != np.float32:
        raise TypeError(f"the compiled activations take float32 arrays, got {z.dtype}")
    # a dense layer's z is a transposed view (feature-major, a population's member by member):
    # taken as the C-ordered array it is, the result returned in the same layout
    flip = z.ndim >= 2 and not z.flags.c_contiguous and z.mT.flags.c_contiguous
    src = z.mT if flip else np.ascontiguousarray(z)
    out = np.empty(src.shape, np.float32)
    _tanh(src.reshape(-1), scale, shift, out.reshape(-1))
    return out.mT if flip else out


def sigmoid(z: np.ndarray) -> np.ndarray:
    """sigma(z) = (1 + tanh(z/2)) / 2 of a float32 array, as a new array of its shape."""
    return _apply(z, 0.5, 0.5)


def tanh(z: np.ndarray) -> np.ndarray:
    """tanh(z) of a float32 array, as a new array of its shape."""
    return _apply(z, 1.0, 0.0)
