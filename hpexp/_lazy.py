"""Public names of a package, imported from their modules on first use (PEP 562).

A package's `__init__` lists what it exports without importing it: `import hpexp.nn` stays cheap,
and a low module can be imported without pulling in the heavy libraries of its siblings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(
    package: str, names: Mapping[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """`__all__, __getattr__, __dir__` for `package`, whose name N lives in module `names[N]`."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = names[name] if names[name].startswith("hpexp") else f"{package}.{names[name]}"
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return sorted(names), __getattr__, __dir__
