"""Learning-rate schedules: `eta(eta0, history)` gives the learning rate for the next epoch.

A schedule is a pure function of the starting rate and the history so far (a list of per-epoch
records), so a run can be stopped and its schedule state re-derived from the records alone.
`check(history)` says why the schedule ends training (the book's rule stops once eta has fallen
far enough), or None; `requires` names the record keys it reads, so a run can check that they
are monitored before training starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hpexp.train.stopping import improvements

__all__ = ["Book", "Constant", "Exponential", "Schedule", "StepDecay"]

Record = dict[str, Any]


class Schedule(Protocol):
    @property
    def requires(self) -> tuple[str, ...]: ...

    def eta(self, eta0: float, history: Sequence[Record]) -> float: ...

    def check(self, history: Sequence[Record]) -> str | None: ...


@dataclass(frozen=True)
class Constant:
    """eta stays at its starting value (the book's network.py and network2.py)."""

    requires = ()

    def eta(self, eta0: float, history: Sequence[Record]) -> float:
        return eta0

    def check(self, history: Sequence[Record]) -> str | None:
        return None


@dataclass(frozen=True)
class StepDecay:
    """eta = eta0 * factor^floor(t / step) after t epochs: e.g. divide by 10 every 20 epochs."""

    step: int = 20
    factor: float = 0.1

    requires = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.step, int) and self.step >= 1):
            raise ValueError(f"schedule.step must be an integer >= 1 (epochs), got {self.step!r}")
        if not 0.0 < self.factor <= 1.0:
            raise ValueError(f"schedule.factor must be in (0, 1], got {self.factor}")

    def eta(self, eta0: float, history: Sequence[Record]) -> float:
        return eta0 * self.factor ** (len(history) // self.step)

    def check(self, history: Sequence[Record]) -> str | None:
        return None


@dataclass(frozen=True)
class Exponential:
    """eta = eta0 * decay^t after t epochs."""

    decay: float = 0.95

    requires = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"schedule.decay must be in (0, 1], got {self.decay}")

    def eta(self, eta0: float, history: Sequence[Record]) -> float:
        return eta0 * self.decay ** len(history)

    def check(self, history: Sequence[Record]) -> str | None:
        return None


@dataclass(frozen=True)
class Book:
    """The book's chapter 3 rule: multiply eta by `factor` each time no-improvement-in-n fires on
    `metric`, and end training when eta would reach `floor` times its start (1/2 and 1/128 in the
    book's exercise, so training ends on the 7th firing).

    After a firing, the count of epochs without improvement starts again from zero (the new rate
    gets its own n epochs); the best value so far is kept.
    """

    n: int = 10
    factor: float = 0.5
    floor: float = 1 / 128
    metric: str = "val_accuracy"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and self.n >= 1):
            raise ValueError(
                f"schedule.n (epochs without improvement) must be an integer >= 1, got {self.n!r}"
            )
        if not 0.0 < self.factor < 1.0:
            raise ValueError(
                f"schedule.factor must be in (0, 1), else eta never falls to the floor; got {self.factor}"
            )
        if not 0.0 < self.floor < 1.0:
            raise ValueError(
                f"schedule.floor must be in (0, 1) (a fraction of the starting eta), got {self.floor}"
            )

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.metric,)

    @property
    def firings_to_stop(self) -> int:
        """How many reductions bring eta to the floor: log(floor) / log(factor), rounded up."""
        return math.ceil(math.log(self.floor) / math.log(self.factor) - 1e-9)

    def firings(self, history: Sequence[Record]) -> int:
        count, since = 0, 0
        for improved in improvements(history, self.metric, self.min_delta):
            since = 0 if improved else since + 1
            if since >= self.n:
                count, since = count + 1, 0
        return count

    def eta(self, eta0: float, history: Sequence[Record]) -> float:
        return eta0 * self.factor ** self.firings(history)

    def check(self, history: Sequence[Record]) -> str | None:
        k = self.firings(history)
        if k >= self.firings_to_stop:
            return (
                f"eta reached {self.factor}^{k} = {self.factor**k:.4g} of its start (floor {self.floor:.4g}) "
                f"after no-improvement-in-{self.n} on {self.metric} fired {k} times"
            )
        return None
