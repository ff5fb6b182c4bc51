"""Products of a few long rows, compiled (numba): a dense layer's weighted input x W^T for a
mini-batch of a few rows, and any a b^T whose rows are few and long (a conv layer's filter gradient).

BLAS, made for large matrices, packs all of W into its own layout before a product; for 10 rows of
x that copy costs as much as the product (1000 x 1000 weights at mini-batch 10: 430 us, OpenBLAS
SkylakeX). Here four rows of W meet five rows of x at a time, twenty sums side by side over one
read of the nine rows, vectorized by the compiler: 250 us (two rows of W against five, as before,
took 275, and 94 us instead of 57 for 100 x 2880). With more rows of x BLAS wins again, so the
engine measures which to use (hpexp.train.batching). The sums run in another order than BLAS's
(fastmath lets the compiler split them): equal to rounding.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["dot_rows", "weighted_input"]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    p, n = a.shape
    q = b.shape[0]
    for i in range(0, p, 4):
        # rows i..i+3 of a and j..j+4 of b, the last ones repeated when fewer are left: the same
        # sums, written twice
        i1, i2, i3 = min(i + 1, p - 1), min(i + 2, p - 1), min(i + 3, p - 1)
        a0, a1, a2, a3 = a[i], a[i1], a[i2], a[i3]
        for j in range(0, q, 5):
            j1, j2, j3, j4 = min(j + 1, q - 1), min(j + 2, q - 1), min(j + 3, q - 1), min(j + 4, q - 1)
            b0, b1, b2, b3, b4 = b[j], b[j1], b[j2], b[j3], b[j4]
            s00 = s01 = s02 = s03 = s04 = s10 = s11 = s12 = s13 = s14 = out.dtype.type(0)
            s20 = s21 = s22 = s23 = s24 = s30 = s31 = s32 = s33 = s34 = out.dtype.type(0)
            for k in range(n):
                u, v, y, z = a0[k], a1[k], a2[k], a3[k]
                s00 += u * b0[k]
                s01 += u * b1[k]
                s02 += u * b2[k]
                s03 += u * b3[k]
                s04 += u * b4[k]
                s10 += v * b0[k]
                s11 += v * b1[k]
                s12 += v * b2[k]
                s13 += v * b3[k]
                s14 += v * b4[k]
                s20 += y * b0[k]
                s21 += y * b1[k]
                s22 += y * b2[k]
                s23 += y * b3[k]
                s24 += y * b4[k]
                s30 += z * b0[k]
                s31 += z * b1[k]
                s32 += z * b2[k]
                s33 += z * b3[k]
                s34 += z * b4[k]
            out[i, j], out[i, j1], out[i, j2], out[i, j3], out[i, j4] = s00, s01, s02, s03, s04
            out[i1, j], out[i1, j1], out[i1, j2], out[i1, j3], out[i1, j4] = s10, s11, s12, s13, s14
            out[i2, j], out[i2, j1], out[i2, j2], out[i2, j3], out[i2, j4] = s20, s21, s22, s23, s24
            out[i3, j], out[i3, j1], out[i3, j2], out[i3, j3], out[i3, j4] = s30, s31, s32, s33, s34


def dot_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a b^T, out[i, j] the dot product of row i of a and row j of b, a (p, n), b (q, n)."""
    _dot_rows(np.ascontiguousarray(a), np.ascontiguousarray(b), out)


def weighted_input(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x W^T as hpexp.nn.layers.weighted_input, W (n_out, n_in), x (m, n_in): z (m, n_out), stored
    as W x^T (feature-major), as BLAS's way returns it."""
    z = np.empty((w.shape[0], x.shape[0]), np.result_type(w, x))
    dot_rows(w, x, z)
    return z.T
