"""The training loop: `fit()` runs mini-batch SGD epoch by epoch and returns the history.

The history is a list of per-epoch records (dicts) with keys
`epoch` (1-based count of passes), `{split}_loss` (the data cost), `{split}_cost` (data cost plus
the regularizer's penalty, as the book's network2 reports it), `{split}_accuracy` for every monitored
split, then `eta`, `weight_norm` and `seconds`. One hook, `on_epoch(record)`, sees each record
and may return a `Stop` to end training (progress display, Optuna pruning and the like hang off it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpexp.data import Split
from hpexp.network import Network
from hpexp.optimizers import SGD
from hpexp.regularizers import NoPenalty, Regularizer
from hpexp.schedules import Constant, Schedule
from hpexp.stopping import Never, Rule

Record = dict[str, Any]
STREAMS = ("init", "shuffle", "dropout", "augment")
EVAL_CHUNK = 10_000


@dataclass(frozen=True)
class Stop:
    """Why training ended early; `status` is what the run reports (completed, pruned, diverged)."""

    reason: str
    status: str = "completed"


@dataclass
class Result:
    history: list[Record]
    status: str
    stop_reason: str
    best_epoch: int | None


def rng_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per purpose, so e.g. adding dropout does not change the init draw."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(STREAMS, children, strict=True)}


def penalty(network: Network, regularizer: Regularizer, n: int) -> np.ndarray:
    return sum((regularizer.value(w, n) for w in network.weights), np.zeros(()))


def evaluate(network: Network, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Mean data cost and accuracy (fraction correct) of the network on a split."""
    loss, correct = 0.0, 0
    for start in range(0, len(split), EVAL_CHUNK):
        x, y = split.x[start : start + EVAL_CHUNK], split.y[start : start + EVAL_CHUNK]
        z = network.logits(x)
        loss = loss + network.cost.value(z, y) * len(y)
        correct = correct + np.sum(np.argmax(z, axis=-1) == y, axis=-1)
    return loss / len(split), correct / len(split)


def weight_norm(network: Network) -> np.ndarray:
    return np.sqrt(sum(np.sum(w * w, axis=(-2, -1)) for w in network.weights))


def _record(
    epoch: int, network: Network, splits: Mapping[str, Split], extra: Record, pen: np.ndarray
) -> Record:
    record: Record = {"epoch": epoch}
    for name, split in splits.items():
        loss, accuracy = evaluate(network, split)
        record[f"{name}_loss"] = float(loss)
        record[f"{name}_cost"] = float(loss + pen)
        record[f"{name}_accuracy"] = float(accuracy)
    return record | extra


def _finite(network: Network, record: Record) -> bool:
    costs = [v for k, v in record.items() if k.endswith("_cost")]
    return bool(np.isfinite(costs).all()) and all(np.isfinite(w).all() for w in network.weights)


def train_epoch(
    network: Network,
    optimizer: SGD,
    regularizer: Regularizer,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    eta: float,
) -> None:
    """One pass over (x, y), already in this epoch's order, in mini-batches of `batch_size`."""
    n = len(y)
    params, grads = [network.flat_params], [network.flat_grads]
    weights, weight_grads = network.weights, network.weight_grads
    regularized = not isinstance(regularizer, NoPenalty)
    for start in range(0, n, batch_size):
        network.backprop(x[start : start + batch_size], y[start : start + batch_size])
        if regularized:
            for w, g in zip(weights, weight_grads, strict=True):
                g += regularizer.grad(w, n)
        optimizer.step(params, grads, eta)


def fit(
    network: Network,
    train: Split,
    monitor: Mapping[str, Split],
    *,
    optimizer: SGD,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
    regularizer: Regularizer | None = None,
    schedule: Schedule | None = None,
    stopping: Rule | None = None,
    on_epoch: Callable[[Record], Stop | None] | None = None,
    restore_best: bool = False,
) -> Result:
    """Train `network` on `train`, evaluating the `monitor` splits after every epoch.

    The mini-batch order is a fresh permutation from `rng` every epoch. Training ends after
    `epochs`, when the stopping rule or the hook says so, or when a cost or weight stops being finite
    (status `diverged`, history kept). With `restore_best`, the weights of the epoch with the best
    validation accuracy are put back at the end.
    """
    regularizer = regularizer or NoPenalty()
    schedule, stopping = schedule or Constant(), stopping or Never()
    history: list[Record] = []
    best_epoch, best_params = None, None
    status, reason = "completed", f"reached {epochs} epochs"
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        eta = schedule.eta(optimizer.eta, history)
        order = rng.permutation(len(train))
        train_epoch(network, optimizer, regularizer, train.x[order], train.y[order], batch_size, eta)
        pen = penalty(network, regularizer, len(train))
        extra = {"eta": eta, "weight_norm": float(weight_norm(network))}
        record = _record(epoch, network, monitor, extra, pen)
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        diverged = not _finite(network, record)
        if not diverged and "val_accuracy" in record:
            if best_epoch is None or record["val_accuracy"] > history[best_epoch - 1]["val_accuracy"]:
                best_epoch = epoch
                best_params = [p.copy() for p in network.params] if restore_best else None
        stop = on_epoch(record) if on_epoch else None
        if diverged:
            stop = Stop(f"cost or weights not finite at epoch {epoch}", "diverged")
        elif stop is None and (why := stopping.check(history)):
            stop = Stop(why)
        if stop:
            status, reason = stop.status, stop.reason
            break
    if best_params is not None and status != "diverged":
        for p, best in zip(network.params, best_params, strict=True):
            p[...] = best
    return Result(history, status, reason, best_epoch)
