"""Where hpexp's configuration folders live: inside the wheel, or beside the package in a checkout."""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_dir", "studies_dir"]

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hpexp cannot find its '{name}/' folder next to {_PACKAGE}")


def config_dir() -> Path:
    """The Hydra config folder (`conf/`)."""
    return _find("conf")


def studies_dir() -> Path:
    """The folder of study specs (`studies/`)."""
    return _find("studies")
