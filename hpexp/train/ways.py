"""Which way each layer of one network computes, compiled (hpexp.kernels, the `fast` extra) or by
BLAS, from a short measurement per layer shape and mini-batch size, made, cached and recorded as
the population sizes are (hpexp.train.timings: the same tables, so a resumed run chooses as before).

These ways change results by rounding (the sums run in another order), so only float32 layers
take them; float64, the exact path (gradient checks, the book's comparisons), keeps NumPy's order
whatever a measurement says. A way must win by WAYS_MARGIN.

    dense_choices(network, batch_size)   per dense layer, whether x W^T and delta W run compiled
                                         (hpexp.kernels.dense; x W^T by 4 or 2 rows of W per pass,
                                         whichever suits the CPU) rather than by BLAS, and whether
                                         plain SGD steps its weights inside the gradient's product
                                         (hpexp.nn.optimizers.descend; in a population too), by
                                         BLAS or compiled
    conv_choices(network, batch_size)    per conv layer, whether its filter gradient runs compiled
                                         (hpexp.kernels.conv.filter_grad) rather than by BLAS, and
                                         whether its backward through max-pooling sums over the
                                         winners only (hpexp.kernels.conv.pooled_back)
    activation_choices(network, batch_size)
                                         per dense and conv-pool layer, whether its sigmoid or tanh
                                         runs compiled (hpexp.kernels.activations) rather than by
                                         NumPy, for as many values as a mini-batch gives it
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np

from hpexp.nn import activations, conv, layers, optimizers
from hpexp.nn.activations import Sigmoid, Tanh
from hpexp.nn.conv import ConvPool, ConvStack, MaxPool, patches
from hpexp.nn.layers import Dense, weighted_input
from hpexp.nn.network import Network
from hpexp.train.timings import ROUNDS, STEPS, cached, clock

__all__ = ["WAYS_MARGIN", "activation_choices", "conv_choices", "dense_choices"]

WAYS_MARGIN = 0.1  # a compiled product or the step by product must win by this much
DECAY = 1 - 1e-4  # a weight-decay factor for the measurements (any but 1 takes the decaying paths)
_ways: dict[str, dict[str, float]] = {}  # this process's layer tables, for callers without a record


def measure_dense(
    shape: tuple[int, ...], batch_size: int, dtype: str, decay: bool = False, members: bool = False
) -> dict[str, float]:
    """Seconds per product of a dense layer of weights `shape` on a mini-batch, each way there is:
    x W^T by BLAS (`numpy`) and compiled, 4 rows of W per pass (`compiled`) or 2 (`compiled-2`); the
    weights' step by the formed gradient (`formed`: the product, then the step) and inside the
    product, by BLAS (`product`) or compiled (`compiled-step`). With `decay` each step first
    multiplies the weights by a factor, as L2's weight decay does: the formed gradient's step and
    a population's (`members`) in a NumPy pass of its own, one network's by BLAS's gemm (its beta:
    on some CPUs twice the product's time for large W) or inside the compiled step."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(dtype)
    x = rng.random((batch_size, shape[1])).astype(dtype)
    delta, g = 1e-9 * rng.standard_normal((batch_size, shape[0])).astype(dtype), np.empty_like(w)
    factor = DECAY if decay else 1.0

    def formed() -> None:
        np.matmul(delta.T, x, out=g)
        if decay:
            w.__imul__(factor)
        w.__isub__(g)

    def product() -> None:
        if members and decay:  # as hpexp.kernels.blas.descend_members: decay, then one gemm
            w.__imul__(factor)
            optimizers.descend(w, delta, x)
        else:
            optimizers.descend(w, delta, x, factor)

    runs: dict[str, Callable[[], object]] = {"numpy": lambda: weighted_input(w, x), "formed": formed}
    if layers.KERNELS is not None:
        runs["compiled"] = lambda: layers.KERNELS.weighted_input(w, x, 4)  # type: ignore[union-attr]
        runs["compiled-2"] = lambda: layers.KERNELS.weighted_input(w, x, 2)  # type: ignore[union-attr]
    if optimizers.BLAS is not None:
        runs["product"] = product
    if optimizers.KERNELS is not None:
        runs["compiled-step"] = lambda: optimizers.descend(w, delta, x, factor, compiled=True)
    return _race(runs)


def _race(runs: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Seconds per call of each way, taking turns ROUNDS times, each keeping its fastest."""
    best = dict.fromkeys(runs, np.inf)
    now = clock()
    for _ in range(ROUNDS):
        for name, run in runs.items():
            run()
            start = now()
            for _ in range(STEPS):
                run()
            best[name] = min(best[name], (now() - start) / STEPS)
    return best


def _rows(times: dict[str, float]) -> int:
    """Rows per pass of the compiled product if one beats BLAS (`numpy`) by WAYS_MARGIN, the faster
    of `compiled` (4) and `compiled-2` (2, absent from tables recorded before it), else 0: the
    register blocking that suits a CPU with 32 vector registers spills on one with 16."""
    compiled = {4: times["compiled"], 2: times.get("compiled-2", np.inf)}
    rows = min(compiled, key=compiled.__getitem__)
    return rows if compiled[rows] < times["numpy"] * (1 - WAYS_MARGIN) else 0


def measure_back(shape: tuple[int, ...], batch_size: int, dtype: str) -> dict[str, float]:
    """Seconds per input gradient delta W of a dense layer of weights `shape` on a mini-batch: by
    BLAS (`numpy`) and compiled (`compiled`)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(dtype)
    delta = rng.standard_normal((batch_size, shape[0])).astype(dtype)
    runs: dict[str, Callable[[], object]] = {"numpy": lambda: delta @ w}
    if layers.KERNELS is not None:
        runs["compiled"] = lambda: layers.KERNELS.back(delta, w)  # type: ignore[union-attr]
    return _race(runs)


def dense_choices(
    network: Network,
    batch_size: int,
    measured: dict[str, dict[str, float]] | None = None,
    fresh: bool = False,
    shared_input: bool = True,
    decay: bool = False,
) -> None:
    """Set `compiled`, `compiled_back`, `by_product` and `compiled_step` on each float32 dense layer
    of one network: True where that way measured faster, by WAYS_MARGIN, at this mini-batch size on
    this machine, by the run's record `measured` first (see hpexp.train.timings.cached). The step
    inside the product is BLAS's unless the compiled one beats it (`compiled_step`). With `decay`
    (plain SGD's L2 weight decay) the steps are measured multiplying the weights by a factor too, as
    the run's will, in tables of their own. In a population only the first layer chooses, and only
    when its members share their input (`shared_input`: one mini-batch order for all): it is then
    one layer of K x n_out units, measured as such, whose x W^T may run compiled and whose K
    weights may be stepped by one product (BLAS's). A layer whose input differs per member computes
    K products, which that table does not measure: BLAS's batched ones, its gradient formed."""
    dense = [layer for layer in network.layers if isinstance(layer, Dense) and layer.w.dtype == np.float32]
    for layer in dense:
        layer.compiled = layer.compiled_back = layer.by_product = layer.compiled_step = False
        layer.rows = 4
    if layers.KERNELS is None and optimizers.BLAS is None:
        return
    keys = ["numpy", "formed", *["compiled"] * (layers.KERNELS is not None)]
    keys += ["product"] * (optimizers.BLAS is not None)
    added = ["compiled-2"] * (layers.KERNELS is not None) + ["compiled-step"] * (
        optimizers.KERNELS is not None
    )
    # Asked every epoch, so the tables are kept (machine() takes milliseconds): in the run's record,
    # else in this process's for callers without one (benchmarks).
    record = _ways if measured is None else measured
    faster = 1 - WAYS_MARGIN
    for layer in dense:
        if network.lead and not (shared_input and layer is network.layers[0]):
            continue  # per-member input: nothing to choose (BLAS's batched products, formed)
        shape, dtype = (math.prod(layer.w.shape[:-1]), layer.w.shape[-1]), layer.w.dtype.name
        size = f"{shape[0]}x{shape[1]} mb{batch_size} {dtype}"
        members = bool(network.lead)
        measure_now = partial(measure_dense, shape, batch_size, dtype, decay, members)
        case = f"dense {size}{' decay' if decay else ''}{' members' if decay and members else ''}"
        if measured is not None and case not in measured and f"dense {size}" in measured:
            case = f"dense {size}"  # a record from before the decaying tables: the run chose by this
        times = cached(case, keys, measure_now, fresh, record, added)
        product = times["product"] if "product" in keys else np.inf
        # one network's step may run compiled (absent from records written before it was added)
        step = np.inf if network.lead else times.get("compiled-step", np.inf)
        layer.by_product = min(product, step) < times["formed"] * faster
        layer.compiled_step = layer.by_product and step < product * faster
        rows = _rows(times) if "compiled" in keys else 0
        layer.compiled, layer.rows = rows > 0, rows or 4
        if network.lead:
            continue
        if layers.KERNELS is not None:  # a table of its own: records written before it keep theirs
            back = partial(measure_back, shape, batch_size, dtype)
            times = cached(f"dense-back {size}", ["numpy", "compiled"], back, fresh, record)
            layer.compiled_back = times["compiled"] < times["numpy"] * faster


def measure_conv(
    shape: tuple[int, ...], in_shape: tuple[int, ...], batch_size: int, dtype: str
) -> dict[str, float]:
    """Seconds per filter gradient of a conv layer of filters `shape` (f, c, kh, kw) on a
    mini-batch of `in_shape` (c, h, w) images: by BLAS (`numpy`) and compiled, 4 rows of delta per
    pass (`compiled`) or 2 (`compiled-2`)."""
    rng = np.random.default_rng(0)
    cols = patches(rng.random((batch_size, *in_shape)).astype(dtype), shape[-2], shape[-1])
    d = rng.standard_normal((shape[0], cols.shape[1])).astype(dtype)
    g = np.empty((shape[0], cols.shape[0]), dtype)
    runs: dict[str, Callable[[], object]] = {"numpy": lambda: g.__setitem__(..., (cols @ d.T).T)}
    if conv.KERNELS is not None:
        runs["compiled"] = lambda: conv.KERNELS.filter_grad(d, cols, g, 4)  # type: ignore[attr-defined,union-attr]
        runs["compiled-2"] = lambda: conv.KERNELS.filter_grad(d, cols, g, 2)  # type: ignore[attr-defined,union-attr]
    return _race(runs)


def measure_winners(
    layer: ConvPool, in_shape: tuple[int, ...], batch_size: int, propagate: bool
) -> dict[str, float]:
    """Seconds per backward of a conv-pool layer like `layer` (its weights, activation and filter
    gradient's way) on random inputs: spreading the pooling's gradient over every position, then the
    products (`numpy`), and summing over the regions' winners only (`winners`). ReLU's zeros, which
    the winners' sums skip, come out as they do in training."""
    rng = np.random.default_rng(0)
    twin = ConvPool(layer.w.copy(), layer.b.copy(), layer.activation, MaxPool(2))
    twin.conv.compiled, twin.conv.rows = layer.conv.compiled, layer.conv.rows
    out = twin.forward(rng.random((batch_size, *in_shape)).astype(layer.w.dtype))
    delta = rng.standard_normal(out.shape).astype(out.dtype)

    def backward(by_winners: bool) -> None:
        twin.by_winners = by_winners
        twin.backward(delta, propagate)

    return _race({"numpy": partial(backward, False), "winners": partial(backward, True)})


def conv_choices(
    network: Network,
    batch_size: int,
    measured: dict[str, dict[str, float]] | None = None,
    fresh: bool = False,
) -> None:
    """Set `compiled` on each float32 conv layer of one network (its filter gradient), and
    `by_winners` on its conv-pool layer (with 2 x 2 max-pooling: its backward): True where measured
    faster, by WAYS_MARGIN, as `dense_choices` (float32 only, by the run's record first)."""
    layers_in = [  # each conv-pool layer with its input's shape and whether backward propagates
        (layer, in_shape, i > 0 or j > 0)
        for i, stack in enumerate(network.layers)
        if isinstance(stack, ConvStack)
        for j, (layer, in_shape) in enumerate(zip(stack.layers, stack.in_shapes, strict=True))
    ]
    for layer, _, _ in layers_in:
        layer.conv.compiled = layer.by_winners = False
        layer.conv.rows = 4
    if network.lead or conv.KERNELS is None:
        return
    record = _ways if measured is None else measured
    faster = 1 - WAYS_MARGIN
    for layer, in_shape, propagate in layers_in:
        shape, dtype = layer.w.shape, layer.w.dtype.name
        if dtype != "float32":
            continue
        size = f"{'x'.join(map(str, shape))} on {'x'.join(map(str, in_shape))} mb{batch_size} {dtype}"
        measure_now = partial(measure_conv, shape, in_shape, batch_size, dtype)
        times = cached(f"conv {size}", ["numpy", "compiled"], measure_now, fresh, record, ["compiled-2"])
        rows = _rows(times)
        layer.conv.compiled, layer.conv.rows = rows > 0, rows or 4
        if isinstance(layer.pool, MaxPool) and layer.pool.size == 2:
            case = f"conv-back {size} {type(layer.activation).__name__}{'' if propagate else ' first'}"
            measure_now = partial(measure_winners, layer, in_shape, batch_size, propagate)
            times = cached(case, ["numpy", "winners"], measure_now, fresh, record)
            layer.by_winners = times["winners"] < times["numpy"] * faster


def measure_activation(activation: Sigmoid | Tanh, n: int, dtype: str) -> dict[str, float]:
    """Seconds per `activation` of n values: NumPy's (`numpy`) and the compiled kernel's."""
    z = np.random.default_rng(0).normal(0.0, 2.0, n).astype(dtype)
    numpy_way, kernel_way = replace(activation, compiled=False), replace(activation, compiled=True)
    return _race({"numpy": lambda: numpy_way.value(z), "compiled": lambda: kernel_way.value(z)})


def activation_choices(
    network: Network,
    batch_size: int,
    measured: dict[str, dict[str, float]] | None = None,
    fresh: bool = False,
) -> None:
    """Set `compiled` on the sigmoid or tanh of each float32 dense and conv-pool layer: True where
    the compiled kernel measured faster, by WAYS_MARGIN, for the values a mini-batch of
    `batch_size` gives the layer (a population's members together), as `dense_choices` (by the
    run's record first). Each layer gets an activation of its own (layers may share one)."""
    chosen: list[tuple[Dense | ConvPool, int]] = []  # each layer, with its values per mini-batch
    for layer in network.layers:
        if isinstance(layer, Dense):
            chosen.append((layer, math.prod(layer.w.shape[:-2]) * batch_size * layer.w.shape[-2]))
        elif isinstance(layer, ConvStack):
            for pool_layer, (_, height, width) in zip(layer.layers, layer.in_shapes, strict=True):
                kh, kw = pool_layer.conv.kernel
                p = pool_layer.pool.size
                maps = pool_layer.w.shape[0] * ((height - kh + 1) // p) * ((width - kw + 1) // p)
                chosen.append((pool_layer, batch_size * maps))
    record = _ways if measured is None else measured
    for unit, n in chosen:
        activation, dtype = unit.activation, unit.w.dtype.name
        if not isinstance(activation, Sigmoid | Tanh):
            continue
        compiled = False
        if activations.KERNELS is not None and dtype == "float32":
            measure_now = partial(measure_activation, activation, n, dtype)
            case = f"activation {type(activation).__name__} {n} {dtype}"
            times = cached(case, ["numpy", "compiled"], measure_now, fresh, record)
            compiled = times["compiled"] < times["numpy"] * (1 - WAYS_MARGIN)
        unit.activation = replace(activation, compiled=compiled)
