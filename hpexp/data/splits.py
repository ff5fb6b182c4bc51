"""The splits: training, validation and test, cut from a dataset as its config says.

Validation comes from the dataset's own validation arrays when it has them; otherwise it is held out
of the official training data: `data.holdout` examples (a count, or a fraction of the training
arrays), by default the LAST part (MNIST's rule since the book: deterministic, nothing to record),
or with `data.holdout_order: shuffled` a random part drawn with `data.holdout_seed` (recorded in
the run's config). Training is the rest; `data.n_train` / `data.n_validation` take their first N
(null: all). The test split is the dataset's test arrays, read only when asked for.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpexp.data import converted, preprocess
from hpexp.data.datasets import (
    VAL_KEYS,
    Info,
    _key,
    check_labels,
    describe,
    example_shape,
    has_val_arrays,
    read_arrays,
)
from hpexp.data.files import DataError

__all__ = ["SPLITS", "Split", "load", "sizes"]

SPLITS = ("train", "val", "test")
ORDERS = ("last", "shuffled")


@dataclass(frozen=True, eq=False)  # == on arrays is elementwise, so Splits compare by identity
class Split:
    """One split: `x` (n, features) floats, preprocessed as configured; `y` (n,) int64 labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, x={self.x.dtype}{self.x.shape}, y={self.y.dtype})"


def _count(name: str, value: Any, upper: int) -> int:
    if value is None:
        return upper
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 < value <= upper:
        raise ValueError(f"{name} must be an integer in 1..{upper}, got {value!r}")
    return int(value)


def holdout_indices(config: Mapping[str, Any], info: Info) -> tuple[np.ndarray, np.ndarray | None]:
    """(training indices, validation indices into the training arrays, or None when the
    dataset has its own validation arrays)."""
    n = info.n_train_official
    if info.n_val_arrays is not None:
        return np.arange(n), None
    given = config.get("holdout")
    holdout = info.holdout if given is None else given
    if isinstance(holdout, float) and 0 < holdout < 1:
        count = round(holdout * n)
    elif isinstance(holdout, int) and not isinstance(holdout, bool):
        count = holdout
    else:
        raise ValueError(f"data.holdout must be a count or a fraction in (0, 1), got {holdout!r}")
    if not 0 < count < n:
        raise ValueError(
            f"data.holdout = {holdout!r} leaves {n - count} of {n} training examples; give 1..{n - 1}"
        )
    order = config.get("holdout_order") or "last"
    if order not in ORDERS:
        raise ValueError(f"data.holdout_order must be one of {list(ORDERS)}, got {order!r}")
    if order == "last":
        return np.arange(n - count), np.arange(n - count, n)
    seed = config.get("holdout_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"data.holdout_seed must be an integer, got {seed!r}")
    permutation = np.random.default_rng(seed).permutation(n)
    return np.sort(permutation[: n - count]), np.sort(permutation[n - count :])


def sizes(config: Mapping[str, Any]) -> tuple[int, int]:
    """(training, validation) sizes the config gives, checked against the dataset."""
    info = describe(config)
    train, val = holdout_indices(config, info)
    n_val = len(val) if val is not None else info.n_val_arrays
    assert n_val is not None
    return (
        _count("data.n_train", config.get("n_train"), len(train)),
        _count("data.n_validation", config.get("n_validation"), n_val),
    )


def load(
    config: Mapping[str, Any], *, splits: Sequence[str] = SPLITS, dtype: str = "float32"
) -> dict[str, Split]:
    """The splits named by `splits`, each converted once per process while its files are unchanged
    (read-only, so runs share them). Only the files those splits need are read."""
    if isinstance(splits, str) or not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty list of {', '.join(SPLITS)}; got {splits!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    preprocess.check(config.get("preprocess") or "scale", config.get("scale", 256.0))
    sizes(config)  # bad counts fail before any conversion
    return {split: _split(_key(config), split, dtype, _files_key(config, split)) for split in splits}


def _files_key(config: Mapping[str, Any], split: str) -> tuple[Any, ...]:
    """What a cached split is valid for: the files it comes from, by path, size and modification
    time where a converted copy is kept (hpexp.data.converted, not read here), else the arrays
    (their identity changes when a file changes, since reading is cached on each file's size and
    modification time)."""
    keys = _keys(config, split)
    if _converts(config) and (files := converted.identity(config, keys)) is not None:
        return files
    return tuple((k, _Ref(a)) for k, a in read_arrays(config, keys).items())


def _converts(config: Mapping[str, Any]) -> bool:
    """Whether the examples are raw / data.scale, which a converted copy can hold."""
    return (config.get("preprocess") or "scale") == "scale"


class _Ref:
    """An array as part of a cache key: equal to a _Ref of the same array object (so a changed
    file, read again into a new array, misses the cache), and kept alive by the key."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Ref) and other.array is self.array

    def __hash__(self) -> int:
        return id(self.array)


def _keys(config: Mapping[str, Any], split: str) -> list[str]:
    if split == "test":
        return ["test_images", "test_labels"]
    if split == "val" and has_val_arrays(config):
        return list(VAL_KEYS)
    return ["train_images", "train_labels"]


@functools.lru_cache(maxsize=3)
def _split(key: str, split: str, dtype: str, files: tuple[Any, ...]) -> Split:
    config = json.loads(key)
    info = describe(config)
    n_train, n_val = sizes(config)
    train_idx, val_idx = holdout_indices(config, info)
    images_key, labels_key = _keys(config, split)
    # the machine's converted copy of the images, where one is kept: its rows are x already
    rows = converted.scaled(config, images_key, dtype) if _converts(config) else None
    arrays = read_arrays(config, [labels_key] if rows is not None else [images_key, labels_key])
    images: np.ndarray = arrays[images_key] if rows is None else rows
    labels = arrays[labels_key]
    if split == "test":
        label = f"{info.name} test"
        # (a converted copy is of a published file, whose digest fixed its shape)
        if rows is None and example_shape(images, f"{label} images") != info.shape:
            raise DataError(
                f"{label} images have examples of shape {images.shape[1:]}, but the training "
                f"examples are {info.shape}"
            )
        check_labels(labels, f"{label} labels", len(images), info.n_classes)
        index: np.ndarray | slice = slice(None)
    elif split == "val":
        index = val_idx[:n_val] if val_idx is not None else slice(0, n_val)
    else:
        index = train_idx[:n_train]
    if rows is None:
        x = _preprocess(key)(images[index], dtype)
        if not np.all(np.isfinite(x)):
            raise DataError(f"{info.name} {split} examples hold NaN or infinite values")
    else:  # bytes / scale, all finite; a view where the split is a run of rows
        x = rows[_as_slice(index)]
    y = labels[index].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return Split(x=x, y=y)


def _as_slice(index: np.ndarray | slice) -> np.ndarray | slice:
    """A run of consecutive indices as a slice (rows taken by it are a view, not a copy)."""
    if isinstance(index, slice) or len(index) == 0:
        return index
    first, last = int(index[0]), int(index[-1])
    if last - first + 1 == len(index) and np.array_equal(index, np.arange(first, last + 1)):
        return slice(first, last + 1)
    return index


@functools.lru_cache(maxsize=2)
def _preprocess(key: str) -> preprocess.Preprocess:
    """The preprocessing fitted on the training split (the n_train examples used, nothing else)."""
    config = json.loads(key)
    method = config.get("preprocess") or "scale"
    if method == "scale":
        return preprocess.fit(method, config.get("scale", 256.0), None)
    n_train, _ = sizes(config)
    train_idx, _ = holdout_indices(config, describe(config))
    raw = read_arrays(config, ["train_images"])["train_images"]
    return preprocess.fit(method, config.get("scale", 256.0), raw[train_idx[:n_train]])
