"""Freed memory kept in the process for the next mini-batch, where the C library's malloc is glibc's.

A training step allocates and frees arrays of the same sizes every mini-batch: a conv layer's
patches (1.3 MB for conv-pool(40) at mini-batch 10), its output, their gradients. glibc serves a
block above a threshold by mmap, and hands the free top of its heap back to the system once it
is larger than another, so the next step takes the same memory back a page fault per 4 KB page:
56 to 198 faults per step of conv2 (20, 40 maps) on this project's machine, and its step 1.3-1.7 ms
instead of 1.2-1.3. `keep_freed_memory` raises both thresholds (mallopt) once per process, so the
heap serves those blocks and keeps what they free: a process holds on to its largest step's
memory, as it had it at its peak anyway.

Elsewhere (macOS, musl, Windows) it does nothing; nor where the user set glibc's own
MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_, which are kept.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 * 2**20  # blocks up to this from the heap (glibc's largest on 64-bit)
TRIM_THRESHOLD = 256 * 2**20  # free heap top kept up to this
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (once per process); True if it does."""
    global _kept
    if _kept is None:
        _kept = not any(name in os.environ for name in USER_SETTINGS) and (
            _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    return _kept


def _mallopt(param: int, value: int) -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # no mallopt: not glibc, its allocator as it is
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(param, value) == 1)
