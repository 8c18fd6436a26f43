"""Serving stacks: what software (vLLM, TensorRT-LLM, ...) reaches on a device, apart from its datasheet.

Names load on first use (``DEFAULT_STACK`` needs no JAX: the CLI's help shows it)."""

from __future__ import annotations

import importlib

DEFAULT_STACK = "vllm"

_PUBLIC = {"get_stack": ".catalog", "load_stack_file": ".catalog", "shipped_stacks": ".catalog",
           "stack_names": ".catalog", "STACK_FIELDS": ".profile", "KVSizing": ".profile", "StackProfile": ".profile",
           "profiles_from_toml": ".profile"}

__all__ = ["DEFAULT_STACK", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hermes_jax.stacks' has no attribute {name!r}")
