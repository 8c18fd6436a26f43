"""Package namespaces that import their names on first use (so the CLI's help needs no JAX)."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, names: dict[str, str]):
    """A module ``__getattr__`` for ``package``: ``names`` maps a public name to the (relative) module
    defining it; the value is imported on first access and kept in the package's namespace."""
    def __getattr__(name: str):
        if name in names:
            module = importlib.import_module(package)
            value = getattr(importlib.import_module(names[name], package), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
