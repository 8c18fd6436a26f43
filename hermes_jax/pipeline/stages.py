"""Stage kinds of a pipeline that are not retrieval: the base class, KV-cache fetch, reasoning and
generate. Each stage is a small frozen class: its fields (static configuration), how it is checked
against the scenario's resources and engines, and what it does to the request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Stage:
    kind = ""
    resource_kinds = ()
    on: str = ""
    batch: int = 1       # cpu or accelerator pools: queries per batch
    threads: int = 1     # cpu pools: cores per job

    @property
    def node(self) -> str:
        """The resource it runs on ("" for none)."""
        return self.on

    def check(self, place: str, resources: dict, engines: set) -> None:
        if self.on not in resources:
            raise ConfigError(f"{place} on: unknown resource {self.on!r}; defined: {', '.join(resources) or 'none'}")
        if resources[self.on].kind not in self.resource_kinds:
            raise ConfigError(f"{place} on: {self.on!r} is a {resources[self.on].kind} resource; a {self.kind} stage "
                              f"runs on {' or '.join(self.resource_kinds)}")


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
    """Thinking before the answer, in ``rounds`` rounds: each round generates ``thinking`` tokens
    (drawn per round); between rounds a tool or verifier runs for ``tool_wait_s`` and returns
    ``tool_tokens`` tokens, and the next round's prompt is the grown context, whose KV the engine
    still holds (prefix reuse), so only the tool tokens are prefilled again. The last round ends with
    the answer. Placed before ``generate``; it has no resource of its own."""

    kind = "reasoning"
    thinking: object = None    # a scenario Distribution: thinking tokens per round
    rounds: int = 1
    tool_wait_s: float = 0.0
    tool_tokens: int = 0

    @property
    def node(self) -> str:
        return ""

    def check(self, place, resources, engines):
        return None


@dataclass(frozen=True)
class Generate(Stage):
    """Prefill and decode of the reply, the last stage. On one engine (``engine``); disaggregated
    (``prefill_engine`` computes the prompt and the first token, the prompt's KV crosses ``kv_link``,
    ``decode_engine`` generates the rest); or, after a ``route`` stage, on the engine it picks (no
    engine named). ``samples`` > 1 is best-of-n: n samples of the reply share the prompt's KV (it is
    prefilled once) and the reply is ready when the last sample finishes."""

    kind = "generate"
    engine: str = ""
    prefill_engine: str = ""
    decode_engine: str = ""
    kv_link: str = ""
    samples: int = 1

    @property
    def node(self) -> str:
        return f"engine:{self.engine}" if self.engine else ""

    @property
    def disaggregated(self) -> bool:
        return bool(self.prefill_engine)

    def engines(self) -> tuple[str, ...]:
        return (self.prefill_engine, self.decode_engine) if self.disaggregated else ((self.engine,) if self.engine else ())

    def check(self, place, resources, engines):
        for field in ("engine", "prefill_engine", "decode_engine"):
            name = getattr(self, field)
            if name and name not in engines:
                raise ConfigError(f"{place} {field}: unknown engine {name!r}; defined: {', '.join(sorted(engines))}")
        if self.disaggregated:
            if self.engine or not self.decode_engine or not self.kv_link:
                raise ConfigError(f"{place}: a disaggregated generate names prefill_engine, decode_engine and kv_link "
                                  "(and no engine)")
            if self.prefill_engine == self.decode_engine:
                raise ConfigError(f"{place}: prefill_engine and decode_engine must differ")
            if self.samples > 1:
                raise ConfigError(f"{place} samples: best-of-n is not supported with disaggregated prefill/decode")
            if self.kv_link not in resources or resources[self.kv_link].kind not in ("link", "tier"):
                raise ConfigError(f"{place} kv_link: {self.kv_link!r} is not a link or tier resource; defined: "
                                  f"{', '.join(resources) or 'none'}")
        elif self.decode_engine or self.kv_link:
            raise ConfigError(f"{place}: decode_engine and kv_link need prefill_engine (disaggregated prefill/decode)")


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


__all__ = ["Stage", "KVFetch", "Reasoning", "Generate", "prefix_hits"]
