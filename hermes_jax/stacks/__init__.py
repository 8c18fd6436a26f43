"""Serving stacks: what software (vLLM, TensorRT-LLM, ...) reaches on a device, apart from its datasheet."""

from .catalog import DEFAULT_STACK, get_stack, load_stack_file, shipped_stacks, stack_names
from .profile import STACK_FIELDS, KVSizing, StackProfile, profiles_from_toml

__all__ = ["DEFAULT_STACK", "get_stack", "load_stack_file", "shipped_stacks", "stack_names", "STACK_FIELDS",
           "KVSizing", "StackProfile", "profiles_from_toml"]
