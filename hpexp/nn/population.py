"""Populations: K networks of the same shape trained side by side in one vectorized pass.

Hyperparameter work trains many networks that share layer sizes and mini-batch size (seeds, grids,
study trials). Stacking them on a leading axis turns K small matrix products into one per layer
(one wide product while the members share their mini-batch, see hpexp.nn.layers), so the per-call
overhead that bounds a single small network is paid once.
Every component already broadcasts over that axis; this module only builds and reshapes:

    stack(networks)             K networks -> one network whose arrays have a leading axis K
    select(network, rows)       the members to keep, when others have stopped
    parts(network, size)        consecutive groups of up to `size` members, as networks over views:
                                how a population runs in chunks (see hpexp.train.batching)
    stack_fields(objects, ...)  K hyperparameter objects (SGD, Regularizer) -> one whose differing
                                fields hold a (K, 1, ...) array, e.g. eta per member
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from hpexp.nn.layers import Dense
from hpexp.nn.network import DenseSpec, Network

__all__ = ["member_params", "parts", "select", "stack", "stack_fields", "stackable", "take", "take_fields"]

T = TypeVar("T")


def _dense_layers(network: Network) -> list[Dense]:
    if not all(isinstance(layer, Dense) for layer in network.layers):
        kinds = sorted({type(layer).__name__ for layer in network.layers})
        raise ValueError(f"populations need fully-connected networks; this one has {kinds} layers")
    return network.layers  # type: ignore[return-value]


def stackable(specs: Sequence[Any]) -> bool:
    """Whether networks of these layer specs can form a population (fully-connected ones only)."""
    return all(isinstance(spec, DenseSpec) for spec in specs)


def stack(networks: Sequence[Network]) -> Network:
    """One network holding copies of `networks` (same sizes and cost) on a new leading axis."""
    first = _dense_layers(networks[0])
    layers = []
    for i, layer in enumerate(first):
        ws = [_dense_layers(net)[i].w for net in networks]
        bs = [_dense_layers(net)[i].b for net in networks]
        if len({w.shape for w in ws}) > 1:
            raise ValueError(f"population members differ in layer {i} shape: {sorted({w.shape for w in ws})}")
        layers.append(Dense(np.stack(ws), np.stack(bs), layer.activation))
    return Network(layers, networks[0].cost)


def select(network: Network, rows: Sequence[int] | slice | int) -> Network:
    """A new population network with only the members at `rows` (copies of their parameters); one
    member (an int) gives a network without the population axis."""
    index = rows if isinstance(rows, slice | int) else np.asarray(rows)
    layers = [Dense(layer.w[index], layer.b[index], layer.activation) for layer in _dense_layers(network)]
    return Network(layers, network.cost)


def parts(network: Network, size: int) -> list[tuple[slice, Network]]:
    """The members in consecutive groups of up to `size`, each with a network over views of its
    members' parameters and gradients (no copies): training a part trains those members in place.

    Smaller groups keep their weights in cache through a whole mini-batch step, where one wide
    product over all K members would stream them from memory several times a step."""
    k = network.lead[0]
    groups = []
    for start in range(0, k, size):
        rows = slice(start, min(start + size, k))
        layers = []
        for layer in _dense_layers(network):
            view = Dense(layer.w[rows], layer.b[rows], layer.activation)
            view.bind([layer.w[rows], layer.b[rows]], [layer.gw[rows], layer.gb[rows]])
            layers.append(view)
        groups.append((rows, Network.of_views(layers, network.cost)))
    return groups


def take(value: Any, rows: slice | int) -> Any:
    """One per-member value (an array with the population axis first) cut to `rows`; one member's
    (an int) one-element value as a NumPy scalar of the array's dtype: the same arithmetic as the
    (1, 1) array, but a single network's fast path (NumPy broadcasts a (1, 1) array over a small
    array in twice a scalar's time, a few percent of a 784-100-10 step at mini-batch 10)."""
    if not np.ndim(value):
        return value
    picked = value[rows]
    return picked.ravel()[0] if isinstance(rows, int) and picked.size == 1 else picked


def take_fields(stacked: T, rows: slice | int) -> T:
    """The object for some members of a population: `stack_fields`'s per-member arrays cut to `rows`
    (one member, an int: per-member values without the population axis, see `take`)."""
    values = {f.name: getattr(stacked, f.name) for f in dataclasses.fields(stacked) if f.init}  # type: ignore[arg-type]
    return type(stacked)(**{name: take(v, rows) for name, v in values.items()})


def member_params(network: Network, row: int | None) -> list[np.ndarray]:
    """Copies of one member's parameters in its own shapes (row None: a network without the axis)."""
    return [p.copy() if row is None else p[row].copy() for p in network.params]


def _same(values: Sequence[Any]) -> bool:
    return all(np.array_equal(np.asarray(v), np.asarray(values[0])) for v in values[1:])


def stack_fields(objects: Sequence[T], shape: tuple[int, ...], dtype: Any = np.float64) -> T:
    """One object of the members' class whose fields that differ become arrays of shape (K, *shape).

    Fields equal across members stay plain values, so a population whose members share, say,
    momentum 0 keeps the fast path of a single run. `None` (a feature off) next to numbers becomes
    +inf where that means the same thing (max_norm); booleans must agree."""
    first = objects[0]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(first):  # type: ignore[arg-type]
        if not f.init:
            continue
        column = [getattr(o, f.name) for o in objects]
        if _same(column):
            values[f.name] = column[0]
        elif any(isinstance(v, bool) for v in column):
            raise ValueError(f"{f.name} must be the same for every member of a population, got {column}")
        else:
            column = [np.inf if v is None else v for v in column]
            values[f.name] = np.asarray(column, dtype=dtype).reshape(len(column), *shape)
    return type(first)(**values)
