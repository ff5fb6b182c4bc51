"""Convolution's data movement compiled: im2col (`patches`), its adjoint (`unpatch`), 2 x 2
max-pooling (`maxpool2`) and its gradient (`maxpool2_grad`), with a conv-pool layer's elementwise
work folded in: the maps' biases added in the pooling's pass, the activation's derivative applied
and the biases' gradients summed in its backward's.

Same results as hpexp.nn.conv's NumPy code (which documents the layouts), bit for bit: `patches`
only copies, `unpatch` adds each pixel's contributions in the same (kernel row, kernel column)
order, pooling only compares and copies, and the bias and f'(z) take NumPy's operations in its
order; only the biases' gradients differ, by rounding: added in float64 (NumPy: pairwise in the
array's dtype). NumPy spends most of its time there on many small slice operations (kh * kw of
them, or four passes over strided views) and on passes over the same small arrays; compiled,
each is one loop. Each also takes a convolution's maps with their rows in parity order (`parity`,
hpexp.nn.conv), where the pooling's loops run over each map's regions at once (see _maps)."""

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
def _patches(x: np.ndarray, cols: np.ndarray, parity: bool) -> None:
    m, c, _, _ = x.shape
    _, kh, kw, _, oh, ow = cols.shape
    half = (oh + 1) // 2  # in parity order, where the odd rows start
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                for b in range(m):
                    for r in range(oh):
                        at = r // 2 + half * (r % 2) if parity else r
                        for s in range(ow):
                            cols[ch, i, j, b, at, s] = x[b, ch, i + r, j + s]


def patches(x: np.ndarray, kh: int, kw: int, parity: bool = False) -> np.ndarray:
    m, c, height, width = x.shape
    oh, ow = height - kh + 1, width - kw + 1
    cols = np.empty((c, kh, kw, m, oh, ow), x.dtype)
    _patches(x, cols, parity)
    return cols.reshape(c * kh * kw, m * oh * ow)


@jit
def _unpatch(d: np.ndarray, dx: np.ndarray, parity: bool) -> None:
    c, kh, kw, m, oh, ow = d.shape
    half = (oh + 1) // 2
    for ch in range(c):
        for b in range(m):
            for i in range(kh):
                for j in range(kw):
                    for r in range(oh):
                        at = r // 2 + half * (r % 2) if parity else r
                        for s in range(ow):
                            dx[b, ch, i + r, j + s] += d[ch, i, j, b, at, s]


def unpatch(dcols: np.ndarray, shape: tuple[int, ...], kh: int, kw: int, parity: bool = False) -> np.ndarray:
    m, c, height, width = shape
    oh, ow = height - kh + 1, width - kw + 1
    dx = np.zeros((m, c, height, width), dcols.dtype)
    _unpatch(dcols.reshape(c, kh, kw, m, oh, ow), dx, parity)
    return dx


def _maps(x: np.ndarray, parity: bool) -> np.ndarray:
    """x (m, f, H, W) as the pooling kernels take it, map by map: (f, m, H, W), a view of a
    convolution's output. With its rows in parity order (hpexp.nn.conv; H and W even): (f, m, 2,
    H W / 2), each map's even rows as one row and its odd rows as another (a reshape: a view, or a
    copy where a map is not contiguous). Region (r, s) of a map is then region (0, r w + s) of its
    two rows: pooled so, the maps' loops run over rows of h w regions instead of w (conv-pool(20)'s
    maps at mini-batch 10, AVX2 / AVX-512: forward 37 -> 19 / 33 -> 16 us, backward 22 -> 19 /
    26 -> 17; benchmarks/bench_conv.py's profile)."""
    maps = x.transpose(1, 0, 2, 3)
    if not parity:
        return maps
    f, m, height, width = maps.shape
    if height % 2 or width % 2:
        raise ValueError(f"maps in parity order need an even height and width, got {height} x {width}")
    return maps.reshape(f, m, 2, height * width // 2)


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


def maxpool2(x: np.ndarray, parity: bool = False) -> np.ndarray:
    """2 x 2 max-pooling of x (m, f, H, W), as hpexp.nn.conv.MaxPool.infer, into a new (m, f, h, w)
    array; x is read map by map, as a convolution's output is stored, its rows in parity order if
    `parity` (see _maps)."""
    m, f, height, width = x.shape
    out = np.empty((m, f, height // 2, width // 2), x.dtype)
    maps = _maps(x, parity)
    _maxpool2(maps, out.reshape(m, f, maps.shape[2] // 2, -1))
    return out


@jit
def _maxpool2_winners(
    x: np.ndarray, bias: np.ndarray, biased: bool, out: np.ndarray, win: np.ndarray
) -> None:
    f, m, h, w = win.shape  # x and win map by map
    codes = np.empty(w, np.int32)
    for g in range(f):
        bg = bias[g] if biased else x.dtype.type(0)
        for b in range(m):
            for r in range(h):
                x0, x1, o, k = x[g, b, 2 * r], x[g, b, 2 * r + 1], out[b, g, r], win[g, b, r]
                # one loop, the four values loaded before the selects, so it vectorizes (a loop for
                # the maximum, another for the winner and a third for the bias took 33 us for
                # conv1's maps at mini-batch 10, this one 31); the winners as int32, narrowed to
                # bytes after: stored as bytes from this loop, it vectorized with AVX-512 only
                # (27 us) and not with AVX2 (80 us, against 35)
                for s in range(w):
                    a0, a1, a2, a3 = x0[2 * s], x0[2 * s + 1], x1[2 * s], x1[2 * s + 1]
                    v = a0 if (a0 != a0) | (a0 > a1) else a1  # as _maxpool2
                    v = v if (v != v) | (v > a2) else a2
                    v = v if (v != v) | (v > a3) else a3
                    # which element won: the first equal to the max in row-major order (0-3),
                    # none (4) for a NaN
                    i = np.int32(3) if a3 == v else np.int32(4)
                    i = np.int32(2) if a2 == v else i
                    i = np.int32(1) if a1 == v else i
                    codes[s] = np.int32(0) if a0 == v else i
                    # plus the map's bias, as NumPy adds it after pooling (none: -0.0 stays)
                    o[s] = v + bg if biased else v
                for s in range(w):
                    k[s] = codes[s]


def maxpool2_winners(
    x: np.ndarray, bias: np.ndarray | None = None, parity: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """`maxpool2` (plus `bias`, one per map, if given: (f,) or (f, 1, 1)), and which element of
    each region won, as int8 map by map (f, m, h, w), for `maxpool2_grad`: a byte per region to read
    there, instead of x and the maximum again."""
    m, f, height, width = x.shape
    out = np.empty((m, f, height // 2, width // 2), x.dtype)
    win = np.empty((f, m, height // 2, width // 2), np.int8)
    biased = bias is not None
    b = np.ascontiguousarray(bias, x.dtype).reshape(-1) if biased else np.zeros(1, x.dtype)
    maps = _maps(x, parity)
    rows = maps.shape[2] // 2  # rows of regions as the kernel sees them
    _maxpool2_winners(maps, b, biased, out.reshape(m, f, rows, -1), win.reshape(f, m, rows, -1))
    return out, win


# The activations whose derivative `maxpool2_grad` applies, by code, each from a = f(z) as
# hpexp.nn.activations writes it: 0 none (delta as given, or the identity's), 1 sigmoid a (1 - a),
# 2 tanh 1 - a^2, 3 ReLU 1 where a > 0.
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu")


@jit
def _times_grad(delta: np.ndarray, a: np.ndarray, kind: int, dz: np.ndarray) -> None:
    """dz = delta f'(z), f' from a = f(z) by `kind`, in NumPy's order of operations; flat arrays.
    (A pass of its own: the same branches inside the pooling's loops stop them vectorizing, 3x.)"""
    one, zero = dz.dtype.type(1), dz.dtype.type(0)
    if kind == 1:
        for s in range(dz.size):
            v = a[s]
            dz[s] = delta[s] * (v * (one - v))
    elif kind == 2:
        for s in range(dz.size):
            v = a[s]
            dz[s] = delta[s] * (one - v * v)
    elif kind == 3:
        for s in range(dz.size):
            dz[s] = delta[s] * (one if a[s] > zero else zero)
    else:
        for s in range(dz.size):
            dz[s] = delta[s]


def times_grad(delta: np.ndarray, a: np.ndarray | None, activation: str) -> np.ndarray:
    """dC/dz = delta f'(z) for a = f(z) (`activation`, one of ACTIVATIONS), as a new C-ordered
    array; delta itself for the identity (or no `a`)."""
    if a is None or activation == "identity":
        return np.ascontiguousarray(delta)
    dz = np.empty(delta.shape, delta.dtype)
    kind = ACTIVATIONS.index(activation)
    _times_grad(
        np.ascontiguousarray(delta).reshape(-1), np.ascontiguousarray(a).reshape(-1), kind, dz.reshape(-1)
    )
    return dz


@jit
def _maxpool2_grad(win: np.ndarray, dz: np.ndarray, dx: np.ndarray, gb: np.ndarray) -> None:
    f, m, h, w = win.shape  # win and dx map by map; dz as the layer above gives it
    zero = dx.dtype.type(0)
    sums = np.empty(w, np.float64)  # the bias's gradient: a sum per column, so the adds vectorize
    for g in range(f):
        sums[:] = 0.0
        for b in range(m):
            for r in range(h):
                k, dl = win[g, b, r], dz[b, g, r]
                d0, d1 = dx[g, b, 2 * r], dx[g, b, 2 * r + 1]
                for s in range(w):
                    sums[s] += dl[s]
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
        gb[g] = sums.sum()


def maxpool2_grad(
    win: np.ndarray,
    delta: np.ndarray,
    shape: tuple[int, ...],
    a: np.ndarray | None = None,
    activation: str = "identity",
    parity: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """dC/dx of 2 x 2 max-pooling of an x of `shape` (m, f, H, W) whose regions' winners are `win`
    (from `maxpool2_winners`), as hpexp.nn.conv.MaxPool.backward, stored map by map: the (m, f, H,
    W) view of an (f, m, H, W) array, as a convolution's output is, so its gradient needs no copy;
    its rows in parity order if `parity`, as x's were (see _maps).

    With `a` = f(pooled x + b) and its `activation` (one of ACTIVATIONS), delta is dC/da and first
    becomes dC/dz = delta f'(z), as a conv-pool layer's backward does. Also returned: the per-map
    sums of dC/dz (a bias's gradient, (f,)), added in float64 while spreading."""
    m, f, height, width = shape
    # The kernel writes every element of every region: only a border left over needs zeros first.
    whole = height % 2 == 0 and width % 2 == 0
    dx = (np.empty if whole else np.zeros)((f, m, height, width), delta.dtype)
    gb = np.empty(f, np.float64)
    maps = _maps(dx.transpose(1, 0, 2, 3), parity)
    rows = maps.shape[2] // 2
    dz = times_grad(delta, a, activation).reshape(m, f, rows, -1)
    _maxpool2_grad(win.reshape(f, m, rows, -1), dz, maps, gb)
    return dx.transpose(1, 0, 2, 3), gb.astype(delta.dtype)


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
    win: np.ndarray,
    dz: np.ndarray,
    xh: np.ndarray,
    wt: np.ndarray,
    gw: np.ndarray,
    gb: np.ndarray,
    dx: np.ndarray,
    channels: int,
    propagate: bool,
) -> None:
    f, m, h, w = win.shape  # win map by map; dz as the layer above gives it
    kh, row = wt.shape[1], wt.shape[2]  # xh, dx (m, H, W * channels); wt, gw (f, kh, kw * channels)
    for g in range(f):
        total = 0.0
        for b in range(m):
            for r in range(h):
                for s in range(w):
                    d, won = dz[b, g, r, s], win[g, b, r, s]
                    total += d
                    if d == 0 or won == 4:  # (ReLU's zeros: about half), or a NaN: no element won
                        continue
                    y, x = 2 * r + won // 2, 2 * s + won % 2  # the region's element that won
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
        gb[g] = total


def pooled_back(
    x: np.ndarray,
    w: np.ndarray,
    win: np.ndarray,
    delta: np.ndarray,
    a: np.ndarray,
    activation: str,
    gw: np.ndarray,
    propagate: bool,
) -> tuple[np.ndarray | None, np.ndarray]:
    """A conv layer's backward through 2 x 2 max-pooling in one pass over the regions' winners:
    delta (m, f, h, w), dC/da of the layer's output a = f(pooled z + b) (`activation`, one of
    ACTIVATIONS), becomes dC/dz and reaches only the element of its region that won (`win`, from
    `maxpool2_winners`), so the filters' gradient (into `gw`, (f, c * kh * kw)) and the input's
    (returned, if `propagate`, with the bias's gradient, (f,)) are sums over the winners alone, a
    quarter of the positions (fewer where dC/dz is zero), instead of the dense products
    hpexp.nn.conv computes after spreading it over every position.

    x (m, c, H, W) is the conv's input, w its filters. Each winner adds its patch, row by row of
    kw x c values side by side, so both run channels last (x and the filters reordered, the results
    back). conv-pool(40) on 20 maps at mini-batch 10 (ReLU): 345 us instead of 628 for the pooling,
    filter and input gradients. Another order of the sums than BLAS's: equal to rounding, taken
    where measured faster, float32."""
    m, c, height, width = x.shape
    f, _, kh, kw = w.shape
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(m, height, width * c)
    wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(f, kh, kw * c)
    g = np.zeros((f, kh, kw * c), gw.dtype)
    gb = np.empty(f, np.float64)
    dx = np.zeros((m, height, width * c) if propagate else (1, 1, 1), x.dtype)
    _pooled_back(win, times_grad(delta, a, activation), xh, wt, g, gb, dx, c, propagate)
    gw[...] = g.reshape(f, kh, kw, c).transpose(0, 3, 1, 2).reshape(f, -1)
    back = dx.reshape(m, height, width, c).transpose(0, 3, 1, 2) if propagate else None
    return back, gb.astype(x.dtype)
