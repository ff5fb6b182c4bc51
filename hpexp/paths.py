"""Where hpexp's configuration folders live: inside the wheel, or beside the package in a checkout."""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["config_dir", "source_commit", "studies_dir"]

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


@functools.cache
def source_commit() -> str:
    """The git commit of the code running (suffixed `+changes` when its hpexp/ or conf/ differ from
    it), or `unknown` outside a git checkout (an installed wheel). Asked once per process, so a
    long command asks at its start: a commit made while it trains is not the code it loaded."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(_PACKAGE), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = git("status", "--porcelain", "--", "hpexp", "conf").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changed else "")
