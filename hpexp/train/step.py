"""One mini-batch step of training, for a network or a population taken in chunks of members.

The step: backprop with eta folded in (through the dropout masks, if any), the penalty's gradient
added to the weights' (for plain SGD the L2 term is network2's weight decay, which the optimizer
applies), the optimizer's step, the max-norm constraint. Parts that are off cost nothing.
A population may take the step in chunks of members one after the other (hpexp.nn.population.parts),
each on the same mini-batch and its own rows of the dropout masks: the same arithmetic per member
whatever the chunk but one (a single member steps as one network, which rounds otherwise than the
wide products), so the speed differs (hpexp.train.batching picks the fastest), the results only by
rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hpexp.nn.network import Masks, Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.population import parts, take, take_fields
from hpexp.nn.regularizers import Regularizer

__all__ = ["Step", "mini_batch_steps", "split"]

Step = Callable[[np.ndarray, np.ndarray, Masks | None], None]


def split(
    network: Network, optimizer: SGD, regularizer: Regularizer, eta: float | np.ndarray, chunk: int
) -> list[tuple[slice | int, Network, SGD, Regularizer, float | np.ndarray]]:
    """The population's chunks of up to `chunk` members, each with its members' hyperparameters and
    momentum (views of the population's velocity, so a chunk's steps carry on where they left)."""
    if not optimizer.plain and not optimizer._velocity:
        optimizer._velocity = [np.zeros_like(p) for p in network.params]
    out: list[tuple[slice | int, Network, SGD, Regularizer, float | np.ndarray]] = []
    for rows, part in parts(network, chunk):
        # One member is taken as a network of its own: the path of a single network, the fastest
        at: slice | int = rows.start if chunk == 1 else rows
        part_optimizer = take_fields(optimizer, at)
        part_optimizer._velocity = [v[rows] for v in optimizer._velocity]
        part_eta = take(eta, at)
        out.append((at, part, part_optimizer, take_fields(regularizer, at), part_eta))
    return out


def mini_batch_steps(
    network: Network,
    optimizer: SGD,
    regularizer: Regularizer,
    eta: float | np.ndarray,
    n: int,
    chunk: int | None = None,
) -> list[Step]:
    """The functions `step(xb, yb, masks)` that together take one mini-batch step of `network`
    (n: the training-set size, for the penalty): one, or one per chunk of `chunk` members."""
    if not network.lead or chunk is None or chunk >= network.lead[0]:
        return [_stepper(network, optimizer, regularizer, eta, n)]
    return [
        _stepper(part, part_optimizer, part_regularizer, part_eta, n, rows)
        for rows, part, part_optimizer, part_regularizer, part_eta in split(
            network, optimizer, regularizer, eta, chunk
        )
    ]


def _stepper(
    network: Network,
    optimizer: SGD,
    regularizer: Regularizer,
    eta: float | np.ndarray,
    n: int,
    rows: slice | int | None = None,
) -> Step:
    """One mini-batch step of `network` (the members `rows` of the population's dropout masks)."""
    factor = regularizer.weight_decay(eta, n) if optimizer.plain else None
    add_penalty = regularizer.add_grad(eta, n, l2=factor is None)
    # Plain SGD steps the weights of the dense layers marked `by_product` (where hpexp.train.ways
    # measured it faster) by their gradients' products, never formed.
    by_product = optimizer.plain and add_penalty is None
    factored = [
        i for i, layer in enumerate(network.layers) if by_product and getattr(layer, "by_product", False)
    ]
    # Plain SGD (no state) steps all parameters at once through the flat buffer; momentum's state
    # is kept per layer array, where a population's per-member momentum (K, 1, 1) broadcasts.
    flat = network.flat_params is not None and (optimizer.plain or not network.lead)
    if factored:
        params, grads = network.formed(factored)
    elif flat:
        params, grads = [network.flat_params], [network.flat_grads]  # type: ignore[list-item]
    else:
        params, grads = network.params, network.grads
    if not (factored or regularizer.penalized or regularizer.dropout or regularizer.max_norm is not None):

        def plain_step(xb: np.ndarray, yb: np.ndarray, masks: Masks | None) -> None:
            if rows is not None and yb.ndim == 2:
                xb, yb = xb[rows], yb[rows]
            network.backprop(xb, yb, scale=eta)
            optimizer.step(params, grads)

        return plain_step
    weights, weight_grads = network.weights, network.weight_grads
    # weight decay for the weights among `params` (the products' weights decay in their step)
    decayed = [w for w in weights if any(np.may_share_memory(w, p) for p in params)]
    decayed = decayed if factor is not None else []
    max_norm = regularizer.max_norm is not None

    def step(xb: np.ndarray, yb: np.ndarray, masks: Masks | None) -> None:
        if rows is not None:  # one part of a population: its rows of the masks (and of the batches)
            if masks is not None:
                masks = [m if m is None else m[rows] for m in masks]  # type: ignore[index]
            if yb.ndim == 2:
                xb, yb = xb[rows], yb[rows]
        network.backprop(xb, yb, masks, scale=eta, factored=factored)
        if add_penalty:
            for w, g in zip(weights, weight_grads, strict=True):
                add_penalty(w, g)
        products = network.products(factored) if factored else ()
        optimizer.step(params, grads, decayed, 1.0 if factor is None else factor, products)
        if max_norm:
            for w in weights:
                regularizer.constrain(w)

    return step
