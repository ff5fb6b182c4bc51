"""Learning-rate schedules: `eta(eta0, history)` gives the learning rate for the next epoch.

A schedule is a pure function of the starting rate and the history so far (a list of per-epoch
records), so a run can be stopped and its schedule state re-derived from the records alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Record = dict[str, Any]


class Schedule(Protocol):
    def eta(self, eta0: float, history: Sequence[Record]) -> float: ...


@dataclass(frozen=True)
class Constant:
    """eta stays at its starting value (the book's network.py and network2.py)."""

    def eta(self, eta0: float, history: Sequence[Record]) -> float:
        return eta0
