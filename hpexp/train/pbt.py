"""Population-based training (Jaderberg et al. 2017): K members train side by side as one
vectorized population, and between epochs a plan may replace a member's hyperparameters, and its
weights, optimizer state and history with those of another member (its parent).

`fit_pbt` is `fit_population` without early stopping plus that one step: after each epoch but the
last, `after(epoch, histories)` returns changes `(member, parent, Member)`; for each, the member's
parameters and momentum become copies of the parent's rows (exploit), its history a copy of the
parent's (the parent's history pointer: schedules and stopping rules read the history, so they go
on as the parent would), and its hyperparameters the new Member's (explore). `parent == member`
changes only the hyperparameters: that is how a recorded schedule is replayed (hpexp.train.replay).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hpexp.data.augment import NoExpansion
from hpexp.data.mnist import Split
from hpexp.nn.network import Network
from hpexp.nn.population import member_params
from hpexp.train import batching
from hpexp.train.checkpoint import State
from hpexp.train.loop import (
    Expansion,
    Member,
    Record,
    Result,
    _rng_state,
    _set_rng_state,
    _stacked,
    epoch_record,
    evaluate,
    penalty,
    train_epoch,
    weight_norm,
)

__all__ = ["Change", "fit_pbt"]

Change = tuple[int, int, Member]  # (member, parent, the member's new hyperparameters)


def fit_pbt(
    network: Network,
    train: Split,
    monitor: Mapping[str, Split],
    members: list[Member],
    *,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator | Sequence[np.random.Generator],
    after: Callable[[int, list[list[Record]]], Sequence[Change]],
    expansion: Expansion | None = None,
    dropout_rng: np.random.Generator | None = None,
    augment_rng: np.random.Generator | None = None,
    checkpoint: Callable[[State], None] | None = None,
    resume: State | None = None,
) -> list[Result]:
    """Train the K `members` (a population network, or a plain one for K = 1) for `epochs` epochs,
    applying the plan's changes after every epoch but the last; one Result per member, whose
    history is its lineage's (the records of the weights it ends with). `members` is changed in place.

    No member stops early: a member whose cost or weights stop being finite trains on as NaN until
    the plan replaces it (its validation accuracy counts as the worst); a member's `on_epoch` hook
    sees each record, and what it returns is ignored. Checkpoints and `resume` as in
    `fit_population` (the caller restores its plan's own state and members)."""
    population = bool(network.lead)
    if (network.lead[0] if population else 1) != len(members):
        raise ValueError(f"{len(members)} members for a network of population shape {network.lead}")
    dtype = network.params[0].dtype
    expansion = expansion or NoExpansion()
    if not population and not isinstance(rng, np.random.Generator):
        (rng,) = rng
    shuffle_rng = rng if isinstance(rng, np.random.Generator) else None
    if dropout_rng is None or augment_rng is None:
        spawned = (shuffle_rng or rng[0]).spawn(2)  # type: ignore[index]
        dropout_rng, augment_rng = dropout_rng or spawned[0], augment_rng or spawned[1]
    x, y = expansion.expand(train.x, train.y)
    everyone = list(range(len(members)))
    histories: list[list[Record]] = [[] for _ in members]
    best: list[Record | None] = [None] * len(members)
    best_params: list[list[np.ndarray] | None] = [None] * len(members)
    optimizer, regularizer = _stacked(members, everyone, population, dtype)
    streams = {"shuffle": shuffle_rng or list(rng), "dropout": dropout_rng, "augment": augment_rng}  # type: ignore[arg-type]
    measured = dict(resume.measured) if resume else {}  # the tables the run's choices come from

    def state(epoch: int) -> State:
        rngs = {name: _rng_state(g) for name, g in streams.items()}
        return State(
            epoch,
            everyone,
            network.params,
            optimizer._velocity,
            histories,
            best,
            best_params,
            {},
            rngs,
            measured=measured,
        )

    first = 1
    if resume is not None:
        first, histories = resume.epoch + 1, resume.histories
        best, best_params = resume.best, resume.best_params
        for p, saved in zip(network.params, resume.params, strict=True):
            p[...] = saved
        optimizer._velocity = [v.copy() for v in resume.velocity]
        for name, g in streams.items():
            _set_rng_state(g, resume.rngs[name])
    elif checkpoint:
        checkpoint(state(0))
    start = time.perf_counter()
    for epoch in range(first, epochs + 1):
        etas = [m.schedule.eta(m.optimizer.eta, h) for m, h in zip(members, histories, strict=True)]
        eta = np.asarray(etas, dtype).reshape(-1, 1, 1) if population else etas[0]
        if shuffle_rng is not None:
            order = shuffle_rng.permutation(len(y))
        else:
            order = np.stack([g.permutation(len(y)) for g in rng])  # type: ignore[union-attr]
        x_epoch = expansion.augment(x, augment_rng)
        chunk = batching.chunk_for(network, batch_size, measured)
        train_epoch(
            network, optimizer, regularizer, x_epoch, y, batch_size, eta, dropout_rng, order, chunk, measured
        )
        masks = regularizer.eval_masks(len(network.layers))
        evaluated = {name: evaluate(network, split, masks) for name, split in monitor.items()}
        pen, norms = penalty(network, regularizer, len(y)), weight_norm(network)
        seconds = (time.perf_counter() - start) / len(members)
        start = time.perf_counter()
        for k, member in enumerate(members):
            r = k if population else None
            record = epoch_record(epoch, evaluated, pen, norms, etas[k], seconds, r)
            histories[k].append(record)
            if _finite(record) and "val_accuracy" in record:
                if best[k] is None or record["val_accuracy"] > best[k]["val_accuracy"]:  # type: ignore[index]
                    best[k] = record
                    best_params[k] = member_params(network, r) if member.restore_best else None
            if member.on_epoch:
                member.on_epoch(record)
        if epoch < epochs and (changes := after(epoch, histories)):
            optimizer, regularizer = _apply(
                network, optimizer, members, changes, histories, best, best_params
            )
        if checkpoint:
            checkpoint(state(epoch))
    return [_result(network, m, k, histories[k], best[k], best_params[k]) for k, m in enumerate(members)]


def _apply(
    network: Network,
    optimizer: Any,
    members: list[Member],
    changes: Sequence[Change],
    histories: list[list[Record]],
    best: list[Record | None],
    best_params: list[list[np.ndarray] | None],
) -> tuple[Any, Any]:
    """Exploit and explore: copy each parent's rows (read before any is written), then restack."""
    population = bool(network.lead)
    velocity = optimizer._velocity
    copies = [
        (k, [p[j].copy() for p in network.params], [v[j].copy() for v in velocity])
        for k, j, _ in changes
        if k != j
    ]
    saved = {j: ([dict(r) for r in histories[j]], best[j], best_params[j]) for _, j, _ in changes}
    for k, params, moments in copies:
        for p, value in zip(network.params, params, strict=True):
            p[k] = value
        for v, value in zip(velocity, moments, strict=True):
            v[k] = value
    for k, j, member in changes:
        if k != j:
            history, best[k], kept = saved[j]
            histories[k] = [dict(r) for r in history]  # each child its own copy (two may share a parent)
            best_params[k] = None if kept is None else [p.copy() for p in kept]
        members[k] = member
    stacked, regularizer = _stacked(members, list(range(len(members))), population, network.params[0].dtype)
    if velocity:
        stacked._velocity = velocity
    return stacked, regularizer


def _result(
    network: Network,
    member: Member,
    k: int,
    history: list[Record],
    best: Record | None,
    best_params: list[np.ndarray] | None,
) -> Result:
    r = k if network.lead else None
    best_epoch = best["epoch"] if best else None
    diverged = not (history and _finite(history[-1]))
    status, reason = (
        ("diverged", "cost not finite at the last epoch")
        if diverged
        else (
            "completed",
            f"reached {len(history)} epochs",
        )
    )
    restored = None
    if best_params is not None and not diverged:
        for p, value in zip(network.params, best_params, strict=True):
            (p if r is None else p[r])[...] = value
        restored = best_epoch
    return Result(history, status, reason, best_epoch, restored, member_params(network, r))


def _finite(record: Record) -> bool:
    return bool(np.isfinite([v for key, v in record.items() if key.endswith("_cost")]).all())
