"""A dense layer's weighted input x W^T for a mini-batch of a few rows, compiled (numba).

BLAS, made for large matrices, packs all of W into its own layout before a product; for 10 rows of
x that copy costs as much as the product (1000 x 1000 weights at mini-batch 10: 430 us, OpenBLAS
SkylakeX). Here each pair of W's rows meets five rows of x at a time, ten sums side by side over
one read of the two rows, vectorized by the compiler: 250 us. With more rows of x BLAS wins again,
so the engine measures which to use (hpexp.train.batching). The sums run in another order than
BLAS's (fastmath lets the compiler split them): equal to rounding.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["weighted_input"]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _weighted_input(w: np.ndarray, x: np.ndarray, z: np.ndarray) -> None:
    n_out, n_in = w.shape
    m = x.shape[0]
    for j in range(0, n_out, 2):
        k = min(j + 1, n_out - 1)  # an odd last row is taken twice: the same sums, written twice
        w0, w1 = w[j], w[k]
        for b in range(0, m, 5):
            # rows b..b+4 of x, the last ones repeated when fewer are left
            r0, r1, r2, r3, r4 = b, min(b + 1, m - 1), min(b + 2, m - 1), min(b + 3, m - 1), min(b + 4, m - 1)
            x0, x1, x2, x3, x4 = x[r0], x[r1], x[r2], x[r3], x[r4]
            s00 = s01 = s02 = s03 = s04 = s10 = s11 = s12 = s13 = s14 = z.dtype.type(0)
            for i in range(n_in):
                u, v = w0[i], w1[i]
                s00 += u * x0[i]
                s01 += u * x1[i]
                s02 += u * x2[i]
                s03 += u * x3[i]
                s04 += u * x4[i]
                s10 += v * x0[i]
                s11 += v * x1[i]
                s12 += v * x2[i]
                s13 += v * x3[i]
                s14 += v * x4[i]
            z[r0, j], z[r1, j], z[r2, j], z[r3, j], z[r4, j] = s00, s01, s02, s03, s04
            z[r0, k], z[r1, k], z[r2, k], z[r3, k], z[r4, k] = s10, s11, s12, s13, s14


def weighted_input(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x W^T as hpexp.nn.layers.weighted_input, W (n_out, n_in), x (m, n_in): z (m, n_out)."""
    z = np.empty((x.shape[0], w.shape[0]), np.result_type(w, x))
    _weighted_input(np.ascontiguousarray(w), np.ascontiguousarray(x), z)
    return z
