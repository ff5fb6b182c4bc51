"""Optimizers: the only code that changes parameters. `step(params, grads, eta)` updates in place.

`eta` is passed at every step because the learning-rate schedule owns its value per epoch; it may
be a float or, for a population of networks, an array of shape (K, 1, 1) that broadcasts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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
        # np.all: in a population (hpexp.population) a field may hold one value per member.
        if not np.all(np.asarray(self.eta) > 0):
            raise ValueError(f"optimizer.eta must be > 0, got {self.eta}")
        if not np.all((np.asarray(self.momentum) >= 0) & (np.asarray(self.momentum) < 1)):
            raise ValueError(f"optimizer.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and np.any(np.asarray(self.momentum) == 0.0):
            raise ValueError("optimizer.nesterov needs optimizer.momentum > 0")
        self._plain = bool(np.all(np.asarray(self.momentum) == 0.0))

    def step(
        self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray], eta: float | np.ndarray
    ) -> None:
        if self._plain:
            for p, g in zip(params, grads, strict=True):
                g *= eta  # the gradient buffer is rewritten by the next backward: scale it in place
                p -= g
            return
        if not self._velocity:
            self._velocity = [np.zeros_like(p) for p in params]
        mu = self.momentum
        for p, g, v in zip(params, grads, self._velocity, strict=True):
            g *= eta
            v *= mu
            v -= g
            if self.nesterov:
                p += mu * v - g
            else:
                p += v
