"""How populations run fastest on this machine, from a short measurement made once and cached.

A population of K networks can train as one (a wide product per layer over all K members), or in
chunks of c members one after the other (hpexp.train.loop.train_epoch; c = 1 is one at a time).
Which is fastest depends on the CPU's caches and on the BLAS kernels: on one machine 784-100-10
networks at mini-batch 10 ran 1.3x faster per network as one population of 8, on another 0.7x as
fast as one by one, because the weights of 8 no longer fit in the cache a step passes over several
times. A chunk runs as fast as a population of its size alone, so the rule is: K members go in
chunks of the fastest population size c <= K, never slower than one at a time (c = 1).
Which size is fastest is not guessed: for a network shape, mini-batch size and dtype, `measure`
times real training steps of populations of 1, 2, 4, 8, 16 (a few seconds at most), each computing
its layers the ways its epochs will (hpexp.train.ways: one network's compiled products, a
population's step inside its first layer's product, where measured faster), and the table is kept
for the machine (hpexp.train.timings: this process, a JSON file in the user's cache, the run's
record).

Some of these choices change results by rounding (a chunk of one member, which steps as one
network; in float32 a compiled product or a step by product), and a measurement may come out
otherwise another time. So a run keeps the tables it chose by (`measured`, case -> seconds, saved in
its checkpoint: hpexp.train.checkpoint) and asks them first: resumed, it chooses as before,
whatever the machine measures by then.

    chunk(sizes, batch_size, dtype, k)   members per pass for a population of k
    population(sizes, batch_size, dtype) the K with the most network-steps per second (studies'
                                         `population: auto`)

Which way each layer computes (compiled or by BLAS) is measured, cached and recorded the same way,
in the same tables (hpexp.train.ways).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from hpexp.nn.activations import Sigmoid
from hpexp.nn.costs import CrossEntropy
from hpexp.nn.init import Default
from hpexp.nn.layers import Dense
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.population import stack, stack_fields
from hpexp.nn.regularizers import Regularizer
from hpexp.train import ways
from hpexp.train.step import mini_batch_steps
from hpexp.train.timings import ROUNDS, STEPS, cached, clock

__all__ = ["SIZES", "chunk", "chunk_for", "measure", "population", "table"]

SIZES = (1, 2, 4, 8, 16)  # population sizes measured; chunks are the sizes up to K
POOL = 32 * 2**20  # bytes of inputs the population timings walk through (more than most L3 caches)
MARGIN = 0.03  # a larger population must be this much faster per network to be chosen


def _case(sizes: Sequence[int], batch_size: int, dtype: str) -> str:
    return f"{'-'.join(map(str, sizes))} mb{batch_size} {np.dtype(dtype).name}"


def _case_steps(
    sizes: Sequence[int],
    batch_size: int,
    dtype: str,
    k: int,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, list[int]],
) -> Callable[[], None]:
    """A function taking STEPS real mini-batch steps of K members (sigmoid, cross-entropy, L2 weight
    decay: the common case of a study) on the next mini-batches of `data` (inputs, labels, and the
    position shared by every case)."""
    rng = np.random.default_rng(0)
    nets = [Network.create(sizes, Sigmoid(), CrossEntropy(), Default(), rng, dtype) for _ in range(k)]
    if k == 1:
        network, optimizer, regularizer, eta = nets[0], SGD(0.1), Regularizer(lmbda=1.0), 0.1
    else:
        network = stack(nets)
        optimizer = stack_fields([SGD(0.1 + i / 100) for i in range(k)], (1, 1), dtype)
        regularizer = stack_fields([Regularizer(lmbda=1.0 + i) for i in range(k)], (1, 1), dtype)
        eta = optimizer.eta
    ways.dense_choices(network, batch_size, decay=True)  # as its epochs compute (shared input, L2)
    ways.activation_choices(network, batch_size)
    steps = mini_batch_steps(network, optimizer, regularizer, eta, 50_000)
    x, y, order, position = data
    batches = len(y) // batch_size

    def run() -> None:
        for _ in range(STEPS):
            i = position[0] % batches * batch_size
            position[0] += 1
            index = order[i : i + batch_size]  # gathered as an epoch in shuffled order gathers
            xb, yb = x.take(index, axis=0), y.take(index)  # once per step, whatever the K
            for step in steps:
                step(xb, yb, None)

    return run


def _inputs(
    sizes: Sequence[int], batch_size: int, dtype: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """POOL bytes of random inputs (at least STEPS mini-batches) that the timings walk through in a
    shuffled order, every step on mini-batches not touched since they were written, as an epoch
    streams its training set from memory: a few mini-batches used again and again stay in cache,
    which flattered one network at a time (784-30-10 at mini-batch 100: K = 4 chosen, where 8 and
    16 trained 1.95x as fast per network as one at a time, and 4 1.66x). Each step gathers its
    mini-batch by the order, as training does (once per step for the whole population: timed
    without it, 784-100-10 at mini-batch 100 measured 1.05x for 4 members where an epoch gives 1.29x)."""
    rng = np.random.default_rng(1)
    rows = max(STEPS * batch_size, POOL // (sizes[0] * np.dtype(dtype).itemsize) // batch_size * batch_size)
    x = rng.random((rows, sizes[0]), dtype=np.float32).astype(dtype, copy=False)
    return x, rng.integers(0, sizes[-1], rows), rng.permutation(rows), [0]


def measure(sizes: Sequence[int], batch_size: int, dtype: str) -> dict[str, float]:
    """Seconds per network per mini-batch step of a population of K, for each K in SIZES.

    The sizes take turns, ROUNDS times, and each keeps its fastest round, timed by `clock`: on a
    shared machine another process's work then slows every size alike and is mostly left out of
    the minimum."""
    data = _inputs(sizes, batch_size, dtype)
    cases = {k: _case_steps(sizes, batch_size, dtype, k, data) for k in SIZES}
    best = dict.fromkeys(cases, np.inf)
    now = clock()
    for _ in range(ROUNDS):
        for k, run in cases.items():
            run()  # warm: the cache as it is after the previous step of this same population
            start = now()
            run()
            best[k] = min(best[k], now() - start)
    return {str(k): best[k] / (STEPS * k) for k in SIZES}


def table(
    sizes: Sequence[int],
    batch_size: int,
    dtype: str,
    fresh: bool = False,
    measured: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """The measured table of population sizes for this machine and case (see `cached`)."""
    keys = [str(k) for k in SIZES]
    case = _case(sizes, batch_size, dtype)
    return cached(case, keys, lambda: measure(sizes, batch_size, dtype), fresh, measured)


def _fastest(measured: dict[str, float], largest: int, between: float = MARGIN) -> int:
    """The fastest population size up to `largest`: any size must beat one at a time by MARGIN (a
    population is never slower, noise included), and a larger one a smaller by `between`
    (for a study's `population: auto`, MARGIN too: noise is not a reason to sample more trials at
    once)."""
    best_k, best_t = 1, measured["1"]
    for k in SIZES[1:]:
        t = measured[str(k)]
        if k <= largest and t < best_t * (1 - (MARGIN if best_k == 1 else between)):
            best_k, best_t = k, t
    return best_k


def chunk(
    sizes: Sequence[int],
    batch_size: int,
    dtype: str,
    k: int,
    measured: dict[str, dict[str, float]] | None = None,
) -> int:
    """Members per pass for a population of k: the fastest population size up to k (the population
    is given: of the sizes that beat one at a time by MARGIN, simply the fastest)."""
    return k if k <= 1 else _fastest(table(sizes, batch_size, dtype, measured=measured), k, between=0.0)


def chunk_for(
    network: Network, batch_size: int, measured: dict[str, dict[str, float]] | None = None
) -> int | None:
    """`chunk` for this network (None, all at once, for one network or one that is not dense), by
    the run's record `measured` first (see `cached`)."""
    if not network.lead or not all(isinstance(layer, Dense) for layer in network.layers):
        return None
    sizes = [network.layers[0].w.shape[-1], *(layer.w.shape[-2] for layer in network.layers)]  # type: ignore[union-attr]
    return chunk(sizes, batch_size, network.params[0].dtype.name, network.lead[0], measured)


def population(sizes: Sequence[int], batch_size: int, dtype: str, largest: int = SIZES[-1]) -> int:
    """The population size (of SIZES, at most `largest`) with the most network-steps per second:
    what a study's `population: auto` trains at once."""
    return _fastest(table(sizes, batch_size, dtype), largest)
