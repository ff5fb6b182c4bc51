"""Layers: `forward(x)` keeps what `backward(delta)` needs; `infer(x)` is the cache-free evaluation path.

`backward` receives dC/da for the layer's output, fills the layer's gradients (never its
parameters: only the optimizer changes those) and returns dC/da for its input.
Arrays are batch-major, x of shape (m, n_in); a leading population axis (K, m, n_in) on x and
(K, n_in, n_out) on the weights broadcasts through every line.
"""

from __future__ import annotations

import numpy as np

from hpexp.activations import Activation, Identity


class Dense:
    """A fully-connected layer a = f(x W + b) with W of shape (n_in, n_out) and b of shape (1, n_out)."""

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
        z = x @ self.w
        z += self.b
        return self.activation.value(z)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        self.z = x @ self.w
        self.z += self.b
        self.a = self.z if self._linear else self.activation.value(self.z)
        return self.a

    def backward(self, delta: np.ndarray, propagate: bool = True) -> np.ndarray | None:
        """delta = dC/da; dC/dz = delta * f'(z); dC/dW = x^T dC/dz; dC/db = sum over the batch."""
        if not self._linear:
            delta = delta * self.activation.grad(self.z, self.a)
        np.matmul(self.x.mT, delta, out=self.gw)
        np.add.reduce(delta, axis=-2, keepdims=True, out=self.gb)
        # The first layer's input gradient is never used: skipping it saves the widest product.
        return delta @ self.w.mT if propagate else None
