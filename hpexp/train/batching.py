"""How populations run fastest on this machine, from a short measurement made once and cached.

A population of K networks can train as one (a wide product per layer over all K members), or in
chunks of c members one after the other (hpexp.train.loop.train_epoch; c = 1 is one at a time).
Which is fastest depends on the CPU's caches and on the BLAS kernels: on one machine 784-100-10
networks at mini-batch 10 ran 1.3x faster per network as one population of 8, on another 0.7x as
fast as one by one, because the weights of 8 no longer fit in the cache a step passes over several
times. A chunk runs as fast as a population of its size alone, so the rule is: K members go in
chunks of the fastest population size c <= K, never slower than one at a time (c = 1).
Which size is fastest is not guessed: for a network shape, mini-batch size and dtype, `measure`
times real training steps of populations of 1, 2, 4, 8, 16 (a few seconds at most), and the table
is kept in a JSON file in the user's cache
(`$HPEXP_BATCHING_CACHE`, else platformdirs' user cache dir /hpexp/batching.json), keyed by the
machine: CPU model, BLAS library, version, kernel and threads (threadpoolctl), NumPy's version and
the engine's code (a fingerprint of its sources).

Some of these choices change results by rounding (a chunk of one member, which steps as one
network; in float32 a compiled product or a step by product), and a measurement may come out
otherwise another time. So a run keeps the tables it chose by (`measured`, case -> seconds, saved in
its checkpoint: hpexp.train.checkpoint) and asks them first: resumed, it chooses as before,
whatever the machine measures by then.

    chunk(sizes, batch_size, dtype, k)   members per pass for a population of k
    population(sizes, batch_size, dtype) the K with the most network-steps per second (studies'
                                         `population: auto`)
    dense_choices(network, batch_size)   per dense layer, whether x W^T and delta W run compiled
                                         (hpexp.kernels.dense) rather than by BLAS, and whether
                                         plain SGD steps its weights inside the gradient's product
                                         (hpexp.nn.optimizers.descend): measured the same way
    conv_choices(network, batch_size)    per conv layer, whether its filter gradient runs compiled
                                         (hpexp.kernels.conv.filter_grad) rather than by BLAS, and
                                         whether its backward through max-pooling sums over the
                                         winners only (hpexp.kernels.conv.pooled_back)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from threadpoolctl import threadpool_info

from hpexp.nn import conv, layers, optimizers
from hpexp.nn.activations import Sigmoid
from hpexp.nn.conv import ConvPool, ConvStack, MaxPool, patches
from hpexp.nn.costs import CrossEntropy
from hpexp.nn.init import Default
from hpexp.nn.layers import Dense, weighted_input
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.population import stack, stack_fields
from hpexp.nn.regularizers import Regularizer
from hpexp.train.step import mini_batch_steps

__all__ = [
    "CACHE_ENV_VAR",
    "SIZES",
    "cache_path",
    "chunk",
    "chunk_for",
    "conv_choices",
    "dense_choices",
    "machine",
    "measure",
    "population",
    "table",
]

CACHE_ENV_VAR = "HPEXP_BATCHING_CACHE"
SIZES = (1, 2, 4, 8, 16)  # population sizes measured; chunks are the sizes up to K
STEPS, ROUNDS = 4, 7  # mini-batch steps per timing, timings per case
POOL = 32 * 2**20  # bytes of inputs the population timings walk through (more than most L3 caches)
MARGIN = 0.03  # a larger population must be this much faster per network to be chosen
WAYS_MARGIN = 0.1  # a compiled product or the step by product must win by this much
_tables: dict[str, dict[str, float]] = {}  # this process's tables, by machine + case
_ways: dict[str, dict[str, float]] = {}  # this process's layer tables, for callers without a record


def cache_path() -> Path:
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env) if env else Path(platformdirs.user_cache_dir("hpexp")) / "batching.json"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """What the timings depend on: CPU model, BLAS (library, version, kernel, threads), NumPy, and
    the engine's code (`engine`).

    The BLAS libraries are sorted: threadpoolctl lists them in no fixed order (on Linux from a set of
    the paths in /proc/self/maps, whose order follows each process's string hashing): with two
    loaded (NumPy's and SciPy's OpenBLAS) a process could miss the key another had written,
    measure again and choose otherwise."""
    blas = sorted(
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    )
    return (
        f"{_cpu_model()} | {', '.join(blas) or 'no BLAS found'} | numpy {np.__version__} | engine {engine()}"
    )


ENGINE = ("nn", "kernels", "train/loop.py", "train/step.py", "train/batching.py")  # under hpexp/


@functools.cache
def engine() -> str:
    """A fingerprint of the code the timings time (the engine's sources, hashed): an upgrade or an
    edit that changes what a step costs measures again instead of choosing by another engine's
    timings (a 13 us saving per step once made one network 1.2x faster, and every population
    table taken before it favoured populations)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in ENGINE:
        for path in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / name]:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _case(sizes: Sequence[int], batch_size: int, dtype: str) -> str:
    return f"{'-'.join(map(str, sizes))} mb{batch_size} {np.dtype(dtype).name}"


def _case_steps(
    sizes: Sequence[int], batch_size: int, dtype: str, k: int, data: tuple[np.ndarray, np.ndarray, list[int]]
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
    steps = mini_batch_steps(network, optimizer, regularizer, eta, 50_000)
    x, y, position = data
    batches = len(y) // batch_size

    def run() -> None:
        for _ in range(STEPS):
            i = position[0] % batches * batch_size
            position[0] += 1
            for step in steps:
                step(x[i : i + batch_size], y[i : i + batch_size], None)

    return run


def _inputs(sizes: Sequence[int], batch_size: int, dtype: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """POOL bytes of random inputs (at least STEPS mini-batches) that the timings walk through, every
    step on mini-batches not touched since they were written, as an epoch streams its training set
    from memory: a few mini-batches used again and again stay in cache, which flattered one network
    at a time (784-30-10 at mini-batch 100: K = 4 chosen, where 8 and 16 trained 1.95x as fast per
    network as one at a time, and 4 1.66x)."""
    rng = np.random.default_rng(1)
    rows = max(STEPS * batch_size, POOL // (sizes[0] * np.dtype(dtype).itemsize) // batch_size * batch_size)
    x = rng.random((rows, sizes[0]), dtype=np.float32).astype(dtype, copy=False)
    return x, rng.integers(0, sizes[-1], rows), [0]


def clock() -> Callable[[], float]:
    """What the measurements time by: this thread's CPU time where BLAS runs on one thread (the
    study workers' and benchmarks' setting), else the wall clock (BLAS's own threads do the work).

    On a shared machine the wall clock charged a step with the time other processes held the core,
    and more often the longer the timing: under a load of 5 on 2 cores it timed a population of 8
    784-100-10 networks at mini-batch 100 at 568 us per network-step where it takes 322 of CPU
    (1 network: 333 and 340), so populations lost to one at a time that beat it by CPU time."""
    threads = [i.get("num_threads", 1) for i in threadpool_info() if i.get("user_api") == "blas"]
    return time.thread_time if all(n == 1 for n in threads) else time.perf_counter


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


def _load() -> dict[str, Any]:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: measured again and rewritten


def _save(key: str, case: str, result: dict[str, float]) -> None:
    path = cache_path()
    data = _load()
    data.setdefault(key, {})[case] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old table or the new one
    except OSError:
        pass  # a read-only cache costs a measurement per process, nothing else


def _complete(found: Any, keys: Sequence[str]) -> bool:
    """Whether a cached entry is a whole table: seconds (> 0) for every key."""
    return isinstance(found, dict) and all(
        isinstance(found.get(k), int | float) and found[k] > 0 for k in keys
    )


def _cached(
    case: str,
    keys: Sequence[str],
    measure_now: Callable[[], dict[str, float]],
    fresh: bool,
    measured: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """The table of `case`: from the run's own record `measured` (what it chose by so far), else for
    this machine from this process, the cache file, or (none yet, or `fresh`) measured now and
    cached; then kept in `measured`."""
    own = None if fresh or measured is None else measured.get(case)
    if _complete(own, keys):
        return own  # type: ignore[return-value]
    key = machine()
    cached = None if fresh else _tables.get(f"{key} || {case}") or _load().get(key, {}).get(case)
    found: dict[str, float] = cached if _complete(cached, keys) else measure_now()  # type: ignore[assignment]
    if found is not cached:  # none yet, fresh, or written by another version: measured again
        _save(key, case, found)
    _tables[f"{key} || {case}"] = found
    if measured is not None:
        measured[case] = found
    return found


def table(
    sizes: Sequence[int],
    batch_size: int,
    dtype: str,
    fresh: bool = False,
    measured: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """The measured table of population sizes for this machine and case (see `_cached`)."""
    keys = [str(k) for k in SIZES]
    case = _case(sizes, batch_size, dtype)
    return _cached(case, keys, lambda: measure(sizes, batch_size, dtype), fresh, measured)


def _fastest(measured: dict[str, float], largest: int) -> int:
    """The fastest population size up to `largest`; a larger one must win by MARGIN (noise is
    not a reason to sample more trials at once)."""
    best_k, best_t = 1, measured["1"]
    for k in SIZES[1:]:
        if k <= largest and measured[str(k)] < best_t * (1 - MARGIN):
            best_k, best_t = k, measured[str(k)]
    return best_k


def chunk(
    sizes: Sequence[int],
    batch_size: int,
    dtype: str,
    k: int,
    measured: dict[str, dict[str, float]] | None = None,
) -> int:
    """Members per pass for a population of k: the fastest population size up to k."""
    return k if k <= 1 else _fastest(table(sizes, batch_size, dtype, measured=measured), k)


def chunk_for(
    network: Network, batch_size: int, measured: dict[str, dict[str, float]] | None = None
) -> int | None:
    """`chunk` for this network (None, all at once, for one network or one that is not dense), by
    the run's record `measured` first (see `_cached`)."""
    if not network.lead or not all(isinstance(layer, Dense) for layer in network.layers):
        return None
    sizes = [network.layers[0].w.shape[-1], *(layer.w.shape[-2] for layer in network.layers)]  # type: ignore[union-attr]
    return chunk(sizes, batch_size, network.params[0].dtype.name, network.lead[0], measured)


def population(sizes: Sequence[int], batch_size: int, dtype: str, largest: int = SIZES[-1]) -> int:
    """The population size (of SIZES, at most `largest`) with the most network-steps per second:
    what a study's `population: auto` trains at once."""
    return _fastest(table(sizes, batch_size, dtype), largest)


def measure_dense(shape: tuple[int, ...], batch_size: int, dtype: str) -> dict[str, float]:
    """Seconds per product of a dense layer of weights `shape` on a mini-batch, each way there is:
    x W^T by BLAS (`numpy`) and compiled (`compiled`); the weights' step by the formed gradient
    (`formed`: the product, then the step) and inside the product (`product`)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(dtype)
    x = rng.random((batch_size, shape[1])).astype(dtype)
    delta, g = 1e-9 * rng.standard_normal((batch_size, shape[0])).astype(dtype), np.empty_like(w)

    def formed() -> None:
        np.matmul(delta.T, x, out=g)
        w.__isub__(g)

    runs: dict[str, Callable[[], object]] = {"numpy": lambda: weighted_input(w, x), "formed": formed}
    if layers.KERNELS is not None:
        runs["compiled"] = lambda: layers.KERNELS.weighted_input(w, x)  # type: ignore[union-attr]
    if optimizers.BLAS is not None:
        runs["product"] = lambda: optimizers.descend(w, delta, x)
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
) -> None:
    """Set `compiled`, `compiled_back` and `by_product` on each float32 dense layer of one network
    (not a population): True where that way measured faster, by WAYS_MARGIN, at this mini-batch size
    on this machine, by the run's record `measured` first (see `_cached`). They change results by
    rounding, so float64, the exact path (gradient checks, the book's comparisons), keeps NumPy's
    order whatever a measurement says."""
    dense = [layer for layer in network.layers if isinstance(layer, Dense) and layer.w.dtype == np.float32]
    for layer in dense:
        layer.compiled = layer.compiled_back = layer.by_product = False
    if network.lead or (layers.KERNELS is None and optimizers.BLAS is None):
        return
    keys = ["numpy", "formed", *["compiled"] * (layers.KERNELS is not None)]
    keys += ["product"] * (optimizers.BLAS is not None)
    # Asked every epoch, so the tables are kept (machine() takes milliseconds): in the run's record,
    # else in this process's for callers without one (benchmarks).
    record = _ways if measured is None else measured
    faster = 1 - WAYS_MARGIN
    for layer in dense:
        shape, dtype = layer.w.shape, layer.w.dtype.name
        size = f"{shape[0]}x{shape[1]} mb{batch_size} {dtype}"
        times = _cached(
            f"dense {size}", keys, partial(measure_dense, shape, batch_size, dtype), fresh, record
        )
        layer.compiled = "compiled" in keys and times["compiled"] < times["numpy"] * faster
        layer.by_product = "product" in keys and times["product"] < times["formed"] * faster
        if layers.KERNELS is not None:  # a table of its own: records written before it keep theirs
            back = partial(measure_back, shape, batch_size, dtype)
            times = _cached(f"dense-back {size}", ["numpy", "compiled"], back, fresh, record)
            layer.compiled_back = times["compiled"] < times["numpy"] * faster


def measure_conv(
    shape: tuple[int, ...], in_shape: tuple[int, ...], batch_size: int, dtype: str
) -> dict[str, float]:
    """Seconds per filter gradient of a conv layer of filters `shape` (f, c, kh, kw) on a
    mini-batch of `in_shape` (c, h, w) images: by BLAS (`numpy`) and compiled (`compiled`)."""
    rng = np.random.default_rng(0)
    cols = patches(rng.random((batch_size, *in_shape)).astype(dtype), *shape[-2:])
    d = rng.standard_normal((shape[0], cols.shape[1])).astype(dtype)
    g = np.empty((shape[0], cols.shape[0]), dtype)
    runs: dict[str, Callable[[], object]] = {"numpy": lambda: g.__setitem__(..., (cols @ d.T).T)}
    if conv.KERNELS is not None:
        runs["compiled"] = lambda: conv.KERNELS.filter_grad(d, cols, g)  # type: ignore[attr-defined]
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
    twin.conv.compiled = layer.conv.compiled
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
    faster, by WAYS_MARGIN, as `dense_choices` (and for the same reasons float32 only, by the run's
    record first)."""
    layers_in = [  # each conv-pool layer with its input's shape and whether backward propagates
        (layer, in_shape, i > 0 or j > 0)
        for i, stack in enumerate(network.layers)
        if isinstance(stack, ConvStack)
        for j, (layer, in_shape) in enumerate(zip(stack.layers, stack.in_shapes, strict=True))
    ]
    for layer, _, _ in layers_in:
        layer.conv.compiled = layer.by_winners = False
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
        times = _cached(f"conv {size}", ["numpy", "compiled"], measure_now, fresh, record)
        layer.conv.compiled = times["compiled"] < times["numpy"] * faster
        if isinstance(layer.pool, MaxPool) and layer.pool.size == 2:
            case = f"conv-back {size} {type(layer.activation).__name__}{'' if propagate else ' first'}"
            measure_now = partial(measure_winners, layer, in_shape, batch_size, propagate)
            times = _cached(case, ["numpy", "winners"], measure_now, fresh, record)
            layer.by_winners = times["winners"] < times["numpy"] * faster
