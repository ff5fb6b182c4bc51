"""Regularization: what changes training, but not the model being evaluated, to make it generalize.

One class, `Regularizer`, holds every technique the book discusses as a field, and each option of
`conf/regularizer/` is a preset of it (as sgd.yaml and momentum.yaml are presets of `SGD`). So any
combination is one override away, e.g. `regularizer=dropout regularizer.lmbda=5` (dropout plus L2).
It acts on training in three places, always with the same signatures:

  penalty     `value(w, n)` is added to the cost and `grad(w, n)` to the weight gradient before each
              step (weights only, never biases). With lmbda and l1_ratio = r it is the elastic net
                  lmbda/n * [(1 - r)/2 * sum w^2 + r * sum |w|],
              so r = 0 is the book's L2 (network2: weight decay eta*lmbda/n per step, n = training-set
              size) and r = 1 is L1, whose step eta*lmbda/n * sgn(w) has sgn(0) = 0.
  dropout     `masks(shapes, rng)` multiplies each layer's input during one training mini-batch:
              p drops hidden units, p_input drops input pixels. Inverted dropout (the default) keeps
              a unit with probability 1-p and scales it by 1/(1-p), so evaluation uses the network
              unchanged; network3's convention (inverted: false) keeps without rescaling and at
              evaluation scales each layer's input by 1-p (`eval_masks`), as the book's chapter 6 did.
  max_norm    `constrain(w)` after each step rescales every unit's incoming weight vector (a row
              of w) to norm <= max_norm: projected gradient descent, the usual companion of dropout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

__all__ = ["L2", "NoPenalty", "Regularizer"]

Masks = list[np.ndarray | float | None]


@dataclass(frozen=True, repr=False)
class Regularizer:
    """Penalty (L2, L1, elastic net), dropout and a max-norm constraint; all off by default."""

    lmbda: float = 0.0
    l1_ratio: float = 0.0
    p: float = 0.0
    p_input: float = 0.0
    inverted: bool = True
    max_norm: float | None = None

    def __post_init__(self) -> None:
        # np.all / np.any: in a population (hpexp.nn.population) a field may hold one value per member.
        if not np.all(np.asarray(self.lmbda) >= 0):
            raise ValueError(f"regularizer.lmbda must be >= 0, got {self.lmbda}")
        if not np.all((np.asarray(self.l1_ratio) >= 0) & (np.asarray(self.l1_ratio) <= 1)):
            raise ValueError(f"regularizer.l1_ratio must be in [0, 1] (0: L2, 1: L1), got {self.l1_ratio}")
        for name in ("p", "p_input"):
            value = np.asarray(getattr(self, name))
            if not np.all((value >= 0) & (value < 1)):
                raise ValueError(
                    f"regularizer.{name} (dropout probability) must be in [0, 1), got {getattr(self, name)}"
                )
        if self.max_norm is not None and not np.all(np.asarray(self.max_norm) > 0):
            raise ValueError(f"regularizer.max_norm must be > 0 or null (off), got {self.max_norm}")
        # Decided once here, not per mini-batch: which terms of the penalty and which dropout layers
        # are on (private, not fields: `fields()`, repr and == see only the hyperparameters).
        r = np.asarray(self.l1_ratio)
        object.__setattr__(self, "_with_l2", bool(np.any(r < 1.0)))
        object.__setattr__(self, "_with_l1", bool(np.any(r > 0.0)))
        object.__setattr__(
            self, "_drops", (bool(np.any(np.asarray(self.p_input) > 0)), bool(np.any(np.asarray(self.p) > 0)))
        )
        object.__setattr__(self, "_penalized", bool(np.any(np.asarray(self.lmbda) != 0.0)))

    def __repr__(self) -> str:
        """Only what differs from no regularization, e.g. `Regularizer(lmbda=5.0, p=0.5)`."""
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if np.any(np.asarray(getattr(self, f.name) != f.default))
        ]
        return f"Regularizer({', '.join(changed)})"

    # --- which parts are on: the training loop skips the others entirely ---

    @property
    def penalized(self) -> bool:
        return self._penalized  # type: ignore[attr-defined]

    @property
    def dropout(self) -> bool:
        return any(self._drops)  # type: ignore[attr-defined]

    # --- penalty ---

    def value(self, w: np.ndarray, n: int) -> np.ndarray:
        """lmbda/n * [(1 - r)/2 sum w^2 + r sum |w|] over one weight array (per population member)."""
        r, axes = self.l1_ratio, (-2, -1)
        total = np.zeros((*w.shape[:-2], 1, 1))  # keepdims, so per-member (K, 1, 1) fields broadcast
        if self._with_l2:  # type: ignore[attr-defined]
            total = total + 0.5 * (1.0 - r) * np.sum(w * w, axis=axes, keepdims=True)
        if self._with_l1:  # type: ignore[attr-defined]
            total = total + r * np.sum(np.abs(w), axis=axes, keepdims=True)
        return (self.lmbda / n * total).reshape(w.shape[:-2])

    def grad(self, w: np.ndarray, n: int) -> np.ndarray:
        """lmbda/n * [(1 - r) w + r sgn(w)], with sgn(0) = 0 (add_grad at eta = 1, into zeros)."""
        g = np.zeros_like(w)
        if add := self.add_grad(1.0, n):
            add(w, g)
        return g

    def weight_decay(self, eta: float | np.ndarray, n: int) -> float | np.ndarray | None:
        """The L2 term's step as network2 takes it: the factor 1 - eta lmbda (1 - r)/n multiplying
        the weights (None without an L2 term). For plain SGD, whose step is linear in the gradient,
        this is the same step as adding eta lmbda (1 - r)/n w to the gradient, in one pass over the
        weights instead of two over the gradient; the optimizer applies it (SGD.step's `decay`)."""
        if not (self.penalized and self._with_l2):  # type: ignore[attr-defined]
            return None
        return 1.0 - eta * self.lmbda * (1.0 - self.l1_ratio) / n

    def add_grad(
        self, eta: float | np.ndarray, n: int, l2: bool = True
    ) -> Callable[[np.ndarray, np.ndarray], None] | None:
        """A function (w, g) -> None adding eta * grad(w, n) to the eta-scaled gradient g in place,
        without the L2 term if not `l2` (then taken as weight_decay); None if it would add nothing.
        Its constants are worked out here, once per epoch, not per mini-batch."""
        r = self.l1_ratio
        l1, l2_scale = eta * self.lmbda * r / n, eta * self.lmbda * (1.0 - r) / n
        with_l1, with_l2 = self._with_l1, self._with_l2 and l2  # type: ignore[attr-defined]
        if not (self.penalized and (with_l1 or with_l2)):
            return None

        def add(w: np.ndarray, g: np.ndarray) -> None:
            if with_l1:
                g += l1 * np.sign(w)
            if with_l2:
                g += l2_scale * w

        return add

    # --- dropout ---

    def _drop(self, layer: int) -> float:
        return self.p_input if layer == 0 else self.p

    def masks(self, shapes: Sequence[tuple[int, ...]], rng: np.random.Generator, dtype: np.dtype) -> Masks:
        """One training mini-batch's multipliers of each layer's input (shape (..., m, n_in)), or None."""
        out: Masks = []
        for layer, shape in enumerate(shapes):
            if not self._drops[min(layer, 1)]:  # type: ignore[attr-defined]
                out.append(None)
                continue
            p = self._drop(layer)
            keep = rng.random(shape, dtype=np.float32) >= p  # P(keep) = 1 - p
            scale = 1.0 / (1.0 - p) if self.inverted else 1.0
            out.append(np.multiply(keep, scale, dtype=dtype))
        return out

    def eval_masks(self, n_layers: int) -> Masks | None:
        """Evaluation multipliers: none for inverted dropout, the keep probability 1-p for network3's."""
        if self.inverted or not self.dropout:
            return None
        drops = [self._drop(i) for i in range(n_layers)]
        return [None if np.all(np.asarray(p) == 0.0) else 1.0 - p for p in drops]

    # --- max-norm ---

    def constrain(self, w: np.ndarray) -> None:
        """Rescale in place each row of w (a unit's incoming weights) whose norm exceeds max_norm."""
        if self.max_norm is None:
            return
        norms = np.sqrt(np.sum(w * w, axis=-1, keepdims=True))
        w *= np.minimum(1.0, self.max_norm / np.maximum(norms, np.finfo(w.dtype).tiny))


def NoPenalty() -> Regularizer:  # noqa: N802 - reads like the class it used to be
    """No regularization."""
    return Regularizer()


def L2(lmbda: float) -> Regularizer:  # noqa: N802
    """The book's L2 (network2): penalty lmbda/(2n) sum w^2, weight decay eta*lmbda/n per step."""
    return Regularizer(lmbda=lmbda)
