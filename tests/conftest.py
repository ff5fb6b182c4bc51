"""Shared fixtures: where the real MNIST is, small configs, and every option of every config group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpexp.paths import config_dir


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    value = os.environ.get("HPEXP_DATA_DIR")
    if not value:
        pytest.skip("HPEXP_DATA_DIR is not set: point it at a folder with the four MNIST files")
    return Path(value)


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
