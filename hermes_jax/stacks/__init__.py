"""Serving stacks: what software (vLLM, TensorRT-LLM, ...) reaches on a device, apart from its datasheet.

Names load on first use (``DEFAULT_STACK`` needs no JAX: the CLI's help shows it)."""

from __future__ import annotations

from .._lazy import lazy_attributes

DEFAULT_STACK = "vllm"

_PUBLIC = {"get_stack": ".catalog", "load_stack_file": ".catalog", "shipped_stacks": ".catalog",
           "stack_names": ".catalog", "register_stack": ".catalog", "STACK_FIELDS": ".profile",
           "KVSizing": ".profile", "StackProfile": ".profile", "profiles_from_toml": ".profile"}

__all__ = ["DEFAULT_STACK", *_PUBLIC]


__getattr__ = lazy_attributes(__name__, _PUBLIC)
