"""Weight initializers: `weights(shape, rng)` and `biases(shape, rng)` draw the starting parameters.

Weights are drawn as (n_in, n_out) (dense layers store the transpose, see hpexp.nn.network.DenseSpec)
and biases as (1, n_out); a leading population axis (K, ...) is allowed, so fan-in is by default
shape[-2] and fan-out shape[-1]. Layers whose
weights are not such a matrix (convolution filters) or that an initializer treats specially (the
output layer, for network3) say so with `fan`, a `Fan(n_in, n_out, output)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Default", "Fan", "Glorot", "He", "Initializer", "Large", "Network3", "fan_of"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Fan:
    """What a weight array connects: n_in inputs per unit, n_out units (a conv layer counts
    filters * kh * kw / pool area, as network3 does), and whether it is the output layer."""

    n_in: float
    n_out: float
    output: bool = False


def fan_of(shape: Shape, fan: Fan | None) -> Fan:
    return fan or Fan(shape[-2], shape[-1])


class Initializer(Protocol):
    def weights(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray: ...

    def biases(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray: ...


def _normal(shape: Shape, sd: float, rng: np.random.Generator) -> np.ndarray:
    return sd * rng.standard_normal(shape)


@dataclass(frozen=True)
class Large:
    """The book's network.py: weights and biases N(0, 1)."""

    def weights(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        return _normal(shape, 1.0, rng)

    def biases(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        return _normal(shape, 1.0, rng)


@dataclass(frozen=True)
class Default:
    """The book's network2 default: weights N(0, 1/n_in), biases N(0, 1)."""

    def weights(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        return _normal(shape, 1.0 / np.sqrt(fan_of(shape, fan).n_in), rng)

    def biases(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        return _normal(shape, 1.0, rng)


@dataclass(frozen=True)
class He:
    """He et al. (2015), for ReLU: weights N(0, 2/n_in), biases 0."""

    def weights(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        return _normal(shape, np.sqrt(2.0 / fan_of(shape, fan).n_in), rng)

    def biases(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        return np.zeros(shape)


@dataclass(frozen=True)
class Glorot:
    """Glorot & Bengio (2010), uniform: weights U(-r, r) with r = sqrt(6/(n_in + n_out)), biases 0."""

    def weights(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        f = fan_of(shape, fan)
        r = np.sqrt(6.0 / (f.n_in + f.n_out))
        return rng.uniform(-r, r, shape)

    def biases(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        return np.zeros(shape)


@dataclass(frozen=True)
class Network3:
    """The book's network3 (chapter 6): weights N(0, 1/n_out), biases N(0, 1), and the softmax output
    layer's weights and biases 0.

    n_out is the layer's number of units, and for a conv-pool layer filters * kh * kw / pool area
    (sd = sqrt(1/125) = 0.089 for 20 maps of 5x5 pooled 2x2). The book (ch6, note of November 2016)
    calls n_out a mistake for n_in, but its chapter 6 numbers were produced with it, so faithful
    reproductions use this one.
    """

    def weights(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        f = fan_of(shape, fan)
        return np.zeros(shape) if f.output else _normal(shape, np.sqrt(1.0 / f.n_out), rng)

    def biases(self, shape: Shape, rng: np.random.Generator, fan: Fan | None = None) -> np.ndarray:
        return np.zeros(shape) if fan is not None and fan.output else _normal(shape, 1.0, rng)
