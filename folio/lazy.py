"""Names a package exports but imports only on first use, so `folio --help` never pays for torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], table: dict[str, str]) -> Callable:
    """A module `__getattr__` for `package`: a name in `table` is imported from the module it
    names on first use and cached in `namespace` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
