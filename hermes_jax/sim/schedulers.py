"""Batch schedulers: which queued requests join, and how many tokens each slot runs this iteration.

A scheduler is a small static object passed to the simulator (and to the reference), not a string
threaded through it. Both simulators call the same two methods with NumPy (reference) or JAX
(time-stepped) arrays, so their semantics cannot drift apart:

- ``may_admit(active_slots)``: whether new requests may join now;
- ``admission_tokens(prompt)``: tokens a joining request charges against ``max_batch_tokens``;
- ``compose(prompt_left, active, order, max_batch_tokens)``: tokens per slot this iteration.

``prompt_left`` is the prefill still to do per slot (0 once decoding), ``order`` the admission
sequence number (older first).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Continuous:
    """Orca / vLLM (v0) iteration-level batching: a prefill iteration runs every newly admitted
    prompt whole (decodes wait); otherwise every running request decodes one token. Admission
    charges each prompt against the token budget."""

    name: str = "continuous"

    def may_admit(self, xp, active_slots):
        return active_slots >= 0

    def admission_tokens(self, xp, prompt):
        return prompt

    def compose(self, xp, prompt_left, active, order, budget):
        prefilling = active & (prompt_left > 0)
        decode = (active & (prompt_left == 0)).astype(prompt_left.dtype)
        return xp.where(prefilling.any(), xp.where(prefilling, prompt_left, 0), decode)


@dataclass(frozen=True)
class Static:
    """Static batching: a batch is admitted only when the engine is empty, prefilled together, and
    decodes until its last request finishes."""

    name: str = "static"

    def may_admit(self, xp, active_slots):
        return active_slots == 0

    def admission_tokens(self, xp, prompt):
        return prompt

    def compose(self, xp, prompt_left, active, order, budget):
        return Continuous().compose(xp, prompt_left, active, order, budget)


@dataclass(frozen=True)
class Chunked:
    """Sarathi-style chunked prefill: every iteration has a token budget; decodes take one token
    each, and the rest goes to prefill chunks in admission order (FCFS). Admission is limited by
    slots and KV blocks only; long prompts are split across iterations."""

    name: str = "chunked"

    def may_admit(self, xp, active_slots):
        return active_slots >= 0

    def admission_tokens(self, xp, prompt):
        return 0 * prompt

    def compose(self, xp, prompt_left, active, order, budget):
        decode = (active & (prompt_left == 0)).astype(prompt_left.dtype)
        left = budget - decode.sum()
        want = xp.where(active, prompt_left, 0)
        rank = xp.argsort(xp.where(active & (prompt_left > 0), order, 2**30))
        inverse = xp.argsort(rank)
        before = (xp.cumsum(want[rank]) - want[rank])[inverse]   # prefill tokens of older slots
        chunk = xp.clip(left - before, 0, want)
        return decode + chunk


SCHEDULERS = {"continuous": Continuous(), "static": Static(), "chunked": Chunked()}
