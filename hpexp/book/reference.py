"""The book's own training algorithm, written as network2.py writes it: one example at a time.

hpexp's engine trains a mini-batch with one matrix product per layer. The book's network.py and
network2.py loop over the examples of a mini-batch and sum their gradients; chapter 2's problem
"Fully matrix-based approach to backpropagation over a mini-batch" asks for the matrix form and
says it is "about a factor of two" faster. This module keeps the book's form, plainly, for two
uses that need the book's code rather than ours:

- `matrix_speed`: the chapter 2 claim, timed here (the per-example loop against the matrix form of
  the same algorithm, same NumPy, same data);
- `network2_run`: a run of an MLP preset by the book's algorithm itself (NumPy's legacy generator
  seeded for the initialization, Python's `random` for the shuffles, as network2.py and its scripts
  do), so that where our runs and the book's differ we can tell the seed's spread from the engine's.

Only sigmoid networks with the quadratic or cross-entropy cost, the book's two initializations and
L2 weight decay: what network2.py has.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Network2", "matrix_gradient", "per_example_gradient"]

Params = tuple[list[np.ndarray], list[np.ndarray]]  # biases (y, 1), weights (y, x)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _backprop(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    cross_entropy: bool,
) -> Params:
    """network2.backprop on the examples that are the columns of x (n_in, m) and y (n_out, m):
    the gradients of the cost summed over those examples. One column is network2's own call."""
    activation = x
    activations, zs = [activation], []
    for b, w in zip(biases, weights, strict=True):
        z = w @ activation + b
        zs.append(z)
        activation = _sigmoid(z)
        activations.append(activation)
    delta = activations[-1] - y
    if not cross_entropy:
        delta = delta * activations[-1] * (1 - activations[-1])
    nabla_b, nabla_w = [np.empty(0)] * len(weights), [np.empty(0)] * len(weights)
    for layer in range(1, len(weights) + 1):
        if layer > 1:
            s = _sigmoid(zs[-layer])
            delta = (weights[-layer + 1].T @ delta) * s * (1 - s)
        nabla_b[-layer] = (
            delta if delta.shape[1] == 1 else delta.sum(axis=1, keepdims=True)
        )  # network2: delta
        nabla_w[-layer] = delta @ activations[-layer - 1].T
    return nabla_b, nabla_w


def per_example_gradient(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    cross_entropy: bool,
) -> Params:
    """Summed gradients over a mini-batch, one example at a time (network2.update_mini_batch).
    x: (m, n_in), y: (m, n_out) one-hot. Returns (nabla_b, nabla_w)."""
    nabla_b = [np.zeros(b.shape) for b in biases]
    nabla_w = [np.zeros(w.shape) for w in weights]
    for xi, yi in zip(x, y, strict=True):
        delta_b, delta_w = _backprop(weights, biases, xi.reshape(-1, 1), yi.reshape(-1, 1), cross_entropy)
        nabla_b = [nb + db for nb, db in zip(nabla_b, delta_b, strict=True)]
        nabla_w = [nw + dw for nw, dw in zip(nabla_w, delta_w, strict=True)]
    return nabla_b, nabla_w


def matrix_gradient(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    cross_entropy: bool,
) -> Params:
    """The same sums with the whole mini-batch as one matrix (chapter 2's problem): the examples are
    the columns of X = [x1 ... xm], so each layer is one product."""
    return _backprop(weights, biases, x.T, y.T, cross_entropy)


@dataclass
class Network2:
    """network2.Network: sizes, cost, and its `default_weight_initializer` (weights N(0, 1/n_in))
    followed, for `large=True`, by `large_weight_initializer` (weights N(0, 1)), drawn from NumPy's
    legacy generator in the book's order (network2's constructor always draws the default first)."""

    sizes: Sequence[int]
    cross_entropy: bool = True
    large: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        np_random = np.random.RandomState(self.seed)
        pairs = list(zip(self.sizes[:-1], self.sizes[1:], strict=True))
        for large in (False, True) if self.large else (False,):
            self.biases = [np_random.randn(y, 1) for y in self.sizes[1:]]
            self.weights = [np_random.randn(y, x) / (1.0 if large else np.sqrt(x)) for x, y in pairs]
        self.shuffler = random.Random(self.seed)

    def output(self, x: np.ndarray) -> np.ndarray:
        a = x.T
        for b, w in zip(self.biases, self.weights, strict=True):
            a = _sigmoid(w @ a + b)
        return a.T

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.output(x).argmax(axis=1) == labels))

    def cost(self, x: np.ndarray, labels: np.ndarray, lmbda: float) -> float:
        """network2.total_cost: the mean cost plus 0.5 (lmbda / n) sum ||w||^2, n the evaluated set's size."""
        a, y = self.output(x), np.eye(self.sizes[-1])[labels]
        if self.cross_entropy:
            per = np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a)).sum(axis=1)
        else:
            per = 0.5 * ((a - y) ** 2).sum(axis=1)
        return float(per.mean() + 0.5 * (lmbda / len(x)) * sum(float((w**2).sum()) for w in self.weights))

    def epoch(
        self,
        x: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        eta: float,
        lmbda: float,
        order: Sequence[int] | None = None,
    ) -> float:
        """One pass of network2.SGD: shuffle (Python's random; or take `order`), then per-example
        mini-batch updates with weight decay (1 - eta lmbda / n). Returns the seconds it took."""
        started = time.perf_counter()
        if order is None:
            order = list(range(len(x)))
            self.shuffler.shuffle(order)
        y, n = np.eye(self.sizes[-1])[labels], len(x)
        for k in range(0, n, batch_size):
            batch = order[k : k + batch_size]
            nabla_b, nabla_w = per_example_gradient(
                self.weights, self.biases, x[batch], y[batch], self.cross_entropy
            )
            scale = eta / len(batch)
            self.weights = [
                (1 - eta * (lmbda / n)) * w - scale * nw for w, nw in zip(self.weights, nabla_w, strict=True)
            ]
            self.biases = [b - scale * nb for b, nb in zip(self.biases, nabla_b, strict=True)]
        return time.perf_counter() - started
