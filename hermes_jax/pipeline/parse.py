"""Reading a client's ``pipeline = [...]`` from a scenario file: the stage registry, each kind's
fields, and the errors that name the file, line, client and field."""

from __future__ import annotations

from .retrieval import INDEXES, ROUTE_POLICIES, Embed, Rerank, Route, VectorSearch
from .stages import Generate, KVFetch, Reasoning, Stage

STAGES = {cls.kind: cls for cls in (Embed, VectorSearch, Rerank, KVFetch, Route, Reasoning, Generate)}
FIELDS = {
    "embed": {"on", "model", "query_tokens", "batch", "threads"},
    "rerank": {"on", "model", "query_tokens", "chunk_tokens", "candidates", "keep", "batch", "threads"},
    "vector_search": {"on", "index", "vectors", "dim", "bytes_per_dim", "ef", "degree", "nlist", "nprobe", "top_k",
                      "chunk_tokens", "visit_s", "descent", "code_s", "core_stream_bandwidth", "batch", "threads"},
    "kv_fetch": {"on", "hit_rate", "prefix_fraction", "compression", "block_tokens"},
    "route": {"on", "model", "query_tokens", "to", "policy", "weights", "thresholds", "escalate", "batch", "threads"},
    "reasoning": {"thinking", "rounds", "tool_wait_s", "tool_tokens"},
    "generate": {"engine", "prefill_engine", "decode_engine", "kv_link", "samples"},
}
REQUIRED = {"embed": ("on", "model"), "rerank": ("on", "model"), "vector_search": ("on",), "kv_fetch": ("on",),
            "route": ("on", "model", "to"), "reasoning": ("thinking",), "generate": ()}
INTEGER = {"query_tokens", "chunk_tokens", "candidates", "keep", "batch", "threads", "dim", "ef", "degree", "nlist",
           "nprobe", "top_k", "block_tokens", "rounds", "tool_tokens", "samples"}
STRINGS = {"on", "model", "engine", "prefill_engine", "decode_engine", "kv_link"}
CHOICES = {"index": INDEXES, "policy": ROUTE_POLICIES}
ZERO_OK = {"hit_rate", "visit_s", "tool_wait_s", "tool_tokens", "escalate"}


def parse_stage(data, k: int, where, index: int, client: str, base) -> Stage:
    from ..schema import Distribution, check_keys as _check_keys, choice as _choice, positive as _positive

    def error(name, message):
        return where.error("client", index, client, f"{key}.{name}" if name else key, message)

    key = f"pipeline[{k}]"
    if not isinstance(data, dict):
        raise error("", "expected a table like { stage = \"embed\", on = \"cpu\" }")
    kind = _choice(where, "client", index, client, data, f"{key}.stage", tuple(STAGES))
    _check_keys(where, "client", index, client, data, FIELDS[kind] | {"stage"}, prefix=key + ".")
    values: dict = {}
    for name in sorted(FIELDS[kind] & set(data)):
        value = data[name]
        if name in STRINGS or name in CHOICES:
            if not isinstance(value, str):
                raise error(name, f"must be a string, got {value!r}")
            if name in CHOICES and value not in CHOICES[name]:
                raise error(name, f"{value!r} is not allowed; allowed: {', '.join(CHOICES[name])}")
        elif name == "thinking":
            value = Distribution.parse(value, where, index, client, f"{key}.thinking", base)
        elif name == "hit_rate" and value == "trace":
            pass
        elif name == "to":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise error(name, f"must be a list of engine names, got {value!r}")
            value = tuple(value)
        elif name in ("weights", "thresholds"):
            if not isinstance(value, list):
                raise error(name, f"must be a list of numbers, got {value!r}")
            value = tuple(_positive(where, "client", index, client, {name: v}, f"{key}.{name}", allow_zero=True)
                          for v in value)
        else:
            value = _positive(where, "client", index, client, {name: value}, f"{key}.{name}", None,
                              integer=name in INTEGER, allow_zero=name in ZERO_OK)
            if name in ("hit_rate", "prefix_fraction", "escalate") and value > 1:
                raise error(name, f"must be in [0, 1], got {value}")
        values[name] = value
    for required in REQUIRED[kind]:
        if required not in values:
            raise error(required, "required")
    return STAGES[kind](**values)


def added_prompt_tokens(pipeline) -> int:
    """Tokens the RAG stages add to the prompt: passages kept x tokens per passage."""
    search = [s for s in pipeline if isinstance(s, VectorSearch)]
    rerank = [s for s in pipeline if isinstance(s, Rerank)]
    if rerank:
        return rerank[-1].keep * rerank[-1].chunk_tokens
    return search[-1].top_k * search[-1].chunk_tokens if search else 0


__all__ = ["STAGES", "parse_stage", "added_prompt_tokens"]
