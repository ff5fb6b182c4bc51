"""Layers: `forward(x)` keeps what `backward(delta)` needs; `infer(x)` is the cache-free evaluation path.

`backward` receives dC/da for the layer's output, fills the layer's gradients (never its
parameters: only the optimizer changes those) and returns dC/da for its input.
Activations are batch-major, x of shape (m, n_in); weights are stored as the book writes them,
(n_out, n_in), a row of incoming weights per unit. A population of K networks (hpexp.nn.population)
adds a leading axis: weights (K, n_out, n_in), and x either (K, m, n_in), each member its own
mini-batch, or (m, n_in) shared by all, when the K weight matrices act as one (K * n_out, n_in)
matrix: one wide product instead of K narrow ones.

A dense layer's x W^T and delta W in training may run compiled (hpexp.kernels.dense, the `fast`
extra) instead of BLAS, and plain SGD may step its weights inside the gradient's product
(hpexp.nn.optimizers): faster for a few rows of x and large W, slower otherwise, by how much depends
on the CPU, so the trainer sets `Dense.compiled`, `Dense.compiled_back`, `Dense.by_product` and
`Dense.compiled_step` where it measured a win (hpexp.train.ways).
"""

from __future__ import annotations

import numpy as np

from hpexp.nn import compiled
from hpexp.nn.activations import Activation, Identity

__all__ = ["Dense", "weighted_input"]

KERNELS = compiled.kernels("dense")  # the engine's choice; tests and benchmarks may set it


def _wide(w: np.ndarray, x: np.ndarray) -> bool:
    """Whether the K members' weights meet one shared input x (and so can act as one matrix)."""
    return w.ndim == 3 and x.ndim == 2


def weighted_input(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x W^T, computed as (W x^T)^T: the product BLAS does fastest for a few rows of x, returned as
    a transposed view (batch-major indexing, feature-major memory; numpy follows either)."""
    if _wide(w, x):
        k, n_out, n_in = w.shape
        return (w.reshape(k * n_out, n_in, copy=False) @ x.T).reshape(k, n_out, -1).mT
    return (w @ x.mT).mT


class Dense:
    """A fully-connected layer a = f(x W^T + b) with W of shape (n_out, n_in) and b of shape (1, n_out).

    `compiled`: forward computes x W^T with the compiled kernel, if installed (one network, or a
    population's members meeting one shared input as one wide layer), `rows` rows of W per pass
    (4 or 2: which is faster depends on the CPU's registers).
    `compiled_back`: backward computes the input's gradient delta W so.
    `by_product`: plain SGD's training step asks backward to leave dC/dW as its product, and
    `compiled_step` steps the weights by it with the compiled kernel (one network only)."""

    compiled = False
    rows = 4
    compiled_back = False
    by_product = False
    compiled_step = False

    def __init__(self, w: np.ndarray, b: np.ndarray, activation: Activation) -> None:
        self.w, self.b, self.activation = w, b, activation
        self.gw, self.gb = np.zeros_like(w), np.zeros_like(b)
        self._linear = isinstance(activation, Identity)

    def bind(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Use the given arrays (views into a network's flat buffers) for parameters and gradients."""
        (self.w, self.b), (self.gw, self.gb) = params, grads

    @property
    def params(self) -> list[np.ndarray]:
        return [self.w, self.b]

    @property
    def grads(self) -> list[np.ndarray]:
        return [self.gw, self.gb]

    def infer(self, x: np.ndarray) -> np.ndarray:
        z = weighted_input(self.w, x)
        z += self.b
        return self.activation.value(z)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        if self.compiled and KERNELS is not None and (self.w.ndim == 2 or _wide(self.w, x)):
            self.z = KERNELS.weighted_input(self.w, x, self.rows)
        else:
            self.z = weighted_input(self.w, x)
        self.z += self.b
        self.a = self.z if self._linear else self.activation.value(self.z)
        return self.a

    def backward(
        self, delta: np.ndarray, propagate: bool = True, factored: bool = False
    ) -> np.ndarray | None:
        """delta = dC/da; dC/dz = delta * f'(z); dC/dW = dC/dz^T x; dC/db = sum over the batch.

        `factored`: dC/dW is left as its factors (`products`, for plain SGD's step), not formed."""
        if not self._linear:
            delta = delta * self.activation.grad(self.z, self.a)
        if factored:
            self.products = [(self.w, delta, self.x, self.compiled_step)]
        elif _wide(self.w, self.x):
            k, n_out, n_in = self.w.shape
            rows = np.ascontiguousarray(delta.mT).reshape(k * n_out, -1)  # a view when delta is
            np.matmul(rows, self.x, out=self.gw.reshape(k * n_out, n_in, copy=False))  # feature-major already
        else:
            np.matmul(delta.mT, self.x, out=self.gw)
        np.add.reduce(delta, axis=-2, keepdims=True, out=self.gb)
        # The first layer's input gradient is never used: skipping it saves the widest product.
        if not propagate:
            return None
        if self.compiled_back and KERNELS is not None:
            return KERNELS.back(delta, self.w)  # type: ignore[no-any-return]
        return delta @ self.w
