"""Weight initializers: `weights(shape, rng)` and `biases(shape, rng)` draw the starting parameters.

Shapes are batch-major, (n_in, n_out) for weights and (1, n_out) for biases; a leading population
axis (K, ...) is allowed, so fan-in is always shape[-2] and fan-out shape[-1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

Shape = tuple[int, ...]


class Initializer(Protocol):
    def weights(self, shape: Shape, rng: np.random.Generator) -> np.ndarray: ...

    def biases(self, shape: Shape, rng: np.random.Generator) -> np.ndarray: ...


def _normal(shape: Shape, sd: float, rng: np.random.Generator) -> np.ndarray:
    return sd * rng.standard_normal(shape)


@dataclass(frozen=True)
class Large:
    """The book's network.py: weights and biases N(0, 1)."""

    def weights(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return _normal(shape, 1.0, rng)

    def biases(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return _normal(shape, 1.0, rng)


@dataclass(frozen=True)
class Default:
    """The book's network2 default: weights N(0, 1/n_in), biases N(0, 1)."""

    def weights(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return _normal(shape, 1.0 / np.sqrt(shape[-2]), rng)

    def biases(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return _normal(shape, 1.0, rng)


@dataclass(frozen=True)
class He:
    """He et al. (2015), for ReLU: weights N(0, 2/n_in), biases 0."""

    def weights(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return _normal(shape, np.sqrt(2.0 / shape[-2]), rng)

    def biases(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(shape)


@dataclass(frozen=True)
class Glorot:
    """Glorot & Bengio (2010), uniform: weights U(-r, r) with r = sqrt(6/(n_in + n_out)), biases 0."""

    def weights(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        r = np.sqrt(6.0 / (shape[-2] + shape[-1]))
        return rng.uniform(-r, r, shape)

    def biases(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(shape)


@dataclass(frozen=True)
class Network3:
    """The book's network3 fully-connected layers: weights N(0, 1/n_out), biases N(0, 1).

    The book (ch6, note of November 2016) calls n_out a mistake for n_in, but its chapter 6
    numbers were produced with it, so faithful reproductions use this one.
    """

    def weights(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return _normal(shape, np.sqrt(1.0 / shape[-1]), rng)

    def biases(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        return _normal(shape, 1.0, rng)
