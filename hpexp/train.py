"""The training loop: `fit()` runs mini-batch SGD epoch by epoch and returns the history.

The history is a list of per-epoch records (dicts) with keys
`epoch` (1-based count of passes), `{split}_loss` (the data cost), `{split}_cost` (data cost plus
the regularizer's penalty, as the book's network2 reports it), `{split}_accuracy` for every monitored
split, then `eta`, `weight_norm` and `seconds`. `{split}_cost` uses the training-set size n in the
penalty for every split (network2's total_cost used the evaluated set's size, which inflates the
test cost of regularized runs; see EXPERIMENTS.md section 6.7). One hook, `on_epoch(record)`, sees
each record and may return a `Stop` to end training (progress display, Optuna pruning and the like
hang off it); the stopping rule and the schedule may end training too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hpexp.augment import NoExpansion
from hpexp.data import Split
from hpexp.network import Masks, Network
from hpexp.optimizers import SGD
from hpexp.regularizers import Regularizer
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
    restored_epoch: int | None = None  # the epoch whose weights the network holds, if restored


class Expansion(Protocol):
    def expand(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


def rng_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per purpose, so e.g. adding dropout does not change the init draw."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(STREAMS, children, strict=True)}


def penalty(network: Network, regularizer: Regularizer, n: int) -> np.ndarray:
    return sum((regularizer.value(w, n) for w in network.weights), np.zeros(()))


def evaluate(network: Network, split: Split, masks: Masks | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean data cost and accuracy (fraction correct) of the network on a split; `masks` are the
    regularizer's evaluation multipliers (network3-style dropout), None for the plain network."""
    loss, correct = 0.0, 0
    for start in range(0, len(split), EVAL_CHUNK):
        x, y = split.x[start : start + EVAL_CHUNK], split.y[start : start + EVAL_CHUNK]
        z = network.logits(x, masks)
        loss = loss + network.cost.value(z, y) * len(y)
        correct = correct + np.sum(np.argmax(z, axis=-1) == y, axis=-1)
    return loss / len(split), correct / len(split)


def weight_norm(network: Network) -> np.ndarray:
    return np.sqrt(sum(np.sum(w * w, axis=(-2, -1)) for w in network.weights))


def _record(
    epoch: int,
    network: Network,
    splits: Mapping[str, Split],
    extra: Record,
    pen: np.ndarray,
    masks: Masks | None,
) -> Record:
    record: Record = {"epoch": epoch}
    for name, split in splits.items():
        loss, accuracy = evaluate(network, split, masks)
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
    rng: np.random.Generator | None = None,
) -> None:
    """One pass over (x, y), already in this epoch's order, in mini-batches of `batch_size`.

    Per mini-batch: backprop (through dropout masks drawn from `rng`, if dropout is on), add the
    penalty's gradient to the weights' (n = len(y), the book's training-set size), step, and apply
    the max-norm constraint. Parts that are off cost nothing: the plain loop is the book's.
    """
    n = len(y)
    params, grads = [network.flat_params], [network.flat_grads]
    if not (regularizer.penalized or regularizer.dropout or regularizer.max_norm is not None):
        for start in range(0, n, batch_size):
            network.backprop(x[start : start + batch_size], y[start : start + batch_size])
            optimizer.step(params, grads, eta)
        return
    if regularizer.dropout and rng is None:
        raise ValueError("dropout needs a random generator for its masks (the 'dropout' stream)")
    weights, weight_grads = network.weights, network.weight_grads
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        masks = None
        if regularizer.dropout:
            masks = regularizer.masks(network.input_shapes(len(yb)), rng, x.dtype)  # type: ignore[arg-type]
        network.backprop(xb, yb, masks)
        if regularizer.penalized:
            for w, g in zip(weights, weight_grads, strict=True):
                g += regularizer.grad(w, n)
        optimizer.step(params, grads, eta)
        if regularizer.max_norm is not None:
            for w in weights:
                regularizer.constrain(w)


def _is_better(record: Record, best: Record | None) -> bool:
    return best is None or record["val_accuracy"] > best["val_accuracy"]


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
    expansion: Expansion | None = None,
    dropout_rng: np.random.Generator | None = None,
    augment_rng: np.random.Generator | None = None,
) -> Result:
    """Train `network` on `train`, evaluating the `monitor` splits after every epoch.

    The training set is first expanded once (`expansion.expand`, e.g. the book's 5x one-pixel
    shifts); every epoch then takes a fresh permutation from `rng`, and `expansion.augment` may
    redraw the images from `augment_rng`. Dropout masks come from `dropout_rng`. (Both default to
    generators spawned from `rng`, which leaves `rng`'s own stream unchanged.)
    Training ends after `epochs`, when the hook, the stopping rule or the schedule says so, or when a
    cost or weight stops being finite (status `diverged`, history kept). With `restore_best`, the
    weights of the epoch with the best validation accuracy (the earliest, on ties) are put back.
    """
    regularizer = regularizer or Regularizer()
    schedule, stopping = schedule or Constant(), stopping or Never()
    expansion = expansion or NoExpansion()
    if dropout_rng is None or augment_rng is None:
        spawned = rng.spawn(2)
        dropout_rng, augment_rng = dropout_rng or spawned[0], augment_rng or spawned[1]
    x, y = expansion.expand(train.x, train.y)
    eval_masks = regularizer.eval_masks(len(network.layers))
    history: list[Record] = []
    best_epoch, best_params = None, None
    status, reason = "completed", f"reached {epochs} epochs"
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        eta = schedule.eta(optimizer.eta, history)
        order = rng.permutation(len(y))
        x_epoch = expansion.augment(x[order], augment_rng)
        train_epoch(network, optimizer, regularizer, x_epoch, y[order], batch_size, eta, dropout_rng)
        pen = penalty(network, regularizer, len(y))
        extra = {"eta": eta, "weight_norm": float(weight_norm(network))}
        record = _record(epoch, network, monitor, extra, pen, eval_masks)
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        diverged = not _finite(network, record)
        if not diverged and "val_accuracy" in record:
            if _is_better(record, history[best_epoch - 1] if best_epoch else None):
                best_epoch = epoch
                best_params = network.flat_params.copy() if restore_best else None
        stop = on_epoch(record) if on_epoch else None
        if diverged:
            stop = Stop(f"cost or weights not finite at epoch {epoch}", "diverged")
        elif stop is None and (why := stopping.check(history) or schedule.check(history)):
            stop = Stop(why)
        if stop:
            status, reason = stop.status, stop.reason
            break
    restored = None
    if best_params is not None and status != "diverged":
        network.flat_params[...] = best_params
        restored = best_epoch
    return Result(history, status, reason, best_epoch, restored)
