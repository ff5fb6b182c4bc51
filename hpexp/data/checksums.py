"""Checksums: the SHA-256 a file must have, and advice that fits where the file lives.

Published datasets are checked against the SHA-256 of their uncompressed IDX bytes (so a gzipped and
a raw copy of the same data agree); the user's own files, when a `sha256` map names them, against the
digest of the file as stored (what `sha256sum FILE` prints).
"""

from __future__ import annotations

import hashlib

from hpexp.data.files import DataError

__all__ = ["CACHE", "SYSTEM", "USER", "advice", "check", "sha256"]

# Where a file was found; the advice for a bad file depends on it.
CACHE, USER, SYSTEM = "cache", "user", "system"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(data: bytes, expected: str | None, label: str, fix: str) -> None:
    """A DataError naming `label` unless `data` has the SHA-256 `expected` (None: nothing to check)."""
    if expected is not None and (actual := sha256(data)) != expected.lower():
        raise DataError(f"{label} fails its checksum: expected sha256 {expected}, got {actual}; {fix}.")


def advice(origin: str, dataset: str, package: str | None = None, setting: str = "data.dir") -> str:
    """What to do about a missing or bad file: delete only what hpexp itself downloaded."""
    fetch = f"`hpexp data fetch {dataset}`"
    if origin == CACHE:
        return f"delete it and run {fetch}, or place the original files there by hand"
    if origin == SYSTEM:
        reinstall = f"`apt-get install --reinstall {package}`" if package else "reinstall its package"
        return f"restore it with {reinstall}, or set data.verify=false to use it as it is"
    return (
        f"replace it with a good copy ({fetch} puts a verified one in the cache, then unset {setting}), "
        f"or set data.verify=false to use it as it is"
    )
