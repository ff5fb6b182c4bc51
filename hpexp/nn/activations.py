"""Activation functions: a neuron's output a = f(z) and its derivative f'(z).

Every activation has the same two methods: `value(z)` and `grad(z, a)`, where `a = value(z)` is
passed back in so the derivative can reuse it (sigmoid' = a(1 - a) needs no second exponential).

The sigmoid and tanh of float32 arrays run compiled when the optional kernels are installed
(hpexp.kernels.activations, the `fast` extra; not with HPEXP_KERNELS=numpy), equal to NumPy's to
rounding, unless `compiled=False`. Whether the kernel wins depends on the CPU and the array's size
(`python benchmarks/bench_costs.py`, 28,800 values: the sigmoid 17.1 -> 11.4 us with AVX-512, 39.9
-> 14.2 with AVX2, where NumPy's float32 tanh is slow; tanh 34.9 -> 14.2 with AVX2, but 10.8 -> 11.4
with AVX-512, and for a few hundred values NumPy's tanh wins on both), so training sets `compiled`
per layer from a measurement (hpexp.train.ways.activation_choices). float64, the exact path, is
NumPy's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from hpexp.nn import compiled

__all__ = ["Activation", "Identity", "ReLU", "Sigmoid", "Tanh", "sigmoid"]


KERNELS = compiled.kernels("activations")  # the engine's choice; tests and benchmarks may set it


class Activation(Protocol):
    def value(self, z: np.ndarray) -> np.ndarray: ...

    def grad(self, z: np.ndarray, a: np.ndarray) -> np.ndarray: ...


def sigmoid(z: np.ndarray) -> np.ndarray:
    """sigma(z) = 1 / (1 + e^-z), written as (1 + tanh(z/2)) / 2: no overflow for large |z|."""
    a = np.tanh(0.5 * z)
    a += 1.0
    a *= 0.5
    return a


@dataclass(frozen=True)
class Sigmoid:
    """The book's neuron: sigma(z), with sigma'(z) = sigma(z)(1 - sigma(z)).
    `compiled`: float32 by the compiled kernel, if installed (see the module's docstring)."""

    compiled: bool = field(default=True, compare=False, repr=False)

    def value(self, z: np.ndarray) -> np.ndarray:
        if self.compiled and KERNELS is not None and z.dtype == np.float32:
            return KERNELS.sigmoid(z)  # type: ignore[no-any-return]
        return sigmoid(z)

    def grad(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return a * (1.0 - a)


@dataclass(frozen=True)
class Tanh:
    """tanh(z), with tanh'(z) = 1 - tanh(z)^2. `compiled`: as Sigmoid's."""

    compiled: bool = field(default=True, compare=False, repr=False)

    def value(self, z: np.ndarray) -> np.ndarray:
        if self.compiled and KERNELS is not None and z.dtype == np.float32:
            return KERNELS.tanh(z)  # type: ignore[no-any-return]
        return np.tanh(z)

    def grad(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return 1.0 - a * a


@dataclass(frozen=True)
class ReLU:
    """max(0, z), with derivative 1 where z > 0 and 0 elsewhere (0 at z = 0, by convention)."""

    def value(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, 0.0)

    def grad(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return (z > 0).astype(z.dtype)


@dataclass(frozen=True)
class Identity:
    """f(z) = z: the output layer's own activation, since the cost owns the output nonlinearity."""

    def value(self, z: np.ndarray) -> np.ndarray:
        return z

    def grad(self, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.ones_like(z)
