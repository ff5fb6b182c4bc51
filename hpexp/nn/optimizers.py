"""Optimizers: the code that changes parameters. `step(params, grads)` updates in place.

The gradients arrive already multiplied by the learning rate: the schedule owns eta's value per
epoch and backprop folds it into the output error (`Network.backprop(..., scale=eta)`), a few numbers
instead of a pass over every gradient. So `grads` holds eta * g below, and for a population of
networks eta is one value per member.

A weight matrix's gradient is a product, a^T b (a dense layer's: delta^T x). Plain SGD, linear in
the gradient, may take it unformed (`products`, from `Network.backprop(..., factored=layers)`):
`descend` steps w by the product itself, with SciPy's BLAS (the `fast` extra) one gemm accumulating
into w, so no gradient array is written and read back (a population's members sharing their input:
one gemm for all, after the decay pass). NumPy forms the product, then steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hpexp.nn import compiled

__all__ = ["SGD", "descend"]

BLAS = compiled.kernels("blas")  # the engine's choice; tests and benchmarks may set it
KERNELS = compiled.kernels("dense")  # as BLAS


def descend(
    w: np.ndarray, a: np.ndarray, b: np.ndarray, factor: float | np.ndarray = 1.0, compiled: bool = False
) -> None:
    """w <- factor w - a^T b in place: plain SGD's step by an (eta-scaled) gradient a^T b. In a
    population, w (K, p, q), a (K, m, p) and b (K, m, q), or (m, q) shared by all (the first
    layer's input in shared order), factor one per member (K, 1, 1). `compiled`: one network's
    step by the compiled kernel (hpexp.kernels.dense.descend), if installed, instead of BLAS."""
    if compiled and KERNELS is not None and w.ndim == 2 and np.ndim(factor) == 0:
        if KERNELS.descend(w, a, b, float(factor)):
            return
    if BLAS is not None:
        if w.ndim == 2 and np.ndim(factor) == 0 and BLAS.descend(w, a, b, float(factor)):
            return
        if w.ndim == 3 and b.ndim == 2 and BLAS.descend_members(w, a, b, factor):
            return
    if np.ndim(factor) or factor != 1.0:
        w *= factor
    w -= a.mT @ b


@dataclass
class SGD:
    """Stochastic gradient descent with optional (Nesterov) momentum.

    momentum = 0:  w <- w - eta g                       (the book's rule)
    momentum mu:   v <- mu v - eta g;  w <- w + v       (ch3, "momentum-based gradient descent")
    nesterov:      v <- mu v - eta g;  w <- w + mu v - eta g
    """

    eta: float
    momentum: float = 0.0
    nesterov: bool = False
    _velocity: list[np.ndarray] = field(default_factory=list, init=False, repr=False)
    _plain: bool = field(default=True, init=False, repr=False)

    def __post_init__(self) -> None:
        # np.all: in a population (hpexp.nn.population) a field may hold one value per member.
        if not np.all(np.asarray(self.eta) > 0):
            raise ValueError(f"optimizer.eta must be > 0, got {self.eta}")
        if not np.all((np.asarray(self.momentum) >= 0) & (np.asarray(self.momentum) < 1)):
            raise ValueError(f"optimizer.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and np.any(np.asarray(self.momentum) == 0.0):
            raise ValueError("optimizer.nesterov needs optimizer.momentum > 0")
        self._plain = bool(np.all(np.asarray(self.momentum) == 0.0))

    @property
    def plain(self) -> bool:
        """Whether the step is w <- w - eta g: linear in the gradient, no state."""
        return self._plain

    def step(
        self,
        params: Sequence[np.ndarray],
        grads: Sequence[np.ndarray],
        decay: Sequence[np.ndarray] = (),
        factor: float | np.ndarray = 1.0,
        products: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = (),
    ) -> None:
        """One update from `grads` = eta * g (see the module docstring); the gradients are used up.

        `decay` arrays (weights: views into `params`) are first multiplied by `factor`, network2's
        weight decay (Regularizer.weight_decay), which only a plain step may take in place of the
        L2 gradient. `products` (w, a, b, compiled) are weights not in `params` whose eta * g is
        a^T b, decayed by `factor` too and stepped by `descend` (plain step only). A population's
        per-member momentum (K, 1, 1) needs params as per-layer arrays."""
        if self._plain:
            for w, a, b, by_kernel in products:
                descend(w, a, b, factor, by_kernel)
            for w in decay:
                w *= factor
            for p, g in zip(params, grads, strict=True):
                p -= g
            return
        if decay or products:
            raise ValueError("weight decay and unformed gradients are for plain SGD only")
        if not self._velocity:
            self._velocity = [np.zeros_like(p) for p in params]
        mu = self.momentum
        for p, g, v in zip(params, grads, self._velocity, strict=True):
            v *= mu
            v -= g
            if self.nesterov:
                p += mu * v - g
            else:
                p += v
