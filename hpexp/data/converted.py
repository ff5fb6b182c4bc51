"""A published dataset's images converted once per machine, then memory-mapped by every process.

A new process used to spend 0.3-0.7 s loading MNIST: the verified read of the gzipped IDX files
(gunzip and SHA-256, about 0.25 s) and their conversion to floats, mostly the first touch of 190 MB
of fresh memory. Every study worker, `hpexp train` and book run paid it. With the `scale`
preprocessing (the book's bytes / 256) the converted images depend only on the file, the scale
and the dtype, so they are converted once, from the verified file, into the dataset's cache folder
(`converted/` under it), and later processes map that copy read-only (a few milliseconds; the OS
shares its pages between processes, so two workers hold one copy in memory, not two).

A copy is named by what it depends on: the file's resolved path, size and modification time (as
the in-process read cache is), its expected digest, the scale and the dtype; a changed file gets a
new copy. It is written to a temporary file and renamed into place, so no process maps half a copy;
a copy that cannot be written (a full disk, a read-only folder) leaves the conversion in memory, as
before, with one warning; one that cannot be read is converted and written again. Only published
datasets' IDX files, checked against their digests (data.verify, the default), are kept so: the
user's own files and the book's pickle are converted in memory every time.

$HPEXP_CONVERTED_DIR puts the copies elsewhere (a folder per dataset under it), or keeps none
when it is `off`. MNIST's take 220 MB in float32; deleting them at any time only costs a conversion.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpexp.data import sources
from hpexp.data.datasets import DATASETS, _verify, find_dir, name_of, read_arrays
from hpexp.data.files import idx_path, write_atomic
from hpexp.data.preprocess import fit
from hpexp.progress import log

__all__ = ["ENV_VAR", "FOLDER", "describe", "folder", "identity", "scaled"]

ENV_VAR = "HPEXP_CONVERTED_DIR"
FOLDER = "converted"  # under the dataset's cache folder, by default
VERSION = 1  # of the copies' layout: (n, features) rows, C order, as .npy
STALE = 600.0  # seconds after which a temporary file is a killed writer's, not a live one's
_warned: set[str] = set()  # folders already reported unwritable, once per process


def folder(name: str) -> Path | None:
    """Where dataset `name`'s converted copies are kept: $HPEXP_CONVERTED_DIR/NAME, else its cache
    folder's `converted/`; None with $HPEXP_CONVERTED_DIR=off."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env.lower() == "off":
        return None
    return Path(env).expanduser() / name if env else sources.cache_dir(name) / FOLDER


def describe(name: str) -> str:
    """Where dataset `name`'s copies are kept and what they hold, in a line (`hpexp data where`)."""
    where = folder(name)
    if where is None:
        return f"none kept (${ENV_VAR}=off)"
    copies = sorted(where.glob("*.npy")) if where.is_dir() else []
    size = sum(p.stat().st_size for p in copies) / 1e6
    return f"{where} ({len(copies)} file{'s' * (len(copies) != 1)}, {size:.0f} MB; delete them any time)"


def _sources(config: Mapping[str, Any], keys: list[str]) -> list[tuple[Path, str]] | None:
    """(file, expected digest) of each of `keys`, or None where no copy is kept (not a published
    dataset, its IDX files absent (the book's pickle in their place), data.verify=false, or
    $HPEXP_CONVERTED_DIR=off)."""
    name = name_of(config)
    if name not in DATASETS or not _verify(config) or folder(name) is None:
        return None
    ds = DATASETS[name]
    found = find_dir(ds, config.get("dir"), download=bool(config.get("download", True)))
    out = []
    for key in keys:
        file, digest = ds.files[key]
        path = idx_path(found.path, file)
        if path is None:
            return None
        out.append((path.resolve(), digest))
    return out


def identity(config: Mapping[str, Any], keys: list[str]) -> tuple[Any, ...] | None:
    """What the arrays of `keys` are, without reading them: each file's path, size and modification
    time (a key for a process's cache of splits), or None where no converted copy is kept."""
    found = _sources(config, keys)
    if found is None:
        return None
    stats = [(path, path.stat(), digest) for path, digest in found]
    return tuple((str(path), stat.st_size, stat.st_mtime_ns, digest) for path, stat, digest in stats)


def _copy_path(where: Path, path: Path, digest: str, scale: float, dtype: str) -> Path:
    """NAME-DTYPE-SOURCE-VERSION.npy: SOURCE hashes the file's path, the scale and the dtype (what a
    copy is of), VERSION its size, modification time and digest (which state of the file)."""
    stat = path.stat()
    source = f"{VERSION}\0{path}\0{float(scale)!r}\0{dtype}"
    version = f"{stat.st_size}\0{stat.st_mtime_ns}\0{digest}"
    return where / f"{path.name.split('.')[0]}-{dtype}-{_hash(source)}-{_hash(version)}.npy"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def scaled(config: Mapping[str, Any], key: str, dtype: str) -> np.ndarray | None:
    """The images of `key` (e.g. train_images) as rows of raw / data.scale in `dtype`, read-only:
    the machine's converted copy, memory-mapped, made first if there is none; None where no copy
    is kept (see the module docstring), for the caller to convert in memory."""
    found = _sources(config, [key])
    if found is None:
        return None
    (path, digest), scale, where = found[0], config.get("scale", 256.0), folder(name_of(config))
    assert where is not None  # as _sources found
    copy = _copy_path(where, path, digest, scale, dtype)
    try:
        x = np.asarray(np.load(copy, mmap_mode="r"))
        if x.dtype == np.dtype(dtype) and x.ndim == 2:
            return x
    except (OSError, ValueError):  # none yet, or unreadable: made again below
        pass
    raw = read_arrays(config, [key])[key]  # verified against its digest
    x = fit("scale", scale, None)(raw, dtype)
    _write(copy, x, path)
    x.flags.writeable = False
    return x


def _write(path: Path, x: np.ndarray, source: Path) -> None:
    """Save `x`, converted from `source`, to `path` (atomically, hpexp.data.files.write_atomic); a
    failure only warns (once per folder), leaving no temporary file behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a writer killed mid-copy (kill -9, a power cut) left its temporary file: gone after STALE
        for left in path.parent.glob(".*.npy.*"):
            if time.time() - left.stat().st_mtime > STALE:
                left.unlink(missing_ok=True)
        write_atomic(path, lambda f: np.save(f, x, allow_pickle=False))
        # the copies of the file as it was before: no process opens them again (one that has
        # mapped one keeps its pages until it lets go)
        for stale in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
        log.debug(
            f"data: {source.name} converted once, for later runs to map: {path} ({x.nbytes / 1e6:.0f} MB)"
        )
    except OSError as e:
        if str(path.parent) not in _warned:
            _warned.add(str(path.parent))
            log.warning(
                f"data: could not keep a converted copy in {path.parent} ({e.strerror or e}); "
                "converting in memory in each process instead"
            )
