"""Products of a few long rows, compiled (numba): a dense layer's weighted input x W^T for a
mini-batch of a few rows, and any a b^T whose rows are few and long (a conv layer's filter gradient);
and the error a dense layer passes back, delta W.

BLAS, made for large matrices, packs all of W into its own layout before a product; for 10 rows of
x that copy costs as much as the product (1000 x 1000 weights at mini-batch 10: 430 us, OpenBLAS
SkylakeX). Here four rows of W meet five rows of x at a time, twenty sums side by side over one
read of the nine rows, vectorized by the compiler: 250 us (two rows of W against five, as before,
took 275, and 94 us instead of 57 for 100 x 2880). That is on a CPU with 32 vector registers
(AVX-512); with 16 (AVX2, on an AMD EPYC) the twenty sums and nine rows do not fit and spill, and
two rows of W against five of x run faster (100 x 2880: 94 us against 127; BLAS 129), over
spans of 1024 values at a time, so that the five rows of x stay in L1 while every pair of W's rows
meets them (AVX2: 100 x 2880 75 -> 69 us, the filters' gradient 20 x 5760 x 25 89 -> 63, 1000 x
1000 268 -> 234). Both are kept (`rows`, 4 or 2), and with more rows of x BLAS wins again, so the
engine measures which to use (hpexp.train.ways). The sums run in another order than BLAS's
(fastmath lets the compiler split them): equal to rounding. delta W, whose sums run down W's
columns, is taken the other way round: each row of delta W gathers four rows of W at a time, five
rows of delta W side by side (1000 x 1000 at mini-batch 10: 294 us instead of BLAS's 412). And plain
SGD's step inside the gradient's product, W <- factor W - delta^T x (`descend`, as SciPy's gemm
takes it in hpexp.kernels.blas): four rows of W at a time stepped from five rows of x, one read and
one write of each row per five (100 x 2880 at mini-batch 10: 64 us instead of gemm's 84; 1000 x 1000
292 instead of 254, so this too is measured per layer).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["ROWS", "back", "descend", "dot_rows", "weighted_input"]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot_rows2(a: np.ndarray, b: np.ndarray, out: np.ndarray, span: int) -> None:
    p, n = a.shape
    q = b.shape[0]
    # Two rows of a at a time against five of b, over `span` columns at a time: the five rows'
    # spans stay in L1 while every pair of a's rows meets them (each whole row, 11.5 KB for 2880
    # values, came from L2 each time: that traffic, not the multiply-adds, set the pace); each span's
    # sums added to out, each element once (a repeated last row or column is not added again)
    out[:, :] = 0
    for k0 in range(0, n, span):
        k1 = min(k0 + span, n)
        for j in range(0, q, 5):
            j1, j2, j3, j4 = min(j + 1, q - 1), min(j + 2, q - 1), min(j + 3, q - 1), min(j + 4, q - 1)
            # slices: their indices are known non-negative, so the loop below vectorizes
            b0, b1, b2, b3, b4 = b[j, k0:k1], b[j1, k0:k1], b[j2, k0:k1], b[j3, k0:k1], b[j4, k0:k1]
            for i in range(0, p, 2):
                i1 = min(i + 1, p - 1)
                a0, a1 = a[i, k0:k1], a[i1, k0:k1]
                s00 = s01 = s02 = s03 = s04 = s10 = s11 = s12 = s13 = s14 = out.dtype.type(0)
                for k in range(k1 - k0):
                    u, v = a0[k], a1[k]
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
                _add_row(out[i], j, q, s00, s01, s02, s03, s04)
                if i1 > i:
                    _add_row(out[i1], j, q, s10, s11, s12, s13, s14)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_row(o: np.ndarray, j: int, q: int, s0: float, s1: float, s2: float, s3: float, s4: float) -> None:
    """o[j : j + 5] += (s0, ..., s4), cut at o's end (q)."""
    o[j] += s0
    if j + 1 < q:
        o[j + 1] += s1
    if j + 2 < q:
        o[j + 2] += s2
    if j + 3 < q:
        o[j + 3] += s3
    if j + 4 < q:
        o[j + 4] += s4


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


ROWS = (4, 2)  # rows of a per pass that dot_rows can take
SPAN = 4096  # bytes of each row that two rows at a time take per pass (1024 float32 values)


def dot_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray, rows: int = 4) -> None:
    """out = a b^T, out[i, j] the dot product of row i of a and row j of b, a (p, n), b (q, n),
    `rows` (4 or 2) rows of a against five of b per pass."""
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {ROWS}, got {rows!r}")
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if rows == 4:
        _dot_rows(a, b, out)
    else:
        _dot_rows2(a, b, out, max(SPAN // a.itemsize, 1))


def weighted_input(w: np.ndarray, x: np.ndarray, rows: int = 4) -> np.ndarray:
    """x W^T as hpexp.nn.layers.weighted_input, W (n_out, n_in), x (m, n_in): z (m, n_out), stored
    as W x^T (feature-major), as BLAS's way returns it; `rows` of W per pass (see dot_rows). K
    members' W (K, n_out, n_in) meeting one x are one W of K x n_out rows: z (K, m, n_out)."""
    flat = w.reshape(-1, w.shape[-1])
    z = np.empty((flat.shape[0], x.shape[0]), np.result_type(w, x))
    dot_rows(flat, x, z, rows)
    return z.reshape(*w.shape[:-1], -1).mT


@numba.njit(cache=True, nogil=True, inline="always")
def _block(d: np.ndarray, b: int, j: int) -> tuple[float, ...]:
    """d[b : b + 5, j : j + 4] as twenty numbers, row by row, zeros past d's last column: the
    weights of five rows against four (the kernels below repeat the last of the four where fewer
    are left, which these zeros cancel). Inlined: called, its tuple made the kernels 20-40% slower."""
    n_out, zero = d.shape[1], d.dtype.type(0)
    j1, j2, j3 = min(j + 1, n_out - 1), min(j + 2, n_out - 1), min(j + 3, n_out - 1)
    e1, e2, e3 = j + 1 < n_out, j + 2 < n_out, j + 3 < n_out
    return (
        d[b, j], d[b, j1] if e1 else zero, d[b, j2] if e2 else zero, d[b, j3] if e3 else zero,
        d[b + 1, j], d[b + 1, j1] if e1 else zero, d[b + 1, j2] if e2 else zero, d[b + 1, j3] if e3 else zero,
        d[b + 2, j], d[b + 2, j1] if e1 else zero, d[b + 2, j2] if e2 else zero, d[b + 2, j3] if e3 else zero,
        d[b + 3, j], d[b + 3, j1] if e1 else zero, d[b + 3, j2] if e2 else zero, d[b + 3, j3] if e3 else zero,
        d[b + 4, j], d[b + 4, j1] if e1 else zero, d[b + 4, j2] if e2 else zero, d[b + 4, j3] if e3 else zero,
    )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=True)
def _back(d: np.ndarray, w: np.ndarray, dx: np.ndarray) -> None:
    rows, n_out = d.shape  # rows a multiple of 5 (zeros past the mini-batch); dx zeros
    for b in range(0, rows, 5):
        x0, x1, x2, x3, x4 = dx[b], dx[b + 1], dx[b + 2], dx[b + 3], dx[b + 4]
        for j in range(0, n_out, 4):
            # rows j..j+3 of W, the last ones repeated when fewer are left, with weight zero
            j1, j2, j3 = min(j + 1, n_out - 1), min(j + 2, n_out - 1), min(j + 3, n_out - 1)
            w0, w1, w2, w3 = w[j], w[j1], w[j2], w[j3]
            c = _block(d, b, j)  # c[4 * k + l]: row b + k of d, column j + l
            for i in range(w.shape[1]):
                a0, a1, a2, a3 = w0[i], w1[i], w2[i], w3[i]
                x0[i] += c[0] * a0 + c[1] * a1 + c[2] * a2 + c[3] * a3
                x1[i] += c[4] * a0 + c[5] * a1 + c[6] * a2 + c[7] * a3
                x2[i] += c[8] * a0 + c[9] * a1 + c[10] * a2 + c[11] * a3
                x3[i] += c[12] * a0 + c[13] * a1 + c[14] * a2 + c[15] * a3
                x4[i] += c[16] * a0 + c[17] * a1 + c[18] * a2 + c[19] * a3


def _five_rows(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """a (m, n) as C-ordered rows of `dtype`, zero rows added up to a multiple of five (the kernels
    take five at a time): a itself where it already is so."""
    m, rows = a.shape[0], -(-a.shape[0] // 5) * 5
    if rows == m:
        return np.ascontiguousarray(a, dtype)
    padded = np.zeros((rows, a.shape[1]), dtype)
    padded[:m] = a
    return padded


def back(delta: np.ndarray, w: np.ndarray) -> np.ndarray:
    """delta W as hpexp.nn.layers.Dense.backward returns it, delta (m, n_out), W (n_out, n_in)."""
    d = _five_rows(delta, np.result_type(delta, w))
    dx = np.zeros((d.shape[0], w.shape[1]), d.dtype)
    _back(d, np.ascontiguousarray(w), dx)
    return dx[: delta.shape[0]]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _descend(d: np.ndarray, w: np.ndarray, x: np.ndarray, factor: float) -> None:
    rows, n_out = d.shape  # rows a multiple of 5 (zeros past the mini-batch, in d and x)
    one = d.dtype.type(1)
    for j in range(0, n_out, 4):
        # rows j..j+3 of W, the last ones repeated when fewer are left: with weight zero and factor
        # one, a repeat writes back the value its row has just been given
        j1, j2, j3 = min(j + 1, n_out - 1), min(j + 2, n_out - 1), min(j + 3, n_out - 1)
        w0, w1, w2, w3 = w[j], w[j1], w[j2], w[j3]
        e1, e2, e3 = j + 1 < n_out, j + 2 < n_out, j + 3 < n_out
        f0, f1, f2, f3 = factor, factor if e1 else one, factor if e2 else one, factor if e3 else one
        for b in range(0, rows, 5):
            y0, y1, y2, y3, y4 = x[b], x[b + 1], x[b + 2], x[b + 3], x[b + 4]
            c = _block(d, b, j)  # c[4 * k + l]: row b + k of d, column j + l
            if b > 0:  # the factor is taken once, with the first five rows
                f0 = f1 = f2 = f3 = one
            for i in range(w.shape[1]):
                a0, a1, a2, a3, a4 = y0[i], y1[i], y2[i], y3[i], y4[i]
                w0[i] = f0 * w0[i] - (c[0] * a0 + c[4] * a1 + c[8] * a2 + c[12] * a3 + c[16] * a4)
                w1[i] = f1 * w1[i] - (c[1] * a0 + c[5] * a1 + c[9] * a2 + c[13] * a3 + c[17] * a4)
                w2[i] = f2 * w2[i] - (c[2] * a0 + c[6] * a1 + c[10] * a2 + c[14] * a3 + c[18] * a4)
                w3[i] = f3 * w3[i] - (c[3] * a0 + c[7] * a1 + c[11] * a2 + c[15] * a3 + c[19] * a4)


def descend(w: np.ndarray, a: np.ndarray, b: np.ndarray, factor: float = 1.0) -> bool:
    """w <- factor w - a^T b in place, as hpexp.nn.optimizers.descend, w (p, q), a (m, p), b (m, q):
    each group of four rows of W takes its step from five rows of b at a time, twenty sums side by
    side over one read of the nine rows. False (w untouched) unless w is C-ordered and a and b share
    its dtype, for the caller to step w another way."""
    if not w.flags.c_contiguous or a.dtype != w.dtype or b.dtype != w.dtype:
        return False
    _descend(_five_rows(a, w.dtype), w, _five_rows(b, w.dtype), w.dtype.type(factor))
    return True
