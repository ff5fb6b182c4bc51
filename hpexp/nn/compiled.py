"""Where the engine finds its optional compiled kernels: hpexp.kernels (the `fast` extra: numba and
SciPy's BLAS), looked up by name at run time, so the engine imports NumPy only and runs, and is
tested, without them. HPEXP_KERNELS=numpy keeps the NumPy code, the reference they are tested against.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["kernels"]


def kernels(name: str) -> ModuleType | None:
    """hpexp.kernels.NAME if the `fast` extra is installed and HPEXP_KERNELS is not `numpy`, else None."""
    if os.environ.get("HPEXP_KERNELS", "").lower() == "numpy":
        return None
    try:
        return importlib.import_module(f"hpexp.kernels.{name}")
    except ImportError:  # the optional `fast` extra is not installed
        return None
