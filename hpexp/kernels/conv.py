"""Convolution's data movement compiled: im2col (`patches`), its adjoint (`unpatch`), 2 x 2
max-pooling (`maxpool2`) and its gradient (`maxpool2_grad`).

Same results as hpexp.nn.conv's NumPy code (which documents the layouts), bit for bit: `patches`
only copies, `unpatch` adds each pixel's contributions in the same (kernel row, kernel column)
order, and pooling only compares and copies. NumPy spends most of its time there on
many small slice operations (kh * kw of them, or four passes over strided views); compiled, each
is one loop.
"""

from __future__ import annotations

import numba
import numpy as np

from hpexp.kernels.dense import dot_rows

__all__ = ["filter_grad", "maxpool2", "maxpool2_grad", "patches", "unpatch"]

jit = numba.njit(cache=True, nogil=True)


@jit
def _patches(x: np.ndarray, cols: np.ndarray) -> None:
    m, c, _, _ = x.shape
    _, kh, kw, _, oh, ow = cols.shape
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                for b in range(m):
                    for r in range(oh):
                        for s in range(ow):
                            cols[ch, i, j, b, r, s] = x[b, ch, i + r, j + s]


def patches(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    m, c, height, width = x.shape
    oh, ow = height - kh + 1, width - kw + 1
    cols = np.empty((c, kh, kw, m, oh, ow), x.dtype)
    _patches(x, cols)
    return cols.reshape(c * kh * kw, m * oh * ow)


@jit
def _unpatch(d: np.ndarray, dx: np.ndarray) -> None:
    c, kh, kw, m, oh, ow = d.shape
    for ch in range(c):
        for b in range(m):
            for i in range(kh):
                for j in range(kw):
                    for r in range(oh):
                        for s in range(ow):
                            dx[b, ch, i + r, j + s] += d[ch, i, j, b, r, s]


def unpatch(dcols: np.ndarray, shape: tuple[int, ...], kh: int, kw: int) -> np.ndarray:
    m, c, height, width = shape
    oh, ow = height - kh + 1, width - kw + 1
    dx = np.zeros((m, c, height, width), dcols.dtype)
    _unpatch(dcols.reshape(c, kh, kw, m, oh, ow), dx)
    return dx


@jit
def _maxpool2(x: np.ndarray, out: np.ndarray) -> None:
    f, m, h, w = x.shape[0], x.shape[1], out.shape[2], out.shape[3]  # x map by map
    for g in range(f):
        for b in range(m):
            for r in range(h):
                x0, x1, o = x[g, b, 2 * r], x[g, b, 2 * r + 1], out[b, g, r]
                for s in range(w):
                    # np.maximum(v, c) in the NumPy code's order: v if v is NaN or larger, else c
                    # (so of two equal zeros the later one's sign); without branches, so the
                    # compiler can use selects
                    v = x0[2 * s]
                    c = x0[2 * s + 1]
                    v = v if (v != v) | (v > c) else c
                    c = x1[2 * s]
                    v = v if (v != v) | (v > c) else c
                    c = x1[2 * s + 1]
                    o[s] = v if (v != v) | (v > c) else c


def maxpool2(x: np.ndarray) -> np.ndarray:
    """2 x 2 max-pooling of x (m, f, H, W), as hpexp.nn.conv.MaxPool.infer, into a new (m, f, h, w)
    array; x is read map by map, as a convolution's output is stored."""
    m, f, height, width = x.shape
    out = np.empty((m, f, height // 2, width // 2), x.dtype)
    _maxpool2(x.transpose(1, 0, 2, 3), out)
    return out


@jit
def _maxpool2_grad(x: np.ndarray, out: np.ndarray, delta: np.ndarray, dx: np.ndarray) -> None:
    f, m, h, w = out.shape  # x, out and dx map by map; delta as the layer above gives it
    zero = dx.dtype.type(0)
    for g in range(f):
        for b in range(m):
            for r in range(h):
                x0, x1, o, dl = x[g, b, 2 * r], x[g, b, 2 * r + 1], out[g, b, r], delta[b, g, r]
                d0, d1 = dx[g, b, 2 * r], dx[g, b, 2 * r + 1]
                # the first element equal to the max, in row-major order, takes the gradient;
                # a loop per row of the regions, with bitwise logic and selects, vectorizes
                # (values loaded before the selects: a load inside one makes a branch)
                for s in range(w):
                    v, d, a0, a1 = o[s], dl[s], x0[2 * s], x0[2 * s + 1]
                    d0[2 * s] = d if a0 == v else zero
                    d0[2 * s + 1] = d if (a1 == v) & (a0 != v) else zero
                for s in range(w):
                    v, d, a0, a1, a2, a3 = o[s], dl[s], x0[2 * s], x0[2 * s + 1], x1[2 * s], x1[2 * s + 1]
                    top = (a0 != v) & (a1 != v)
                    d1[2 * s] = d if (a2 == v) & top else zero
                    d1[2 * s + 1] = d if (a3 == v) & top & (a2 != v) else zero


def maxpool2_grad(x: np.ndarray, out: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """dC/dx of 2 x 2 max-pooling x (m, f, H, W) into out, as hpexp.nn.conv.MaxPool.backward
    (branch-free, the four elements of a region side by side), stored map by map: the (m, f, H, W)
    view of an (f, m, H, W) array, as a convolution's output is, so its gradient needs no copy."""
    m, f, height, width = x.shape
    # The kernel writes every element of every region: only a border left over needs zeros first.
    whole = height % 2 == 0 and width % 2 == 0
    dx = (np.empty if whole else np.zeros)((f, m, height, width), delta.dtype)
    _maxpool2_grad(x.transpose(1, 0, 2, 3), out.transpose(1, 0, 2, 3), delta, dx)
    return dx.transpose(1, 0, 2, 3)


def filter_grad(delta: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """dC/dw = delta cols^T into `out` (filters, c * kh * kw), delta (filters, m * oh * ow) and
    cols = patches(x) (c * kh * kw, m * oh * ow), as hpexp.nn.conv.Conv2D.backward computes by BLAS.

    Each filter's row of delta against each row of the patches (hpexp.kernels.dense.dot_rows): BLAS,
    made for large matrices, runs these long thin sums slowly (conv-pool(20)'s filters at mini-batch
    10: 51 us instead of 115). The sums run in another order than BLAS's: equal to rounding, unlike
    the kernels above, so the engine takes it only where measured faster (hpexp.train.batching), in
    float32.
    """
    dot_rows(delta, cols, out)
