"""Plans for population-based training: what changes between epochs, and the record of it.

A plan holds each member's current hyperparameters (`values`: dotted config keys -> value), each
member's schedule as its lineage lived it (`schedules[k]`: entries `{"epoch": first epoch,
"values": {...}}`; a member that copies a parent after epoch t takes the parent's entries up to t,
then its own from t + 1) and the lineage (one event per exploit: epoch, member, parent, the new
values, both scores). `Truncation` is PBT's truncation selection (Jaderberg et al. 2017, section
3.1): every `interval` epochs from epoch `warmup` on, the bottom `fraction` of the members by their
latest score copies a member of the top `fraction` drawn at random, then `explore` perturbs or
resamples the copied values. `Replay` follows one recorded schedule and copies nothing: a member
trained alone, or K fresh seeds, with a schedule replayed go through the epochs the recorded member
did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Plan", "Replay", "Truncation", "lineage_of"]

Record = dict[str, Any]
Values = dict[str, Any]


@dataclass
class Plan:
    """The bookkeeping shared by every plan; `decide` is what a plan adds."""

    values: list[Values]
    schedules: list[list[Record]] = field(default_factory=list)
    lineage: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.schedules:
            self.schedules = [[{"epoch": 1, "values": dict(v)}] for v in self.values]

    def decide(self, epoch: int, histories: Sequence[Sequence[Record]]) -> list[tuple[int, int, Values]]:
        return []

    def record(
        self, epoch: int, member: int, parent: int, values: Values, scores: tuple[float, float]
    ) -> None:
        """Member takes parent's weights and history (parent == member: only new values) after `epoch`."""
        inherited = [e for e in self.schedules[parent] if e["epoch"] <= epoch]
        self.schedules[member] = [*inherited, {"epoch": epoch + 1, "values": dict(values)}]
        self.values[member] = dict(values)
        if member != parent:
            self.lineage.append(
                {
                    "epoch": epoch,
                    "member": member,
                    "parent": parent,
                    "values": dict(values),
                    "score": scores[0],
                    "parent_score": scores[1],
                }
            )

    def state(self) -> Record:
        return {"values": self.values, "schedules": self.schedules, "lineage": self.lineage}

    def restore(self, state: Record) -> None:
        self.values, self.schedules, self.lineage = state["values"], state["schedules"], state["lineage"]


def _score(history: Sequence[Record], metric: str, sign: float) -> float:
    """The member's latest score, larger is better; a non-finite one is the worst."""
    value = history[-1].get(metric, math.nan) if history else math.nan
    return sign * value if math.isfinite(value) else -math.inf


@dataclass
class Truncation(Plan):
    """PBT's exploit (truncation selection) and explore, every `interval` epochs from epoch `warmup`
    on (before it, short-horizon scores mislead: a setting that fits fast early, such as a small
    lmbda before a learning-rate cut, can end worse); a member whose cost stops being finite is
    replaced at once (by a top member, explored)."""

    interval: int = 4
    fraction: float = 0.25
    warmup: int = 0
    explore: Callable[[Values, np.random.Generator], Values] = lambda v, rng: dict(v)
    seed: int = 0
    metric: str = "val_accuracy"
    maximize: bool = True
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.interval, int) and self.interval >= 1):
            raise ValueError(f"interval must be an integer >= 1 (epochs), got {self.interval!r}")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"warmup must be an integer >= 0 (epochs), got {self.warmup!r}")
        if not 0 < self.fraction <= 0.5:
            raise ValueError(f"fraction must be in (0, 0.5], got {self.fraction!r}")
        self.rng = np.random.default_rng(self.seed)

    def decide(self, epoch: int, histories: Sequence[Sequence[Record]]) -> list[tuple[int, int, Values]]:
        sign = 1.0 if self.maximize else -1.0
        scores = [_score(h, self.metric, sign) for h in histories]
        order = sorted(range(len(scores)), key=lambda k: (scores[k], -k))  # worst first; ties: later first
        n = max(1, round(self.fraction * len(scores)))
        top = order[-n:]
        if epoch % self.interval == 0 and epoch >= self.warmup:
            bottom = order[:n]
        else:  # between exploits, only members that diverged
            bottom = [k for k in order[:-n] if scores[k] == -math.inf]
        changes = []
        for k in bottom:
            parent = int(top[self.rng.integers(len(top))])
            values = self.explore(dict(self.values[parent]), self.rng)
            self.record(epoch, k, parent, values, (scores[k] * sign, scores[parent] * sign))
            changes.append((k, parent, values))
        return changes

    def state(self) -> Record:
        return {**super().state(), "rng": self.rng.bit_generator.state}

    def restore(self, state: Record) -> None:
        super().restore(state)
        self.rng.bit_generator.state = state["rng"]


@dataclass
class Replay(Plan):
    """Every member follows `schedule` (a recorded member's `schedules[k]`): at the end of epoch
    t, the entry that starts at t + 1 becomes its values. No weights are copied."""

    schedule: list[Record] = field(default_factory=list)

    def decide(self, epoch: int, histories: Sequence[Sequence[Record]]) -> list[tuple[int, int, Values]]:
        changes = []
        for entry in self.schedule:
            if entry["epoch"] == epoch + 1:
                for k in range(len(self.values)):
                    self.record(epoch, k, k, entry["values"], (math.nan, math.nan))
                    changes.append((k, k, dict(entry["values"])))
        return changes


def lineage_of(member: int, lineage: Sequence[Record]) -> list[tuple[int, int]]:
    """The member's ancestry as (from epoch, member slot) segments, latest last: whose weights it
    carried in each stretch of epochs (a slot that copies a parent after epoch t restarts there)."""
    segments: list[tuple[int, int]] = []
    slot, until = member, math.inf
    for event in sorted(lineage, key=lambda e: -e["epoch"]):
        if event["member"] == slot and event["epoch"] < until:
            segments.append((event["epoch"] + 1, slot))
            slot, until = event["parent"], event["epoch"] + 1
    segments.append((1, slot))
    return segments[::-1]
