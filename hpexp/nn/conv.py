"""Convolutional layers (chapter 6): 2-D convolution, max and L2 pooling, and network3's conv-pool.

Images are batch-major, x of shape (m, channels, height, width). Convolution is "valid" (no
padding) with stride 1 and is computed as one matrix product over image patches (im2col). Like
every deep-learning library we compute cross-correlation; network3's Theano convolution flips the
kernel, which only mirrors the learned filters.
Pooling is over non-overlapping p x p regions, dropping any remainder at the border.
A conv-pool layer with the compiled 2 x 2 max-pooling in float32 stores its convolution's maps
with their rows in parity order (`parity_order`: the even rows, then the odd ones), so that the
pooling reads each map's regions as two flat runs of the map instead of a pair of short rows at a
time (conv-pool(20) at mini-batch 10, AVX2: the pooling 37 -> 19 us, its gradient 22 -> 19); the
patches, their adjoint and both poolings take that order as `parity`. The sums are the same, taken
in another order by BLAS (equal to rounding), so float64, the exact path, keeps the rows in order.

`patches`, `unpatch` (im2col and its adjoint) and MaxPool (both ways) are the reference in NumPy;
when the optional compiled kernels are installed (hpexp.kernels, the `fast` extra: numba) those run
instead (for 2 x 2 pooling), with bit-for-bit the same results, unless HPEXP_KERNELS=numpy; a
conv-pool layer's bias and activation derivative (for the activations in _COMPILED_GRADS) then run
in the pooling's passes, its bias's gradient summed in float64 (equal to NumPy's to rounding). The
kernels are looked up here at run time, so the engine itself imports NumPy only.
A conv layer's filter gradient may run compiled too, where the trainer measured it faster than BLAS
(`Conv2D.compiled`, set by hpexp.train.batching, float32 only), and so may a conv-pool layer's whole
backward through 2 x 2 max-pooling, summed over the regions' winners only (`ConvPool.by_winners`):
equal to rounding, not bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpexp.nn import compiled
from hpexp.nn.activations import Activation, Identity, ReLU, Sigmoid, Tanh
from hpexp.nn.init import Fan, Initializer

__all__ = [
    "Conv2D",
    "ConvPool",
    "ConvPoolSpec",
    "ConvStack",
    "Flatten",
    "L2Pool",
    "MaxPool",
    "patches",
    "unpatch",
]


def compiled_kernels() -> object | None:
    """hpexp.kernels.conv if numba is installed and HPEXP_KERNELS is not `numpy`, else None."""
    return compiled.kernels("conv")


KERNELS: object | None = compiled_kernels()  # the engine's choice; tests and benchmarks may set it


def parity_order(n: int) -> np.ndarray:
    """The rows 0..n-1 in parity order, the even ones, then the odd ones: row parity_order(n)[i]
    is stored i-th (and row r at np.argsort(parity_order(n))[r])."""
    return np.r_[0:n:2, 1:n:2]


def patches(x: np.ndarray, kh: int, kw: int, parity: bool = False) -> np.ndarray:
    """(m, c, H, W) -> (c * kh * kw, m * oh * ow) with oh = H - kh + 1: every kh x kw patch as a
    column (im2col), each image's oh x ow patches row by row, the rows in `parity_order` if `parity`.
    Built by kh * kw slice copies, each writing one contiguous row block: several times faster than
    reordering a `sliding_window_view` for the book's small images."""
    if KERNELS is not None:
        return KERNELS.patches(x, kh, kw, parity)  # type: ignore[attr-defined,no-any-return]
    m, c, height, width = x.shape
    oh, ow = height - kh + 1, width - kw + 1
    cols = np.empty((c, kh, kw, m, oh, ow), x.dtype)
    by_channel = x.transpose(1, 0, 2, 3)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = by_channel[:, :, i : i + oh, j : j + ow]
    if parity:
        cols = cols[..., parity_order(oh), :]
    return cols.reshape(c * kh * kw, m * oh * ow)


def unpatch(dcols: np.ndarray, shape: tuple[int, ...], kh: int, kw: int, parity: bool = False) -> np.ndarray:
    """The adjoint of `patches`: add each patch's gradient back onto the pixels it came from."""
    if KERNELS is not None:
        return KERNELS.unpatch(dcols, shape, kh, kw, parity)  # type: ignore[attr-defined,no-any-return]
    m, c, height, width = shape
    oh, ow = height - kh + 1, width - kw + 1
    d = dcols.reshape(c, kh, kw, m, oh, ow)
    if parity:
        d = d[..., np.argsort(parity_order(oh)), :]
    dx = np.zeros((c, m, height, width), dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i : i + oh, j : j + ow] += d[:, i, j]
    return dx.transpose(1, 0, 2, 3)


class Conv2D:
    """z[f] = sum_c x[c] * w[f, c] (valid cross-correlation), w of shape (filters, c, kh, kw).

    No bias and no activation: network3 adds both after pooling (see ConvPool).
    `compiled`: backward forms the filters' gradient with the compiled kernel, if installed, `rows`
    rows of delta per pass (4 or 2).
    `parity` (forward, infer): the output maps' rows in `parity_order`, as the delta of backward."""

    compiled = False
    rows = 4
    parity = False

    def __init__(self, w: np.ndarray) -> None:
        self.w, self.gw = w, np.zeros_like(w)

    @property
    def params(self) -> list[np.ndarray]:
        return [self.w]

    @property
    def grads(self) -> list[np.ndarray]:
        return [self.gw]

    def bind(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        (self.w,), (self.gw,) = params, grads

    @property
    def kernel(self) -> tuple[int, int]:
        """The filters' height and width."""
        return self.w.shape[-2], self.w.shape[-1]

    def matrix(self) -> np.ndarray:
        """The filters as a (filters, c * kh * kw) view: a row per filter, as a dense layer's units."""
        return self.w.reshape(self.w.shape[0], -1)

    def grad_matrix(self) -> np.ndarray:
        return self.gw.reshape(self.gw.shape[0], -1)

    def _apply(self, cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """(filters, c*kh*kw) @ (c*kh*kw, m*oh*ow), seen as (m, filters, oh, ow) without a copy."""
        f, (kh, kw) = self.w.shape[0], self.w.shape[-2:]
        oh, ow = shape[2] - kh + 1, shape[3] - kw + 1
        return (self.matrix() @ cols).reshape(f, shape[0], oh, ow).transpose(1, 0, 2, 3)

    def infer(self, x: np.ndarray, parity: bool = False) -> np.ndarray:
        return self._apply(patches(x, *self.kernel, parity), x.shape)

    def forward(self, x: np.ndarray, parity: bool = False) -> np.ndarray:
        self.x, self.shape, self.parity = x, x.shape, parity
        self.cols = patches(x, *self.kernel, parity)
        return self._apply(self.cols, x.shape)

    def backward(self, delta: np.ndarray, propagate: bool = True) -> np.ndarray | None:
        """dC/dw = delta patches^T; dC/dx = unpatch(w^T delta), delta as (filters, m * oh * ow)."""
        d = delta.transpose(1, 0, 2, 3).reshape(self.w.shape[0], -1)
        if self.compiled and KERNELS is not None:
            KERNELS.filter_grad(d, self.cols, self.grad_matrix(), self.rows)  # type: ignore[attr-defined]
        else:
            # Computed as (patches d^T)^T into a new array, then copied: OpenBLAS runs this thin
            # product a fifth faster than d patches^T straight into the gradient (CPU time at
            # mini-batch 10: 105 us instead of 127 for conv-pool(20), 214 instead of 281 for (40)).
            self.grad_matrix()[...] = (self.cols @ d.T).T
        if not propagate:
            return None
        return unpatch(self.matrix().T @ d, self.shape, *self.kernel, self.parity)


def _regions(x: np.ndarray, p: int) -> np.ndarray:
    """(m, f, H, W) -> (m, f, H//p, W//p, p, p), dropping the border remainder."""
    m, f, height, width = x.shape
    h, w = height // p, width // p
    return x[:, :, : h * p, : w * p].reshape(m, f, h, p, w, p).transpose(0, 1, 2, 4, 3, 5)


def _spread(d: np.ndarray, shape: tuple[int, ...], p: int) -> np.ndarray:
    """(m, f, h, w, p, p) gradients per region element -> (m, f, H, W), zeros on the border."""
    m, f, h, w = d.shape[:4]
    dx = np.zeros(shape, d.dtype)
    dx[:, :, : h * p, : w * p] = d.transpose(0, 1, 2, 4, 3, 5).reshape(m, f, h * p, w * p)
    return dx


class _Pool:
    """Pooling over non-overlapping size x size regions: no parameters to hold or bind. Its input
    maps may come with their rows in `parity_order` (`parity`), its input gradient then so too."""

    params: list[np.ndarray] = []
    grads: list[np.ndarray] = []
    parity = False

    def __init__(self, size: int = 2) -> None:
        self.size = size

    def bind(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        pass

    @staticmethod
    def _in_order(x: np.ndarray, parity: bool) -> np.ndarray:
        """x (..., H, W) with its rows in order (a copy), given them in parity order if `parity`."""
        return x[..., np.argsort(parity_order(x.shape[-2])), :] if parity else x

    @staticmethod
    def _stored(dx: np.ndarray, parity: bool) -> np.ndarray:
        """dx (..., H, W) with its rows in parity order if `parity` (a copy), as the input was."""
        return dx[..., parity_order(dx.shape[-2]), :] if parity else dx


class MaxPool(_Pool):
    """The largest value of each p x p region; its gradient flows to that element only (the first
    one, in row-major order, when several tie)."""

    def _corners(self, x: np.ndarray) -> list[np.ndarray]:
        """The p * p strided views x[:, :, i::p, j::p] (cut to whole regions), one per region offset."""
        p = self.size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        return [x[..., i : h * p : p, j : w * p : p] for i in range(p) for j in range(p)]

    def infer(self, x: np.ndarray, parity: bool = False) -> np.ndarray:
        if KERNELS is not None and self.size == 2:
            return KERNELS.maxpool2(x, parity)  # type: ignore[attr-defined,no-any-return]
        corners = self._corners(self._in_order(x, parity))
        out = corners[0].copy()
        for corner in corners[1:]:
            np.maximum(out, corner, out=out)
        return out

    def forward(self, x: np.ndarray, bias: np.ndarray | None = None, parity: bool = False) -> np.ndarray:
        """The pooled x, plus `bias` (one per map, (f, 1, 1)) if given."""
        self.win, self.parity = None, parity
        if KERNELS is not None and self.size == 2:
            # and which element of each region won, a byte per region for backward to read
            self.x = x
            out, self.win = KERNELS.maxpool2_winners(x, bias, parity)  # type: ignore[attr-defined]
            return out  # type: ignore[no-any-return]
        self.x = self._in_order(x, parity)
        self.out = self.infer(self.x)
        return self.out if bias is None else self.out + bias

    def backward(self, delta: np.ndarray, propagate: bool = True) -> np.ndarray:
        if self.win is not None:  # forward ran compiled: the winners are known
            if KERNELS is not None:
                return KERNELS.maxpool2_grad(self.win, delta, self.x.shape, parity=self.parity)[0]  # type: ignore[attr-defined,no-any-return]
            dx = np.zeros(self.x.shape, delta.dtype)
            for k, d_corner in enumerate(self._corners(dx)):
                np.multiply(delta, self.win.transpose(1, 0, 2, 3) == k, out=d_corner)
            return self._stored(dx, self.parity)
        # One winner per region: in a tied region (a blank part of a digit gives many) the max moves
        # with any single element, so routing the gradient to all of them would multiply it.
        dx = np.zeros(self.x.shape, delta.dtype)
        open_ = np.ones(self.out.shape, bool)  # regions whose winner is not found yet
        for d_corner, corner in zip(self._corners(dx), self._corners(self.x), strict=True):
            win = corner == self.out
            win &= open_
            open_ &= ~win
            np.multiply(delta, win, out=d_corner)
        return self._stored(dx, self.parity)


class L2Pool(_Pool):
    """sqrt(sum of squares) over each p x p region; d out / d x = x / out."""

    def infer(self, x: np.ndarray, parity: bool = False) -> np.ndarray:
        return np.sqrt(np.sum(_regions(self._in_order(x, parity), self.size) ** 2, axis=(-2, -1)))

    def forward(self, x: np.ndarray, bias: np.ndarray | None = None, parity: bool = False) -> np.ndarray:
        """The pooled x, plus `bias` (one per map, (f, 1, 1)) if given."""
        self.regions, self.parity = _regions(self._in_order(x, parity), self.size), parity
        self.out = np.sqrt(np.sum(self.regions**2, axis=(-2, -1)))
        self.shape = x.shape
        return self.out if bias is None else self.out + bias

    def backward(self, delta: np.ndarray, propagate: bool = True) -> np.ndarray:
        safe = np.where(self.out > 0, self.out, 1.0)  # an all-zero region has no gradient
        dx = _spread(self.regions * (delta / safe)[..., None, None], self.shape, self.size)
        return self._stored(dx, self.parity)


class ConvPool:
    """network3's ConvPoolLayer: a = f(pool(conv(x)) + b), with one bias per feature map.

    `by_winners`: with 2 x 2 max-pooling, backward sums the filters' and the input's gradients over
    each region's winner only, in one compiled pass (hpexp.kernels.conv.pooled_back), if installed."""

    by_winners = False

    def __init__(self, w: np.ndarray, b: np.ndarray, activation: Activation, pool: MaxPool | L2Pool) -> None:
        self.conv, self.pool, self.activation = Conv2D(w), pool, activation
        self.b, self.gb = b, np.zeros_like(b)  # b of shape (filters, 1, 1)

    @property
    def params(self) -> list[np.ndarray]:
        return [self.conv.w, self.b]

    @property
    def grads(self) -> list[np.ndarray]:
        return [self.conv.gw, self.gb]

    @property
    def w(self) -> np.ndarray:
        return self.conv.w

    def bind(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.conv.bind(params[:1], grads[:1])
        (self.b,), (self.gb,) = params[1:], grads[1:]

    def parity_for(self, x: np.ndarray) -> bool:
        """Whether the convolution of x stores its maps' rows in parity order for the pooling: with
        the compiled 2 x 2 max-pooling, in float32 (see the module's docstring), for maps of an
        even height and width (each map's regions then two flat runs, no border between them)."""
        kh, kw = self.conv.kernel
        height, width = x.shape[-2] - kh + 1, x.shape[-1] - kw + 1
        return (
            KERNELS is not None
            and isinstance(self.pool, MaxPool)
            and self.pool.size == 2
            and x.dtype == np.float32
            and height % 2 == 0
            and width % 2 == 0
        )

    def infer(self, x: np.ndarray) -> np.ndarray:
        parity = self.parity_for(x)
        return self.activation.value(self.pool.infer(self.conv.infer(x, parity), parity) + self.b)

    def forward(self, x: np.ndarray) -> np.ndarray:
        parity = self.parity_for(x)
        self.z = self.pool.forward(self.conv.forward(x, parity), self.b, parity)
        self.a = self.activation.value(self.z)
        return self.a

    def backward(self, delta: np.ndarray, propagate: bool = True) -> np.ndarray | None:
        win, activation = getattr(self.pool, "win", None), _COMPILED_GRADS.get(type(self.activation))
        if KERNELS is not None and win is not None and activation is not None:
            # compiled: dC/dz = delta f'(z) and the bias's gradient in the pooling's backward
            conv = self.conv
            if self.by_winners:
                back, gb = KERNELS.pooled_back(  # type: ignore[attr-defined]
                    conv.x, conv.w, win, delta, self.a, activation, conv.grad_matrix(), propagate
                )
            else:
                shape = self.pool.x.shape  # type: ignore[union-attr]
                spread, gb = KERNELS.maxpool2_grad(win, delta, shape, self.a, activation, self.pool.parity)  # type: ignore[attr-defined]
                back = conv.backward(spread, propagate)
            self.gb[...] = gb.reshape(self.gb.shape)
            return back  # type: ignore[no-any-return]
        dz = delta * self.activation.grad(self.z, self.a)
        self.gb[...] = dz.sum(axis=(0, 2, 3)).reshape(self.gb.shape)
        return self.conv.backward(self.pool.backward(dz), propagate)


# The activations whose derivative the compiled pooling's backward applies (hpexp.kernels.conv)
_COMPILED_GRADS: dict[type, str] = {Identity: "identity", Sigmoid: "sigmoid", Tanh: "tanh", ReLU: "relu"}


class Flatten:
    """(m, c, h, w) -> (m, c * h * w) in C order (channel, row, column), as network3 flattens."""

    params: list[np.ndarray] = []
    grads: list[np.ndarray] = []

    def bind(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        pass

    def infer(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], -1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, delta: np.ndarray, propagate: bool = True) -> np.ndarray | None:
        return delta.reshape(self.shape)


INFER_CHUNK = 500


class ConvStack:
    """Conv-pool layers between flat rows: (m, n) -> reshape to (m, c, h, w) -> layers -> (m, n_out).

    The network sees the stack as one layer, so a dropout mask (one per layer input) can fall on
    the pixels (p_input) or on the flattened features feeding the first dense layer, never between
    conv layers: network3's conv layers ignore dropout."""

    def __init__(self, layers: Sequence[ConvPool], in_shape: tuple[int, ...]) -> None:
        self.layers, self.in_shape = list(layers), tuple(in_shape)
        self.n_in = math.prod(self.in_shape)
        self._counts = [len(layer.params) for layer in self.layers]

    @property
    def params(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params]

    @property
    def grads(self) -> list[np.ndarray]:
        return [g for layer in self.layers for g in layer.grads]

    @property
    def in_shapes(self) -> list[tuple[int, ...]]:
        """Each conv-pool layer's input shape (channels, height, width)."""
        shapes, (_, height, width) = [self.in_shape], self.in_shape
        for layer in self.layers[:-1]:
            (f, _, kh, kw), p = layer.w.shape, layer.pool.size
            height, width = (height - kh + 1) // p, (width - kw + 1) // p
            shapes.append((f, height, width))
        return shapes

    @property
    def weights(self) -> list[np.ndarray]:
        """Each layer's filters as a (filters, c * kh * kw) view: a row per filter, like Dense's w."""
        return [layer.conv.matrix() for layer in self.layers]

    @property
    def weight_grads(self) -> list[np.ndarray]:
        return [layer.conv.grad_matrix() for layer in self.layers]

    def bind(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        start = 0
        for layer, count in zip(self.layers, self._counts, strict=True):
            layer.bind(params[start : start + count], grads[start : start + count])
            start += count

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Evaluation in chunks of INFER_CHUNK images: the patches of 10,000 images for a second
        conv layer would take over a gigabyte at once."""
        if len(x) > INFER_CHUNK:
            return np.concatenate([self.infer(x[i : i + INFER_CHUNK]) for i in range(0, len(x), INFER_CHUNK)])
        x = x.reshape(len(x), *self.in_shape)
        for layer in self.layers:
            x = layer.infer(x)
        return x.reshape(len(x), -1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), *self.in_shape)
        for layer in self.layers:
            x = layer.forward(x)
        self.out_shape = x.shape
        return x.reshape(len(x), -1)

    def backward(
        self, delta: np.ndarray, propagate: bool = True, factored: bool = False
    ) -> np.ndarray | None:
        """`factored` is there for Dense's signature: the filters' gradients are always formed (as
        products for SGD.step they measured slower: small matrices, sums over thousands of patches)."""
        d: Any = delta.reshape(self.out_shape)  # None below the first layer when not propagated
        for i in range(len(self.layers) - 1, -1, -1):
            d = self.layers[i].backward(d, propagate=propagate or i > 0)
        return None if d is None else d.reshape(len(d), -1)


@dataclass(frozen=True)
class ConvPoolSpec:
    """network3's ConvPoolLayer in config: `filters` maps of size x size (valid, stride 1), then
    `pool` x `pool` pooling (`pooling`: max or l2), then a bias per map and the activation."""

    filters: int
    size: int = 5
    pool: int = 2
    pooling: str = "max"

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.pooling not in POOLS:
            raise ValueError(f"pooling must be one of {sorted(POOLS)}, got {self.pooling!r}")
        if not all(isinstance(v, int) and v >= 1 for v in (self.filters, self.size, self.pool)):
            raise ValueError("filters, size and pool must be integers >= 1")
        _, height, width = in_shape
        h, w = (height - self.size + 1) // self.pool, (width - self.size + 1) // self.pool
        if h < 1 or w < 1:
            raise ValueError(
                f"{self.size}x{self.size} filters pooled {self.pool}x{self.pool} do not fit {in_shape}"
            )
        return (self.filters, h, w)

    def build(
        self,
        in_shape: tuple[int, ...],
        activation: Activation,
        init: Initializer,
        rng: np.random.Generator,
        dtype: str,
        *,
        output: bool = False,
    ) -> ConvPool:
        """The layer with fresh weights; `output` is there for DenseSpec's signature (a conv layer
        is never the output layer)."""
        channels, k = in_shape[0], self.size
        # network3 (after the Theano LeNet tutorial) counts a filter's outputs per pooled unit.
        fan = Fan(channels * k * k, self.filters * k * k / self.pool**2)
        w = init.weights((self.filters, channels, k, k), rng, fan).astype(dtype)
        b = init.biases((self.filters, 1, 1), rng, fan).astype(dtype)
        return ConvPool(w, b, activation, POOLS[self.pooling](self.pool))


POOLS: dict[str, type[MaxPool] | type[L2Pool]] = {"max": MaxPool, "l2": L2Pool}
