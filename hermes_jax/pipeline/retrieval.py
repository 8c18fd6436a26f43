"""Retrieval stages (RAG) and the router: encoder models (query embedding, cross-encoder rerank,
the router's classifier) and approximate nearest-neighbour search, with their batch service times
(differentiable in the hardware parameters).

Assumptions: a stage's per-query size is fixed (``query_tokens``, ``chunk_tokens``), not per
request; a CPU job runs on ``threads`` cores, so a pool of C cores is C // threads servers; an
accelerator pool runs one batch per device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from .stages import Stage

INDEXES = ("hnsw", "ivf", "flat")


@dataclass(frozen=True)
class Encoder(Stage):
    """Shared by embed and rerank: an encoder model over ``sequences`` x ``tokens`` per query."""

    model: str = ""
    resource_kinds = ("cpu", "accelerator")

    def sequences_and_tokens(self) -> tuple[int, int]:
        raise NotImplementedError

    def check(self, place, resources, engines):
        super().check(place, resources, engines)
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


def _fitted() -> dict:
    from ..tomlio import load_toml
    return load_toml(Path(__file__).with_name("vector_search_fit.toml"))


FIT = _fitted()


@dataclass(frozen=True)
class VectorSearch(Stage):
    """Approximate nearest-neighbour search on CPU cores; a query runs on ``threads`` cores (ideal
    intra-query speed-up), so a pool of C cores serves C // threads queries at once.

    Per query, in seconds on one core (each thread streams at min(``core_stream_bandwidth``, the
    node's DRAM bandwidth / cores)):
    - graph (``hnsw``; DiskANN/Vamana alike): degree x (ef + ``descent`` x log2 vectors) distance
      evaluations, each a random vector fetch (``visit_s``, DRAM latency amortized over the
      memory-level parallelism) plus dim x ``bytes_per_dim`` bytes streamed and 2 dim FLOP;
    - ``ivf``: the nlist float32 centroids (read once per batch of queries), then nprobe lists of
      vectors / nlist codes of dim x ``bytes_per_dim`` bytes, ``code_s`` per code (decode, heap)
      and 2 dim FLOP per vector;
    - ``flat``: every code, as one IVF list.
    Recall@k: logit(recall) = a + b ln(knob), knob ef (graph) or nprobe (ivf), flat exact.
    ``visit_s``, ``descent``, ``code_s``, ``core_stream_bandwidth`` and the recall curves are
    fitted to big-ann-benchmarks NeurIPS'23 (``calibration/fit_vector_search.py``, which writes
    ``vector_search_fit.toml`` with its provenance and held-out error); recall depends on the
    dataset, so the curves are those of text2image-10M (graph) and yfcc-10M (ivf)."""

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
    visit_s: float = FIT["graph"]["visit_s"]
    descent: float = FIT["graph"]["descent"]
    code_s: float = FIT["ivf"]["code_s"]
    core_stream_bandwidth: float = FIT["ivf"]["core_stream_bandwidth"]

    def _seconds(self, params):
        """(shared, per query) seconds on ``threads`` cores: a batch of IVF queries scans the
        centroids once (the coarse quantizer is one GEMM over the batch), everything else is per
        query."""
        bandwidth = jnp.minimum(self.core_stream_bandwidth, params.cpu_dram_bandwidth / params.cpu_cores)
        code_bytes = self.dim * self.bytes_per_dim
        shared = 0.0
        if self.index == "hnsw":
            n = self.degree * (self.ef + self.descent * math.log2(max(self.vectors, 2.0)))
            one = n * (self.visit_s + code_bytes / bandwidth + 2.0 * self.dim / params.cpu_core_flops)
        else:
            lists, codes = (self.nlist, self.nprobe * self.vectors / self.nlist) if self.index == "ivf" \
                else (0, self.vectors)
            shared = lists * self.dim * 4.0 / bandwidth
            one = codes * code_bytes / bandwidth + codes * self.code_s + 2.0 * self.dim * (lists + codes) / params.cpu_core_flops
        return shared / self.threads, one / self.threads

    def query_seconds(self, params):
        """Seconds of one query alone on ``threads`` cores (differentiable in the CPU parameters)."""
        shared, one = self._seconds(params)
        return shared + one

    def batch_seconds(self, resource, params):
        shared, one = self._seconds(params)
        k = jnp.arange(1, self.batch + 1, dtype=params.log["cpu_core_flops"].dtype)
        return shared + one * k

    def recall(self) -> float:
        """Recall@k (fitted curve, clipped to [0, 1])."""
        if self.index == "flat":
            return 1.0
        fit = FIT["graph" if self.index == "hnsw" else "ivf"]
        knob = self.ef if self.index == "hnsw" else self.nprobe
        return 1.0 / (1.0 + math.exp(-(fit["recall_a"] + fit["recall_b"] * math.log(knob))))


ROUTE_POLICIES = ("probability", "prompt_length", "cascade")


@dataclass(frozen=True)
class Route(Encoder):
    """Pick the engine of the following ``generate`` stage. The router is a small classifier model
    (``model``, over the first ``query_tokens`` tokens of the prompt) on its own resource.

    Policies over ``to`` (engine names):
    - ``probability``: engine i with probability ``weights[i]``;
    - ``prompt_length``: the first engine whose threshold the prompt does not exceed
      (``thresholds``, ascending, one fewer than engines; longer prompts go to the last);
    - ``cascade``: every request starts on ``to[0]``; each answer is escalated to the next engine
      with probability ``escalate`` (the verifier's rejection rate), the prompt prefilled afresh.
      The user sees the last engine's answer."""

    kind = "route"
    query_tokens: int = 128
    to: tuple = ()
    policy: str = "probability"
    weights: tuple = ()
    thresholds: tuple = ()
    escalate: float = 0.0

    def sequences_and_tokens(self):
        return 1, self.query_tokens

    def check(self, place, resources, engines):
        super().check(place, resources, engines)
        if len(self.to) < 2 or len(set(self.to)) != len(self.to):
            raise ConfigError(f"{place} to: name two or more different engines, got {list(self.to)}")
        for name in self.to:
            if name not in engines:
                raise ConfigError(f"{place} to: unknown engine {name!r}; defined: {', '.join(sorted(engines))}")
        if self.policy == "probability":
            if len(self.weights) != len(self.to) or abs(sum(self.weights) - 1) > 1e-6 or min(self.weights) < 0:
                raise ConfigError(f"{place} weights: one non-negative weight per engine in to, summing to 1; got "
                                  f"{list(self.weights)}")
        elif self.policy == "prompt_length":
            t = list(self.thresholds)
            if len(t) != len(self.to) - 1 or t != sorted(t):
                raise ConfigError(f"{place} thresholds: {len(self.to) - 1} ascending prompt lengths (tokens), got {t}")
        elif not 0 <= self.escalate <= 1:
            raise ConfigError(f"{place} escalate: a probability in [0, 1], got {self.escalate}")

    def choose(self, prompt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N,) the index in ``to`` of each request's (first) engine."""
        if self.policy == "probability":
            return rng.choice(len(self.to), size=len(prompt), p=np.asarray(self.weights, float))
        if self.policy == "prompt_length":
            return np.searchsorted(np.asarray(self.thresholds, float), prompt, side="left")
        return np.zeros(len(prompt), np.int64)

    def escalations(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(N,) cascade: how many times each request is escalated (0 .. len(to) - 1)."""
        if self.policy != "cascade":
            return np.zeros(n, np.int64)
        up = rng.random((n, len(self.to) - 1)) < self.escalate
        return np.cumprod(up, axis=1).sum(axis=1)
