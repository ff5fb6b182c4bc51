"""File formats: IDX (gzipped or not), and atomic writes.

Parsing checks the structure (magic number, header, length); checksums are `checksums`' business.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["DataError", "decompress", "idx_path", "parse_idx", "read_bytes", "write_atomic"]

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(Exception):
    """Missing, corrupt or undownloadable data; the message names the file and the fix."""


def idx_path(data_dir: Path, name: str) -> Path | None:
    """The file holding `name` in `data_dir`: raw preferred (no decompression), else gzipped."""
    return next((p for p in (data_dir / name, data_dir / f"{name}.gz") if p.is_file()), None)


def decompress(data: bytes, label: str, fix: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{label} is not a valid gzip file ({e}); {fix}.") from e


def read_bytes(path: Path, fix: str) -> tuple[bytes, bytes]:
    """(the file's bytes as stored, its content: decompressed when the name ends in .gz)."""
    try:
        stored = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}; {fix}.") from e
    return stored, decompress(stored, str(path), fix) if str(path).endswith(".gz") else stored


def parse_idx(data: bytes, label: str, fix: str) -> np.ndarray:
    """Parse IDX bytes: 0, 0, a type byte, ndim; ndim big-endian uint32 sizes; the data."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_TYPES or data[3] == 0:
        raise DataError(
            f"{label} is not an IDX file (magic number {data[:4].hex() or 'missing'}, "
            f"expected 0000, a type byte such as 08 and a dimension count); {fix}."
        )
    header = 4 + 4 * data[3]
    dtype = np.dtype(IDX_TYPES[data[2]])
    dims = struct.unpack(f">{data[3]}I", data[4:header]) if len(data) >= header else None
    expected = header + math.prod(dims) * dtype.itemsize if dims else header
    if len(data) != expected:
        raise DataError(
            f"{label} has {len(data)} bytes but its header (shape {dims}) needs "
            f"{expected}: the file is truncated or damaged; {fix}."
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Write a temporary file beside `path` (`data`, or what `data(file)` writes into it), then
    rename it: no reader sees half a file, and a failed or interrupted write leaves nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
