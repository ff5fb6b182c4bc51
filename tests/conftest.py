"""Shared fixtures: where the real MNIST is, small configs, and every option of every config group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpexp.paths import config_dir


@pytest.fixture(scope="session", autouse=True)
def batching_cache(tmp_path_factory):
    """Populations measure how to run on this machine (hpexp.train.batching); tests keep that
    measurement in a file of their own, never in the user's cache."""
    from hpexp.train import batching

    path = tmp_path_factory.mktemp("batching") / "batching.json"
    previous = os.environ.get(batching.CACHE_ENV_VAR)
    os.environ[batching.CACHE_ENV_VAR] = str(path)
    yield path
    if previous is None:
        del os.environ[batching.CACHE_ENV_VAR]
    else:
        os.environ[batching.CACHE_ENV_VAR] = previous


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST: $HPEXP_DATA_DIR (CI sets it) or hpexp's cache (filled by `hpexp data fetch`)."""
    from hpexp.data import mnist as data

    try:
        return data.find_data_dir(os.environ.get("HPEXP_DATA_DIR"), download=False)
    except data.DataError as e:
        pytest.skip(f"no MNIST here ({e}); set HPEXP_DATA_DIR or run `hpexp data fetch`")


def group_options(group: str) -> list[str]:
    """Every option of a config group, read from conf/ so a new YAML file is tested automatically."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def load_option(group: str, name: str):
    from hydra.utils import instantiate

    return instantiate(OmegaConf.load(config_dir() / group / f"{name}.yaml"))


SMALL = [
    "data.n_train=500",
    "data.n_validation=200",
    "train.epochs=2",
]
