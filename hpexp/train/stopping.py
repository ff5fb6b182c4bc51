"""Early-stopping rules: `check(history)` returns why training should stop now, or None.

Rules are pure functions of the history (a list of per-epoch records), so they can be tested on
hand-made histories and re-evaluated from a saved history.csv. `requires` names the record keys a
rule reads, so a run can check they are monitored before training starts.

Prechelt's criteria ("Early Stopping - But When?", 1998) use the validation error E_va: the
`metric` itself for a cost or loss, 1 - accuracy for an accuracy. With E_opt(t) the lowest E_va up
to epoch t, the generalization loss is GL(t) = 100 (E_va(t) / E_opt(t) - 1); training progress over
the strip of the last k epochs is P_k(t) = 1000 (sum E_tr / (k min E_tr) - 1).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "GeneralizationLoss",
    "MaxEpochs",
    "Never",
    "NoImprovement",
    "ProgressQuotient",
    "Rule",
    "UpStrips",
    "error",
    "generalization_loss",
    "improvements",
    "stalled",
    "training_progress",
]

Record = dict[str, Any]
STALL_EVALUATIONS, STALL_MARGIN = 3, 0.2  # evaluations; fraction of the chance accuracy
METRICS = ("val_accuracy", "val_loss", "val_cost", "train_accuracy", "train_loss", "train_cost")


class Rule(Protocol):
    @property
    def requires(self) -> tuple[str, ...]: ...

    def check(self, history: Sequence[Record]) -> str | None: ...


def _check_metric(metric: str, field: str = "metric") -> None:
    if metric not in METRICS:
        raise ValueError(f"stopping.{field} must be one of {list(METRICS)}, got {metric!r}")


def error(record: Record, metric: str) -> float:
    """The quantity to minimize: 1 - accuracy for accuracies, the value itself for costs."""
    return 1.0 - record[metric] if metric.endswith("accuracy") else record[metric]


def improvements(history: Sequence[Record], metric: str, min_delta: float = 0.0) -> Iterator[bool]:
    """For each epoch, whether `metric` beat the best before it by more than min_delta."""
    best = None
    for record in history:
        e = error(record, metric)
        improved = best is None or e < best - min_delta
        if improved:
            best = e
        yield improved


def _positive_int(value: Any, name: str) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"stopping.{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class Never:
    """Train for the configured number of epochs (the book never stops early)."""

    requires = ()

    def check(self, history: Sequence[Record]) -> str | None:
        return None


@dataclass(frozen=True)
class MaxEpochs:
    """Stop after `epochs` epochs (a cap independent of train.epochs, e.g. for a study's trials)."""

    epochs: int

    requires = ()

    def __post_init__(self) -> None:
        _positive_int(self.epochs, "epochs")

    def check(self, history: Sequence[Record]) -> str | None:
        return f"reached max_epochs={self.epochs}" if len(history) >= self.epochs else None


@dataclass(frozen=True)
class NoImprovement:
    """The book's no-improvement-in-n: stop when `metric` has not improved on its best by more than
    `min_delta` for `patience` epochs in a row (ch3: n = 10 to explore, 20 or 50 to fine-tune)."""

    patience: int = 10
    metric: str = "val_accuracy"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        _positive_int(self.patience, "patience")
        _check_metric(self.metric)
        if not self.min_delta >= 0:
            raise ValueError(f"stopping.min_delta must be >= 0, got {self.min_delta}")

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.metric,)

    def check(self, history: Sequence[Record]) -> str | None:
        since = 0
        for improved in improvements(history, self.metric, self.min_delta):
            since = 0 if improved else since + 1
        if since >= self.patience:
            return f"no improvement of {self.metric} in {self.patience} epochs"
        return None


def generalization_loss(history: Sequence[Record], metric: str) -> float:
    """GL(t) = 100 (E_va(t) / E_opt(t) - 1) at the last epoch of `history`."""
    errors = [error(r, metric) for r in history]
    best = min(errors)
    if best <= 0:
        return 0.0 if errors[-1] <= 0 else float("inf")
    return 100.0 * (errors[-1] / best - 1.0)


def training_progress(history: Sequence[Record], metric: str, k: int) -> float:
    """P_k(t) = 1000 (mean of E_tr over the last k epochs / their minimum - 1)."""
    strip = [error(r, metric) for r in history[-k:]]
    low = min(strip)
    return float("inf") if low <= 0 else 1000.0 * (sum(strip) / (k * low) - 1.0)


@dataclass(frozen=True)
class GeneralizationLoss:
    """Prechelt's GL_alpha: stop after the first epoch with GL(t) > alpha (percent)."""

    alpha: float = 5.0
    metric: str = "val_loss"

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"stopping.alpha must be > 0 (percent), got {self.alpha}")
        _check_metric(self.metric)

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.metric,)

    def check(self, history: Sequence[Record]) -> str | None:
        if not history:
            return None
        gl = generalization_loss(history, self.metric)
        return f"GL={gl:.3g} > alpha={self.alpha} on {self.metric}" if gl > self.alpha else None


@dataclass(frozen=True)
class ProgressQuotient:
    """Prechelt's PQ_alpha: at the end of each strip of k epochs, stop if GL(t) / P_k(t) > alpha,
    i.e. the validation error has grown much while the training error barely moves any more."""

    alpha: float = 0.5
    k: int = 5
    metric: str = "val_loss"
    train_metric: str = "train_loss"

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"stopping.alpha must be > 0, got {self.alpha}")
        _positive_int(self.k, "k")
        _check_metric(self.metric)
        _check_metric(self.train_metric, "train_metric")

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.metric, self.train_metric)

    def check(self, history: Sequence[Record]) -> str | None:
        if not history or len(history) % self.k:
            return None
        gl = generalization_loss(history, self.metric)
        progress = training_progress(history, self.train_metric, self.k)
        pq = 0.0 if gl == 0 else gl / progress if progress > 0 else float("inf")
        return f"PQ=GL/P_{self.k}={pq:.3g} > alpha={self.alpha}" if pq > self.alpha else None


@dataclass(frozen=True)
class UpStrips:
    """Prechelt's UP_s: stop when the validation error, measured at the end of each strip of k
    epochs, has gone up in s successive strips."""

    s: int = 3
    k: int = 5
    metric: str = "val_loss"

    def __post_init__(self) -> None:
        _positive_int(self.s, "s")
        _positive_int(self.k, "k")
        _check_metric(self.metric)

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.metric,)

    def check(self, history: Sequence[Record]) -> str | None:
        t = len(history)
        if t % self.k or t < (self.s + 1) * self.k:
            return None
        ends = [error(history[t - 1 - i * self.k], self.metric) for i in range(self.s + 1)]
        if all(ends[i] > ends[i + 1] for i in range(self.s)):
            return f"{self.metric} went up in {self.s} successive strips of {self.k} epochs"
        return None


def stalled(history: Sequence[Record], chance: Mapping[str, float], margin: float) -> str | None:
    """Why a run learned nothing, or None: its accuracy (validation, else training, else test) was
    at most `chance[key] + margin` at each of the last STALL_EVALUATIONS evaluations. `chance[key]`
    is what a constant guess scores on that split (1/classes, or the most common class's share if
    larger: a 200-image split is rarely balanced); the runner's margin is STALL_MARGIN / classes."""
    last = history[-STALL_EVALUATIONS:]
    splits = ("val", "train", "test")
    key = next((f"{s}_accuracy" for s in splits if last and f"{s}_accuracy" in last[-1]), None)
    if key is None or key not in chance or len(last) < STALL_EVALUATIONS or any(key not in r for r in last):
        return None
    if any(r[key] > chance[key] + margin for r in last):
        return None
    values = ", ".join(f"{r[key]:.4f}" for r in last)
    return (
        f"stuck at chance: {key} at most {chance[key]:.3g} (a constant guess) + {margin:.3g} at each of "
        f"the last {len(last)} evaluations ({values})"
    )
