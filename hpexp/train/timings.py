"""Timings made once per machine and kept: the measured tables the engine chooses by.

`hpexp.train.batching` (how many members of a population train per pass) and `hpexp.train.ways`
(which way each layer computes) time real steps and choose the fastest; this module keeps what
they measured. A table is kept in this process, in a JSON file in the user's cache
(`$HPEXP_BATCHING_CACHE`, else platformdirs' user cache dir /hpexp/batching.json) and in each run's
own record, keyed by the machine (`machine`): CPU model, BLAS library, version, kernel and threads
(threadpoolctl), NumPy's version and the engine's code (a fingerprint of its sources).

    cached(case, keys, measure_now, fresh, measured)   the table of a case (measured if none yet)
    machine()                                          what the tables depend on
    clock()                                            what the measurements time by
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

__all__ = ["CACHE_ENV_VAR", "ROUNDS", "STEPS", "cache_path", "cached", "clock", "engine", "machine"]

CACHE_ENV_VAR = "HPEXP_BATCHING_CACHE"
STEPS, ROUNDS = 4, 7  # mini-batch steps per timing, timings per case
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
    "train/timings.py",
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


def clock() -> Callable[[], float]:
    """What the measurements time by: this thread's CPU time where BLAS runs on one thread (the
    study workers' and benchmarks' setting), else the wall clock (BLAS's own threads do the work).

    On a shared machine the wall clock charged a step with the time other processes held the core,
    and more often the longer the timing: under a load of 5 on 2 cores it timed a population of 8
    784-100-10 networks at mini-batch 100 at 568 us per network-step where it takes 322 of CPU
    (1 network: 333 and 340), so populations lost to one at a time that beat it by CPU time."""
    threads = [i.get("num_threads", 1) for i in threadpool_info() if i.get("user_api") == "blas"]
    return time.thread_time if all(n == 1 for n in threads) else time.perf_counter


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
