"""Stage kinds of a pipeline. Each is a small frozen class: its fields (static configuration), how it
is parsed and checked, the seconds of one batch on its resource (differentiable in the hardware
parameters), and what it does to the request (tokens added to the prompt or output, KV cached).

Assumptions, stated once: a RAG stage's per-query size is fixed per stage (``query_tokens``,
``chunk_tokens``), not per request; a CPU job runs on ``threads`` cores, so a pool of C cores is
C // threads servers; an accelerator pool runs one batch per device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError

INDEXES = ("hnsw", "ivf", "flat")


def _num(where, index, name, data, key, default, integer=False, allow_zero=False):
    from ..sim.scenario import _positive
    return _positive(where, "client", index, name, data, key, default, integer=integer, allow_zero=allow_zero)


@dataclass(frozen=True)
class Stage:
    kind = ""
    on: str = ""

    @property
    def node(self) -> str:
        return self.on

    def check(self, place: str, resources: dict, engines: set) -> str:
        if self.on not in resources:
            raise ConfigError(f"{place} on: unknown resource {self.on!r}; defined: {', '.join(resources) or 'none'}")
        allowed = self.resource_kinds
        if resources[self.on].kind not in allowed:
            raise ConfigError(f"{place} on: {self.on!r} is a {resources[self.on].kind} resource; a {self.kind} stage "
                              f"runs on {' or '.join(allowed)}")
        return self.on

    # stations with batching (cpu, accelerator pools)
    batch: int = 1
    threads: int = 1


@dataclass(frozen=True)
class Encoder(Stage):
    """Shared by embed and rerank: an encoder model over ``sequences`` x ``tokens`` per query."""

    model: str = ""
    resource_kinds = ("cpu", "accelerator")

    def sequences_and_tokens(self) -> tuple[int, int]:
        raise NotImplementedError

    def check(self, place, resources, engines):
        node = super().check(place, resources, engines)
        from ..models.config import get_model
        try:
            model = get_model(self.model)
        except ConfigError as exc:
            raise ConfigError(f"{place} model: {exc}") from None
        _, tokens = self.sequences_and_tokens()
        if tokens > model.max_context:
            raise ConfigError(f"{place}: {tokens} tokens per sequence exceed {self.model}'s {model.max_context}")
        res = resources[self.on]
        if res.kind == "accelerator":
            from ..hardware.catalog import get_hardware
            capacity = float(get_hardware(res.hardware).params.hbm_capacity)
            need = model.weight_bytes("bf16")
            if need > capacity:
                raise ConfigError(f"{place}: {self.model} needs {need / 1e9:.1f} GB of weights, {res.hardware} "
                                  f"holds {capacity / 1e9:.1f} GB")
        return node

    def batch_seconds(self, resource, params):
        """(batch,) seconds for batches of 1..batch queries."""
        from ..engine import EngineSpec
        from ..hardware.catalog import get_hardware
        from ..iteration import iteration_cost
        from ..kernels.transfer import cpu_time
        from ..models.config import get_model
        seqs, tokens = self.sequences_and_tokens()
        k = jnp.arange(1, self.batch + 1, dtype=params.log["hbm_bandwidth"].dtype)[:, None]
        spec = EngineSpec(get_model(self.model), get_hardware(resource.hardware).spec)
        cost = iteration_cost(spec, params, tokens + 0 * k, 0 * k, 0 * k, copies=k * seqs)
        if resource.kind == "accelerator":
            return cost.time
        return cpu_time(params, cost.op_flop.sum(-1), cost.op_bytes.sum(-1), float(self.threads))


@dataclass(frozen=True)
class Embed(Encoder):
    kind = "embed"
    query_tokens: int = 32

    def sequences_and_tokens(self):
        return 1, self.query_tokens


@dataclass(frozen=True)
class Rerank(Encoder):
    """Cross-encoder over the search's candidates (query + passage each); keeps ``keep`` passages."""

    kind = "rerank"
    query_tokens: int = 32
    chunk_tokens: int = 128
    candidates: int = 10
    keep: int = 3

    def sequences_and_tokens(self):
        return self.candidates, self.query_tokens + self.chunk_tokens


@dataclass(frozen=True)
class VectorSearch(Stage):
    """Approximate nearest-neighbour search on CPU cores, one query per ``threads`` cores.

    Per query: distance computations x dim, each vector read from DRAM. Graph indexes (HNSW, DiskANN)
    visit ``ef`` x ``degree`` candidates plus a log-depth descent; IVF scans ``nlist`` centroids and
    ``nprobe`` lists of vectors / nlist; flat scans every vector. Each distance costs 2 dim FLOP and
    dim x ``bytes_per_dim`` bytes, at the core's FLOP rate or its share of DRAM bandwidth, whichever
    is slower, plus ``visit_s`` per graph hop (pointer chasing)."""

    kind = "vector_search"
    resource_kinds = ("cpu",)
    index: str = "hnsw"
    vectors: float = 1e7
    dim: int = 768
    bytes_per_dim: float = 4.0
    ef: int = 64
    degree: int = 32
    nlist: int = 4096
    nprobe: int = 16
    top_k: int = 10
    chunk_tokens: int = 128
    visit_s: float = 1e-7

    def distances(self) -> float:
        if self.index == "flat":
            return self.vectors
        if self.index == "ivf":
            return self.nlist + self.nprobe * self.vectors / self.nlist
        return self.ef * self.degree + self.degree * math.log2(max(self.vectors, 2.0))

    def batch_seconds(self, resource, params):
        n = self.distances()
        flop, nbytes = 2.0 * n * self.dim, n * self.dim * self.bytes_per_dim
        cores = float(self.threads)
        per_query = jnp.maximum(flop / (cores * params.cpu_core_flops),
                                nbytes / (params.cpu_dram_bandwidth * cores / params.cpu_cores))
        if self.index == "hnsw":
            per_query = per_query + self.visit_s * (self.ef + math.log2(max(self.vectors, 2.0))) / cores
        k = jnp.arange(1, self.batch + 1, dtype=per_query.dtype)
        return per_query * k


@dataclass(frozen=True)
class KVFetch(Stage):
    """Fetch the request's stored prompt prefix KV from a tier or over a link; a miss is recomputed.

    Hit tokens: a share ``prefix_fraction`` of the prompt, present with probability ``hit_rate``;
    or, with ``hit_rate = "trace"``, the leading prompt blocks whose ``hash_ids`` an earlier request
    already had (Mooncake traces, ``block_tokens`` tokens per hash). Bytes: hit tokens x the
    generating model's KV bytes per token / ``compression``."""

    kind = "kv_fetch"
    resource_kinds = ("tier", "link")
    hit_rate: float | str = 1.0
    prefix_fraction: float = 1.0
    compression: float = 1.0
    block_tokens: int = 512


@dataclass(frozen=True)
class Reasoning(Stage):
    """Thinking tokens generated before the answer: they lengthen the output (and the context)."""

    kind = "reasoning"
    thinking: object = None    # a scenario Distribution
    resource_kinds = ()

    @property
    def node(self) -> str:
        return ""

    def check(self, place, resources, engines):
        return ""


@dataclass(frozen=True)
class Generate(Stage):
    kind = "generate"
    engine: str = ""

    @property
    def node(self) -> str:
        return f"engine:{self.engine}"

    def check(self, place, resources, engines):
        if self.engine not in engines:
            raise ConfigError(f"{place} engine: unknown engine {self.engine!r}; defined: {', '.join(sorted(engines))}")
        return self.node


STAGES = {cls.kind: cls for cls in (Embed, VectorSearch, Rerank, KVFetch, Reasoning, Generate)}
FIELDS = {
    "embed": {"on", "model", "query_tokens", "batch", "threads"},
    "rerank": {"on", "model", "query_tokens", "chunk_tokens", "candidates", "keep", "batch", "threads"},
    "vector_search": {"on", "index", "vectors", "dim", "bytes_per_dim", "ef", "degree", "nlist", "nprobe", "top_k",
                      "chunk_tokens", "visit_s", "batch", "threads"},
    "kv_fetch": {"on", "hit_rate", "prefix_fraction", "compression", "block_tokens"},
    "reasoning": {"thinking"},
    "generate": {"engine"},
}
INTEGER = {"query_tokens", "chunk_tokens", "candidates", "keep", "batch", "threads", "dim", "ef", "degree", "nlist",
           "nprobe", "top_k", "block_tokens"}


def parse_stage(data, k: int, where, index: int, client: str, base) -> Stage:
    from ..sim.scenario import Distribution, _check_keys, _choice
    key = f"pipeline[{k}]"
    if not isinstance(data, dict):
        raise where.error("client", index, client, key, "expected a table like { stage = \"embed\", on = \"cpu\" }")
    kind = _choice(where, "client", index, client, data, f"{key}.stage", tuple(STAGES))
    _check_keys(where, "client", index, client, data, FIELDS[kind] | {"stage"}, prefix=key + ".")
    values: dict = {}
    for name in sorted(FIELDS[kind]):
        if name not in data:
            continue
        value = data[name]
        if name in ("on", "model", "engine", "index"):
            if not isinstance(value, str):
                raise where.error("client", index, client, f"{key}.{name}", f"must be a string, got {value!r}")
            if name == "index" and value not in INDEXES:
                raise where.error("client", index, client, f"{key}.index", f"{value!r} is not allowed; allowed: "
                                  f"{', '.join(INDEXES)}")
        elif name == "thinking":
            value = Distribution.parse(value, where, index, client, f"{key}.thinking", base)
        elif name == "hit_rate" and value == "trace":
            pass
        else:
            value = _num(where, index, client, {name: value}, f"{key}.{name}", None, integer=name in INTEGER,
                         allow_zero=name in ("hit_rate", "visit_s"))
            if name in ("hit_rate", "prefix_fraction") and value > 1:
                raise where.error("client", index, client, f"{key}.{name}", f"must be in [0, 1], got {value}")
        values[name] = value
    for required in {"embed": ("on", "model"), "rerank": ("on", "model"), "vector_search": ("on",),
                     "kv_fetch": ("on",), "reasoning": ("thinking",), "generate": ("engine",)}[kind]:
        if required not in values:
            raise where.error("client", index, client, f"{key}.{required}", "required")
    return STAGES[kind](**values)


def added_prompt_tokens(pipeline) -> int:
    """Tokens the RAG stages add to the prompt: passages kept x tokens per passage."""
    search = [s for s in pipeline if isinstance(s, VectorSearch)]
    rerank = [s for s in pipeline if isinstance(s, Rerank)]
    if rerank:
        return rerank[-1].keep * rerank[-1].chunk_tokens
    return search[-1].top_k * search[-1].chunk_tokens if search else 0


def prefix_hits(stage: KVFetch, inputs: np.ndarray, hash_ids, rng: np.random.Generator) -> np.ndarray:
    """Cached prompt tokens per request (at most input - 1: the last prompt token is always computed)."""
    if stage.hit_rate == "trace":
        if hash_ids is None:
            raise ConfigError("kv_fetch hit_rate = \"trace\" needs a trace with hash_ids (format = \"mooncake\")")
        seen: set = set()
        hits = np.zeros(len(inputs), np.int64)
        for i, ids in enumerate(hash_ids):
            n = 0
            while n < len(ids) and ids[n] in seen:
                n += 1
            hits[i] = n * stage.block_tokens
            seen.update(ids)
    else:
        hit = rng.random(len(inputs)) < stage.hit_rate
        hits = np.where(hit, np.floor(stage.prefix_fraction * inputs), 0).astype(np.int64)
    return np.clip(hits, 0, np.maximum(inputs - 1, 0))


__all__ = ["Stage", "Embed", "VectorSearch", "Rerank", "KVFetch", "Reasoning", "Generate", "STAGES", "parse_stage",
           "added_prompt_tokens", "prefix_hits"]
