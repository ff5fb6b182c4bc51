"""Optuna's DaskStorage: a study held in memory by a Dask scheduler (`storage: dask://HOST:PORT`).

The scheduler at HOST:PORT keeps one Optuna InMemoryStorage named `hpexp` for all studies; every
process that reaches the scheduler (the coordinator, the workers' tasks, a report on another
machine) opens the same storage by that name. The study lives as long as the scheduler does.
Needs the `dask` extra (dask[distributed], optuna-integration).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import optuna

from hpexp.train.runner import ConfigError

__all__ = ["SCHEME", "STORAGE_NAME", "client_for", "is_dask_url", "open_dask_storage", "scheduler_address"]

SCHEME = "dask://"
STORAGE_NAME = "hpexp"  # the name the scheduler keeps the storage under


def is_dask_url(storage: Any) -> bool:
    return isinstance(storage, str) and storage.startswith(SCHEME)


def scheduler_address(url: str) -> str:
    """`dask://HOST:PORT` -> `tcp://HOST:PORT` (a tcp://, tls:// or ucx:// address passes through)."""
    if is_dask_url(url):
        rest = url[len(SCHEME) :]
        address = rest if "://" in rest else f"tcp://{rest}"
    else:
        address = url if "://" in url else f"tcp://{url}"
    host_port = address.split("://", 1)[1]
    if not host_port or ":" not in host_port or not host_port.rsplit(":", 1)[1].isdigit():
        raise ConfigError(f"a Dask scheduler address is HOST:PORT (e.g. dask://127.0.0.1:8786), got {url!r}")
    return address


def _distributed() -> Any:
    try:
        import distributed
        import optuna_integration  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"Dask needs the dask extra: pip install 'hpexp[dask]' ({e.name} is not installed)"
        ) from None
    return distributed


def client_for(address: str, timeout: float = 10) -> Any:
    """A Dask client connected to `address`: the worker's own client inside one of its tasks,
    else one client per address and process (opened once)."""
    distributed = _distributed()
    try:
        worker = distributed.get_worker()
    except ValueError:
        worker = None
    if worker is not None and _same(worker.scheduler.address, address):
        return distributed.get_client()
    return _client(address, timeout)


def _same(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return s.replace("localhost", "127.0.0.1").rstrip("/")

    return norm(a) == norm(b)


@functools.cache
def _client(address: str, timeout: float) -> Any:
    distributed = _distributed()
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except OSError as e:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {e}") from None


def open_dask_storage(url: str) -> optuna.storages.BaseStorage:
    """The study storage kept by the Dask scheduler at `url` (registered there on first use)."""
    client = client_for(scheduler_address(url))
    from optuna_integration import DaskStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return DaskStorage(name=STORAGE_NAME, client=client)
