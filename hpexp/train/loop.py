"""The training loop: `fit()` runs mini-batch SGD epoch by epoch and returns the history.

The history is a list of per-epoch records (dicts) with keys
`epoch` (1-based count of passes), `{split}_loss` (the data cost), `{split}_cost` (data cost plus
the regularizer's penalty, as the book's network2 reports it), `{split}_accuracy` for every monitored
split, then `eta`, `weight_norm` and `seconds`. `{split}_cost` uses the training-set size n in the
penalty for every split (network2's total_cost used the evaluated set's size, which inflates the
test cost of regularized runs; see docs/book.md section 6.7). One hook, `on_epoch(record)`, sees
each record and may return a `Stop` to end training (progress display, Optuna pruning and the like
hang off it); the stopping rule and the schedule may end training too.

A thread that no signal reaches (Python delivers them to the main thread; a Dask task runs in a
worker's thread) is stopped with `request_stop`: it raises KeyboardInterrupt at its next mini-batch
or evaluation chunk, as Ctrl-C would, but only there, where nothing is half-done (not inside a
storage call, a lock or a file write, as an exception injected between any two bytecodes could).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from hpexp.data.augment import NoExpansion
from hpexp.data.mnist import Split
from hpexp.nn.network import Masks, Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.population import member_params, select, stack_fields
from hpexp.nn.regularizers import Regularizer
from hpexp.train import allocator, batching, ways
from hpexp.train.checkpoint import State
from hpexp.train.schedules import Constant, Schedule
from hpexp.train.step import mini_batch_steps, split
from hpexp.train.stopping import STALL_MARGIN, Never, Rule, stalled

__all__ = [
    "Expansion",
    "Member",
    "Result",
    "Stop",
    "epoch_record",
    "evaluate",
    "fit",
    "fit_population",
    "penalty",
    "rng_streams",
    "train_epoch",
    "weight_norm",
    "request_stop",
    "check_stop",
    "clear_stop",
]

Record = dict[str, Any]
STREAMS = ("init", "shuffle", "dropout", "augment")
EVAL_CHUNK = 2_000  # rows per evaluation product: small enough for the activations to stay in cache
_stop_requested: set[int] = set()  # threads asked to stop (`request_stop`)


def request_stop(thread: int) -> None:
    """Ask the thread (`threading.get_ident()`) to stop: its next `check_stop` raises
    KeyboardInterrupt, and so every following one until `clear_stop`."""
    _stop_requested.add(thread)


def clear_stop(thread: int) -> None:
    _stop_requested.discard(thread)


def check_stop() -> None:
    """Raise KeyboardInterrupt if this thread was asked to stop (`request_stop`). Training checks
    before each mini-batch and evaluation chunk; a loop around training checks between its runs."""
    if _stop_requested and threading.get_ident() in _stop_requested:
        raise KeyboardInterrupt


@dataclass(frozen=True)
class Stop:
    """Why training ended early; `status` is what the run reports (completed, pruned, diverged,
    stalled)."""

    reason: str
    status: str = "completed"


@dataclass
class Result:
    history: list[Record]
    status: str
    stop_reason: str
    best_epoch: int | None
    restored_epoch: int | None = None  # the epoch whose weights the network holds, if restored
    params: list[np.ndarray] = field(default_factory=list)  # the member's final parameters (copies)


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
    loss, correct = np.zeros(()), np.zeros(())  # per member in a population: shape (K,)
    for start in range(0, len(split), EVAL_CHUNK):
        check_stop()
        x, y = split.x[start : start + EVAL_CHUNK], split.y[start : start + EVAL_CHUNK]
        z = network.logits(x, masks)
        loss = loss + network.cost.value(z, y) * len(y)
        correct = correct + np.sum(np.argmax(z, axis=-1) == y, axis=-1)
    return loss / len(split), correct / len(split)


def weight_norm(network: Network) -> np.ndarray:
    return np.sqrt(sum(np.sum(w * w, axis=(-2, -1)) for w in network.weights))


def _batches(
    x: np.ndarray, y: np.ndarray, order: np.ndarray | None, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Mini-batches of (x, y) in order: slices when the data are already ordered, else gathered by
    `order` batch by batch (cheaper than permuting the whole set; a 2-D order gives each member of a
    population its own batch, shape (K, m, ...))."""
    if order is None:
        for start in range(0, len(y), batch_size):
            check_stop()
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    for start in range(0, order.shape[-1], batch_size):
        check_stop()
        index = order[..., start : start + batch_size]
        yield x.take(index, axis=0), y.take(index)


def train_epoch(
    network: Network,
    optimizer: SGD,
    regularizer: Regularizer,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    eta: float | np.ndarray,
    rng: np.random.Generator | None = None,
    order: np.ndarray | None = None,
    chunk: int | None = None,
    measured: dict[str, dict[str, float]] | None = None,
) -> None:
    """One pass over (x, y) in mini-batches of `batch_size`, in `order` if given (else as stored).

    Each mini-batch is one step of hpexp.train.step (n = training-set size, the book's convention
    for the penalty), through dropout masks drawn from `rng` if dropout is on; a population takes
    it in chunks of `chunk` members (None: all at once), with the same result whatever the chunk
    (to rounding for a chunk of one, which steps as one network). Dense and conv layers and their
    activations compute as the run's record `measured` says (hpexp.train.ways: dense_choices,
    conv_choices, activation_choices), else as this machine measured. The process's malloc keeps
    freed memory from then on (hpexp.train.allocator).
    """
    n = len(y) if order is None else order.shape[-1]
    if regularizer.dropout and rng is None:
        raise ValueError("dropout needs a random generator for its masks (the 'dropout' stream)")
    if network.lead and chunk is not None and chunk < network.lead[0] and not regularizer.dropout:
        # Chunk by chunk through the whole epoch: each keeps its weights in cache as a population
        # of its size alone would. (Dropout draws one mask per mini-batch for all members, so it
        # steps chunk by chunk within each mini-batch instead, to draw the same masks.)
        for rows, part, part_optimizer, part_regularizer, part_eta in split(
            network, optimizer, regularizer, eta, chunk
        ):
            part_order = order[rows] if order is not None and order.ndim == 2 else order
            if optimizer.plain:  # no state: train a copy laid out as a population of its size alone
                part = select(network, rows)
            part_args = (part_optimizer, part_regularizer, x, y, batch_size, part_eta, rng, part_order)
            train_epoch(part, *part_args, measured=measured)
            if optimizer.plain:
                for whole, trained in zip(network.params, part.params, strict=True):
                    whole[rows] = trained
        return
    allocator.keep_freed_memory()  # each step's large arrays: the heap's, not fresh pages each time
    shared_input = order is None or order.ndim == 1  # a population's members see the same mini-batches
    decay = optimizer.plain and regularizer.weight_decay(eta, n) is not None  # as the steps take it
    ways.dense_choices(network, batch_size, measured, shared_input=shared_input, decay=decay)  # where faster
    ways.conv_choices(network, batch_size, measured)
    ways.activation_choices(network, batch_size, measured)
    steps = mini_batch_steps(network, optimizer, regularizer, eta, n, chunk)
    shapes, dropping = network.input_shapes(batch_size), regularizer.dropout
    for xb, yb in _batches(x, y, order, batch_size):
        masks = None
        if dropping:
            if yb.shape[-1] != batch_size:
                shapes = network.input_shapes(yb.shape[-1])
            masks = regularizer.masks(shapes, rng, x.dtype)  # type: ignore[arg-type]
        for step in steps:
            step(xb, yb, masks)


@dataclass
class Member:
    """What one network of a population trains with: its own hyperparameters, rules and hook."""

    optimizer: SGD
    epochs: int
    regularizer: Regularizer = field(default_factory=Regularizer)
    schedule: Schedule = field(default_factory=Constant)
    stopping: Rule = field(default_factory=Never)
    on_epoch: Callable[[Record], Stop | None] | None = None
    restore_best: bool = False


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
    """Train one `network` on `train`, evaluating the `monitor` splits after every epoch.

    The training set is first expanded once (`expansion.expand`, e.g. the book's 5x one-pixel
    shifts); every epoch then takes a fresh permutation from `rng`, and `expansion.augment` may
    redraw the images from `augment_rng`. Dropout masks come from `dropout_rng`. (Both default to
    generators spawned from `rng`, which leaves `rng`'s own stream unchanged.)
    Training ends after `epochs`, when the hook, the stopping rule or the schedule says so, or when a
    cost or weight stops being finite (status `diverged`, history kept). A run whose accuracy ends
    at chance for its last evaluations ends `stalled` (see hpexp.train.stopping.stalled). With
    `restore_best`, the weights of the epoch with the best validation accuracy (the earliest, on
    ties) are put back. This is `fit_population` with one member.
    """
    member = Member(
        optimizer,
        epochs,
        regularizer or Regularizer(),
        schedule or Constant(),
        stopping or Never(),
        on_epoch,
        restore_best,
    )
    (result,) = fit_population(
        network,
        train,
        monitor,
        [member],
        batch_size=batch_size,
        rng=rng,
        expansion=expansion,
        dropout_rng=dropout_rng,
        augment_rng=augment_rng,
    )
    return result


def _stacked(
    members: Sequence[Member], active: Sequence[int], population: bool, dtype: Any
) -> tuple[SGD, Regularizer]:
    """The optimizer and regularizer of the active members as one object each (see population)."""
    if not population:
        return members[active[0]].optimizer, members[active[0]].regularizer
    optimizer = stack_fields([members[k].optimizer for k in active], (1, 1), dtype)  # per layer (K, n, n)
    regularizer = stack_fields([members[k].regularizer for k in active], (1, 1), dtype)
    return optimizer, regularizer


def _constant_guess(y: np.ndarray, classes: int) -> float:
    """The accuracy of the best constant guess on labels y (1/classes if they are balanced)."""
    return max(1 / classes, float(np.bincount(y, minlength=classes).max() / max(len(y), 1)))


def _row(value: np.ndarray, row: int | None) -> float:
    return float(value if row is None else value[row])


def epoch_record(
    epoch: int,
    evaluated: Mapping[str, tuple[np.ndarray, np.ndarray]],
    pen: np.ndarray,
    norms: np.ndarray,
    eta: float,
    seconds: float,
    row: int | None,
) -> Record:
    """One member's record of an evaluated epoch: each monitored split's loss, cost (loss plus the
    regularizer's penalty) and accuracy, its eta, weight norm and share of the time. `row` is the
    member's row in a population's arrays (None for a single network)."""
    record: Record = {"epoch": epoch}
    for name, (loss, accuracy) in evaluated.items():
        record[f"{name}_loss"] = _row(loss, row)
        record[f"{name}_cost"] = _row(loss + pen, row)
        record[f"{name}_accuracy"] = _row(accuracy, row)
    return record | {"eta": eta, "weight_norm": _row(norms, row), "seconds": seconds}


def fit_population(
    network: Network,
    train: Split,
    monitor: Mapping[str, Split],
    members: Sequence[Member],
    *,
    batch_size: int,
    rng: np.random.Generator | Sequence[np.random.Generator],
    expansion: Expansion | None = None,
    dropout_rng: np.random.Generator | None = None,
    augment_rng: np.random.Generator | None = None,
    eval_every: int = 1,
    shuffle: bool = True,
    chunk: int | None | Literal["auto"] = "auto",
    checkpoint: Callable[[State], None] | None = None,
    resume: State | None = None,
) -> list[Result]:
    """The one training loop: K members (a population network with a leading axis K, see
    hpexp.nn.population, or a plain network for K = 1) trained side by side, epoch by epoch.

    Each member keeps its own history, best epoch, stopping rule, schedule and hook, exactly as if
    trained alone. One generator `rng` gives every member the same mini-batch order (common random
    numbers); a sequence of K generators gives each its own. A member that stops (rule, hook,
    epochs, divergence) is taken out of the population at the end of that epoch, so it neither
    changes nor costs anything afterwards; its final (or best, with restore_best) parameters are in
    its Result. `seconds` in a member's records is its share of the population's time since its
    previous record. With `eval_every` k > 1 the monitored splits are evaluated, and a record made,
    only every k-th epoch and at each member's last (for runs of thousands of tiny epochs); stopping
    rules, schedules and hooks then see one record per evaluation. With `shuffle` false the
    mini-batches follow the stored order every epoch (the book's network3). A population takes
    each step in chunks of `chunk` members (None: all at once; "auto": the fastest on this machine,
    hpexp.train.batching), which changes the speed and, for a chunk of one, the rounding; the run
    keeps the measurements it chose by, so a resumed run takes the same chunks.

    `checkpoint(state)` is called before the first epoch and after every evaluated one (see
    hpexp.train.checkpoint); `resume=state` goes on from such a state, given the same members,
    data and freshly made generators: the results are those of a run that never stopped.
    """
    population = bool(network.lead)
    if (network.lead[0] if population else 1) != len(members):
        raise ValueError(f"{len(members)} members for a network of population shape {network.lead}")
    dtype = network.params[0].dtype
    expansion = expansion or NoExpansion()
    if not population and not isinstance(rng, np.random.Generator):
        (rng,) = rng  # one member's own order is simply its order
    shuffle_rng = rng if isinstance(rng, np.random.Generator) else None
    if dropout_rng is None or augment_rng is None:
        spawned = (shuffle_rng or rng[0]).spawn(2)  # type: ignore[index]
        dropout_rng, augment_rng = dropout_rng or spawned[0], augment_rng or spawned[1]
    x, y = expansion.expand(train.x, train.y)
    classes = network.params[-1].shape[-1]  # the output layer's biases: one per class
    chance = {f"{name}_accuracy": _constant_guess(split.y, classes) for name, split in monitor.items()}
    histories: list[list[Record]] = [[] for _ in members]
    best: list[Record | None] = [None] * len(members)  # each member's best-validation record
    best_params: list[list[np.ndarray] | None] = [None] * len(members)
    results: list[Result | None] = [None] * len(members)
    active = list(range(len(members)))
    optimizer, regularizer = _stacked(members, active, population, dtype)
    streams = {"shuffle": shuffle_rng or list(rng), "dropout": dropout_rng, "augment": augment_rng}  # type: ignore[arg-type]
    measured = dict(resume.measured) if resume else {}  # the tables the run's choices come from

    def state(epoch: int) -> State:
        ended = {k: _ended(r) for k, r in enumerate(results) if r is not None}
        rngs = {name: _rng_state(g) for name, g in streams.items()}
        return State(
            epoch,
            active,
            network.params,
            optimizer._velocity,
            histories,
            best,
            best_params,
            ended,
            rngs,
            measured=measured,
        )

    first = 1
    if resume is not None:
        first, active = resume.epoch + 1, list(resume.active)
        histories, best, best_params = resume.histories, resume.best, resume.best_params
        for k, saved_result in resume.ended.items():
            results[k] = Result(histories[k], **saved_result)
        if population and len(active) < len(members):
            network = select(network, active)
        for p, saved in zip(network.params, resume.params, strict=True):
            p[...] = saved
        optimizer, regularizer = _stacked(members, active, population, dtype)
        optimizer._velocity = [v.copy() for v in resume.velocity]
        for name, g in streams.items():
            _set_rng_state(g, resume.rngs[name])
    elif checkpoint:
        checkpoint(state(0))
    start = time.perf_counter()
    for epoch in range(first, max(m.epochs for m in members) + 1):
        etas = [members[k].schedule.eta(members[k].optimizer.eta, histories[k]) for k in active]
        eta = np.asarray(etas, dtype).reshape(-1, 1, 1) if population else etas[0]
        if not shuffle:
            order = None
        elif shuffle_rng is not None:
            order = shuffle_rng.permutation(len(y))
        else:
            order = np.stack([rng[k].permutation(len(y)) for k in active])  # type: ignore[index]
        x_epoch = expansion.augment(x, augment_rng)
        members_per_pass = batching.chunk_for(network, batch_size, measured) if chunk == "auto" else chunk
        train_epoch(
            network,
            optimizer,
            regularizer,
            x_epoch,
            y,
            batch_size,
            eta,
            dropout_rng,
            order,
            members_per_pass,
            measured,
        )
        if epoch % eval_every and all(epoch != members[k].epochs for k in active):
            continue
        masks = regularizer.eval_masks(len(network.layers))
        evaluated = {name: evaluate(network, split, masks) for name, split in monitor.items()}
        pen, norms = penalty(network, regularizer, len(y)), weight_norm(network)
        seconds = (time.perf_counter() - start) / len(active)
        start = time.perf_counter()
        stopped = []
        for row, k in enumerate(active):
            r = row if population else None
            record = epoch_record(epoch, evaluated, pen, norms, etas[row], seconds, r)
            history, member = histories[k], members[k]
            history.append(record)
            params = [p if r is None else p[r] for p in network.params]  # the member's views
            finite = bool(np.isfinite([v for key, v in record.items() if key.endswith("_cost")]).all())
            diverged = not (finite and all(np.isfinite(p).all() for p in params))
            if not diverged and "val_accuracy" in record:
                previous = best[k]
                if previous is None or record["val_accuracy"] > previous["val_accuracy"]:
                    best[k] = record
                    best_params[k] = member_params(network, r) if member.restore_best else None
            stop = member.on_epoch(record) if member.on_epoch else None
            if diverged:
                stop = Stop(f"cost or weights not finite at epoch {epoch}", "diverged")
            elif stop is None and (why := member.stopping.check(history) or member.schedule.check(history)):
                stop = Stop(why)
            elif stop is None and epoch == member.epochs:
                stop = Stop(f"reached {member.epochs} epochs")
            if (
                stop
                and stop.status == "completed"
                and (why := stalled(history, chance, STALL_MARGIN / classes))
            ):
                stop = Stop(f"{why}; {stop.reason}", "stalled")
            if stop:
                restore = best_params[k] is not None and stop.status != "diverged"
                best_record = best[k]
                best_epoch = best_record["epoch"] if best_record else None
                if restore:
                    for p, saved in zip(params, best_params[k], strict=True):  # type: ignore[arg-type]
                        p[...] = saved
                final = member_params(network, r)
                results[k] = Result(
                    history, stop.status, stop.reason, best_epoch, best_epoch if restore else None, final
                )
                stopped.append(row)
        if stopped:
            keep = [row for row in range(len(active)) if row not in stopped]
            if not keep:
                break
            velocity = [v[keep] for v in optimizer._velocity]
            network, active = select(network, keep), [active[row] for row in keep]
            optimizer, regularizer = _stacked(members, active, population, dtype)
            optimizer._velocity = velocity
        if checkpoint:
            checkpoint(state(epoch))
    return [r for r in results if r is not None]


def _ended(result: Result) -> Record:
    return {
        "status": result.status,
        "stop_reason": result.stop_reason,
        "best_epoch": result.best_epoch,
        "restored_epoch": result.restored_epoch,
        "params": result.params,
    }


def _rng_state(g: np.random.Generator | list[np.random.Generator]) -> Any:
    return [x.bit_generator.state for x in g] if isinstance(g, list) else g.bit_generator.state


def _set_rng_state(g: np.random.Generator | list[np.random.Generator], saved: Any) -> None:
    for x, s in zip(g, saved, strict=True) if isinstance(g, list) else [(g, saved)]:
        x.bit_generator.state = s
