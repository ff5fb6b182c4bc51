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

__all__ = [
    "filter_grad",
    "maxpool2",
    "maxpool2_grad",
    "maxpool2_winners",
    "patches",
    "pooled_back",
    "unpatch",
]

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
def _maxpool2_winners(x: np.ndarray, out: np.ndarray, win: np.ndarray) -> None:
    f, m, h, w = win.shape  # x and win map by map
    for g in range(f):
        for b in range(m):
            for r in range(h):
                x0, x1, o, k = x[g, b, 2 * r], x[g, b, 2 * r + 1], out[b, g, r], win[g, b, r]
                for s in range(w):  # as _maxpool2
                    v = x0[2 * s]
                    c = x0[2 * s + 1]
                    v = v if (v != v) | (v > c) else c
                    c = x1[2 * s]
                    v = v if (v != v) | (v > c) else c
                    c = x1[2 * s + 1]
                    o[s] = v if (v != v) | (v > c) else c
                # which element won: the first equal to the max in row-major order (0-3), none (4)
                # for a NaN; a loop of its own, values loaded before the selects, vectorizes
                for s in range(w):
                    v, a0, a1, a2, a3 = o[s], x0[2 * s], x0[2 * s + 1], x1[2 * s], x1[2 * s + 1]
                    i = np.int8(3) if a3 == v else np.int8(4)
                    i = np.int8(2) if a2 == v else i
                    i = np.int8(1) if a1 == v else i
                    k[s] = np.int8(0) if a0 == v else i


def maxpool2_winners(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`maxpool2`, and which element of each region won, as int8 map by map (f, m, h, w), for
    `maxpool2_grad`: a byte per region to read there, instead of x and the maximum again."""
    m, f, height, width = x.shape
    out = np.empty((m, f, height // 2, width // 2), x.dtype)
    win = np.empty((f, m, height // 2, width // 2), np.int8)
    _maxpool2_winners(x.transpose(1, 0, 2, 3), out, win)
    return out, win


@jit
def _maxpool2_grad(win: np.ndarray, delta: np.ndarray, dx: np.ndarray) -> None:
    f, m, h, w = win.shape  # win and dx map by map; delta as the layer above gives it
    zero = dx.dtype.type(0)
    for g in range(f):
        for b in range(m):
            for r in range(h):
                k, dl = win[g, b, r], delta[b, g, r]
                d0, d1 = dx[g, b, 2 * r], dx[g, b, 2 * r + 1]
                # a loop per row of the regions, values loaded before the selects (a load inside
                # one makes a branch): the compiler vectorizes it
                for s in range(w):
                    i, d = k[s], dl[s]
                    d0[2 * s] = d if i == 0 else zero
                    d0[2 * s + 1] = d if i == 1 else zero
                for s in range(w):
                    i, d = k[s], dl[s]
                    d1[2 * s] = d if i == 2 else zero
                    d1[2 * s + 1] = d if i == 3 else zero


def maxpool2_grad(win: np.ndarray, delta: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """dC/dx of 2 x 2 max-pooling of an x of `shape` (m, f, H, W) whose regions' winners are `win`
    (from `maxpool2_winners`), as hpexp.nn.conv.MaxPool.backward, stored map by map: the (m, f, H,
    W) view of an (f, m, H, W) array, as a convolution's output is, so its gradient needs no copy."""
    m, f, height, width = shape
    # The kernel writes every element of every region: only a border left over needs zeros first.
    whole = height % 2 == 0 and width % 2 == 0
    dx = (np.empty if whole else np.zeros)((f, m, height, width), delta.dtype)
    _maxpool2_grad(win, delta, dx)
    return dx.transpose(1, 0, 2, 3)


def filter_grad(delta: np.ndarray, cols: np.ndarray, out: np.ndarray, rows: int = 4) -> None:
    """dC/dw = delta cols^T into `out` (filters, c * kh * kw), delta (filters, m * oh * ow) and
    cols = patches(x) (c * kh * kw, m * oh * ow), as hpexp.nn.conv.Conv2D.backward computes by BLAS.

    Each filter's row of delta against each row of the patches (hpexp.kernels.dense.dot_rows): BLAS,
    made for large matrices, runs these long thin sums slowly (conv-pool(20)'s filters at mini-batch
    10: 51 us instead of 115). The sums run in another order than BLAS's: equal to rounding, unlike
    the kernels above, so the engine takes it only where measured faster (hpexp.train.batching), in
    float32. `rows` of delta per pass, 4 or 2 (see dot_rows: which is faster depends on the CPU).
    """
    dot_rows(delta, cols, out, rows)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _pooled_back(
    z: np.ndarray,
    out: np.ndarray,
    delta: np.ndarray,
    xh: np.ndarray,
    wt: np.ndarray,
    gw: np.ndarray,
    dx: np.ndarray,
    channels: int,
    propagate: bool,
) -> None:
    f, m, h, w = out.shape  # z and out map by map; delta as the layer above gives it
    kh, row = wt.shape[1], wt.shape[2]  # xh, dx (m, H, W * channels); wt, gw (f, kh, kw * channels)
    for g in range(f):
        for b in range(m):
            for r in range(h):
                z0, z1 = z[g, b, 2 * r], z[g, b, 2 * r + 1]
                for s in range(w):
                    d = delta[b, g, r, s]
                    if d == 0:  # (ReLU's zeros: about half)
                        continue
                    v = out[g, b, r, s]
                    # the first element equal to the max, in row-major order, takes the gradient
                    if z0[2 * s] == v:
                        y, x = 2 * r, 2 * s
                    elif z0[2 * s + 1] == v:
                        y, x = 2 * r, 2 * s + 1
                    elif z1[2 * s] == v:
                        y, x = 2 * r + 1, 2 * s
                    elif z1[2 * s + 1] == v:
                        y, x = 2 * r + 1, 2 * s + 1
                    else:  # NaN: no element is the max
                        continue
                    for i in range(kh):
                        # the patch's row i, all kw x channels values side by side (channels last);
                        # a slice, so the index is known non-negative and the loop vectorizes
                        patch, grad = xh[b, y + i, x * channels : x * channels + row], gw[g, i]
                        for k in range(row):
                            grad[k] += d * patch[k]
                        if propagate:
                            back, filt = dx[b, y + i, x * channels : x * channels + row], wt[g, i]
                            for k in range(row):
                                back[k] += d * filt[k]


def pooled_back(
    x: np.ndarray,
    w: np.ndarray,
    z: np.ndarray,
    out: np.ndarray,
    delta: np.ndarray,
    gw: np.ndarray,
    propagate: bool,
) -> np.ndarray | None:
    """A conv layer's backward through 2 x 2 max-pooling in one pass over the regions' winners:
    delta (m, f, h, w), dC/d(pooled out), reaches only the element of its region that won, so the
    filters' gradient (into `gw`, (f, c * kh * kw)) and the input's (returned, if `propagate`) are
    sums over the winners alone, a quarter of the positions (fewer where delta is zero), instead of
    the dense products hpexp.nn.conv computes after spreading delta over every position.

    x (m, c, H, W) is the conv's input, w its filters, z its output (m, f, oh, ow) and `out` the
    pooled z. Each winner adds its patch, row by row of kw x c values side by side, so both run
    channels last (x and the filters reordered, the results back). conv-pool(40) on 20 maps at
    mini-batch 10 (ReLU): 345 us instead of 628 for the pooling, filter and input gradients. Another
    order of the sums than BLAS's: equal to rounding, taken where measured faster, float32."""
    m, c, height, width = x.shape
    f, _, kh, kw = w.shape
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(m, height, width * c)
    wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(f, kh, kw * c)
    g = np.zeros((f, kh, kw * c), gw.dtype)
    dx = np.zeros((m, height, width * c) if propagate else (1, 1, 1), x.dtype)
    _pooled_back(z.transpose(1, 0, 2, 3), out.transpose(1, 0, 2, 3), delta, xh, wt, g, dx, c, propagate)
    gw[...] = g.reshape(f, kh, kw, c).transpose(0, 3, 1, 2).reshape(f, -1)
    return dx.reshape(m, height, width, c).transpose(0, 3, 1, 2) if propagate else None
