"""Optimizers: the code that changes parameters. `step(params, grads)` updates in place.

The gradients arrive already multiplied by the learning rate: the schedule owns eta's value per
epoch and backprop folds it into the output error (`Network.backprop(..., scale=eta)`), a few numbers
instead of a pass over every gradient. So `grads` holds eta * g below, and for a population of
networks eta is one value per member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SGD"]


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
    ) -> None:
        """One update from `grads` = eta * g (see the module docstring); the gradients are used up.

        `decay` arrays (weights: views into `params`) are first multiplied by `factor`, network2's
        weight decay (Regularizer.weight_decay), which only a plain step may take in place of the
        L2 gradient. A population's per-member momentum (K, 1, 1) needs params as per-layer arrays."""
        if self._plain:
            for w in decay:
                w *= factor
            for p, g in zip(params, grads, strict=True):
                p -= g
            return
        if decay:
            raise ValueError("weight decay replaces the L2 gradient for plain SGD only; add it to g")
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
