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

Which way each layer computes (compiled or by BLAS) is measured, cached and recorded the same way,
in the same tables (hpexp.train.ways).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from threadpoolctl import threadpool_info

from hpexp.nn.activations import Sigmoid
from hpexp.nn.costs import CrossEntropy
from hpexp.nn.init import Default
from hpexp.nn.layers import Dense
from hpexp.nn.network import Network
from hpexp.nn.optimizers import SGD
from hpexp.nn.population import stack, stack_fields
from hpexp.nn.regularizers import Regularizer
from hpexp.train.step import mini_batch_steps

__all__ = [
    "CACHE_ENV_VAR",
    "SIZES",
    "cache_path",
    "cached",
    "chunk",
    "chunk_for",
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
_tables: dict[str, dict[str, float]] = {}  # this process's tables, by machine + case


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


ENGINE = (
    "nn",
    "kernels",
    "train/loop.py",
    "train/step.py",
    "train/batching.py",
    "train/ways.py",
)  # under hpexp/


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


def cached(
    case: str,
    keys: Sequence[str],
    measure_now: Callable[[], dict[str, float]],
    fresh: bool,
    measured: dict[str, dict[str, float]] | None = None,
    added: Sequence[str] = (),
) -> dict[str, float]:
    """The table of `case`: from the run's own record `measured` (what it chose by so far), else for
    this machine from this process, the cache file, or (none yet, or `fresh`) measured now and
    cached; then kept in `measured`.

    `added`: keys a table has since a later version (a way added): a record written before has
    `keys` only and is taken as it is, so the run goes on choosing among the ways it chose from."""
    own = None if fresh or measured is None else measured.get(case)
    if _complete(own, keys):
        return own  # type: ignore[return-value]
    key = machine()
    cached = None if fresh else _tables.get(f"{key} || {case}") or _load().get(key, {}).get(case)
    whole = [*keys, *added]
    found: dict[str, float] = cached if _complete(cached, whole) else measure_now()  # type: ignore[assignment]
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
