"""Early-stopping rules: `check(history)` returns why training should stop now, or None.

Rules are pure functions of the history (a list of per-epoch records), so they can be tested on
hand-made histories and re-evaluated from a saved history.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Record = dict[str, Any]


class Rule(Protocol):
    def check(self, history: Sequence[Record]) -> str | None: ...


@dataclass(frozen=True)
class Never:
    """Train for the configured number of epochs (the book never stops early)."""

    def check(self, history: Sequence[Record]) -> str | None:
        return None
