"""A static batch that does not fit, run the way vLLM's scheduler runs it: admit by current length,
preempt by recomputation when the KV cache runs out.

vLLM (0.4-0.6, the V0 scheduler without chunked prefill) admits waiting requests first-come
first-served while their *current* tokens fit the free KV blocks (less a 1% watermark), up to
``max_num_seqs`` sequences and ``max_num_batched_tokens`` tokens per prefill step, and runs a prefill
step whenever it admits any. Otherwise it decodes every running request; a request that needs a new
block when none is free preempts the latest-arrived running request (its blocks are freed, its
generated tokens kept) and the preempted request waits at the head of the queue to be prefilled again
over its prompt and generated tokens. A static batch thus starts with about twice as many requests
running as fit at their final length, sheds them as they grow, and re-prefills the shed ones later.

Which step runs when depends only on the batch and the block count (all requests arrive at once),
not on the time a step takes, so the schedule is computed once on the host (``preempt_schedule``)
and priced with the differentiable step costs (``scheduled_time``). A decode stretch prices its
requests at their mean context: a step's cost depends on the contexts through their sum (KV bytes,
attention FLOP), except under a sliding window.

Checked against the exact event-driven serving reference (``sim.reference``, whose continuous-batching
engine admits and preempts on its own) on the same batches arriving at once: the batch's last finish
within 0.3%, preemptions within 10% (calibration/check_preemption.py; one case in tests/test_preemption.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..engine import EngineSpec
from ..estimate import static_batch
from ..hardware.params import HardwareParams

WATERMARK = 0.01
"""Share of the KV blocks vLLM keeps free when it admits a request (``watermark`` in its block manager)."""


class Schedule(NamedTuple):
    """The steps of one static batch: prefill steps and stretches of decode steps.

    ``prefill_requests`` / ``prefill_tokens`` (one entry per prefill step): requests prefilled and
    their mean tokens (prompt plus tokens generated before a preemption). ``decode_requests`` /
    ``decode_context`` / ``decode_steps`` (one entry per stretch): running requests, their mean
    context at the stretch's first step (tokens) and its steps. ``first_prefill_steps``: prefill
    steps before the first decode step (the first tokens of the first admitted requests).
    ``preemptions``: requests preempted in all; ``recomputed_tokens``: tokens prefilled again."""

    prefill_requests: np.ndarray
    prefill_tokens: np.ndarray
    decode_requests: np.ndarray
    decode_context: np.ndarray
    decode_steps: np.ndarray
    first_prefill_steps: int
    preemptions: int
    recomputed_tokens: int


def preempt_schedule(blocks: int, block_size: int, batch: int, prompt: int, output: int,
                     max_num_seqs: int = 256, max_batched_tokens: int = 8192) -> Schedule:
    """Steps of ``batch`` requests of ``prompt`` + ``output`` tokens arriving at once, with ``blocks``
    KV blocks of ``block_size`` tokens (see the module doc). Requires one request to fit."""
    if batch < 1 or prompt < 1 or output < 1:
        raise ValueError(f"batch, prompt and output must be >= 1 (got {batch}, {prompt}, {output})")
    if math.ceil((prompt + output) / block_size) > blocks * (1.0 - WATERMARK):
        raise ValueError(f"one request of {prompt + output} tokens does not fit {blocks} blocks")
    watermark = int(WATERMARK * blocks)   # vLLM rounds it down
    length = np.full(batch, prompt, np.int64)     # tokens held by each request (prompt + generated)
    generated = np.zeros(batch, np.int64)
    held = np.zeros(batch, np.int64)               # blocks allocated to each request
    running = np.zeros(batch, bool)
    done = np.zeros(batch, bool)
    waiting: list[int] = list(range(batch))        # queue head first
    free = blocks
    pre_n, pre_tok, dec_n, dec_ctx, dec_k = [], [], [], [], []
    first_prefill_steps, decoded, preemptions, recomputed = 0, False, 0, 0

    while not done.all():
        # Prefill whatever the head of the queue lets in.
        admitted, tokens = [], 0
        n_running = int(running.sum())
        while waiting:
            i = waiting[0]
            need = math.ceil(length[i] / block_size)
            if free - need < watermark or n_running + len(admitted) >= max_num_seqs:
                break
            if admitted and tokens + length[i] > max_batched_tokens:
                break
            waiting.pop(0)
            admitted.append(i)
            tokens += int(length[i])
            free -= need
            held[i] = need
        if admitted:
            idx = np.array(admitted)
            pre_n.append(len(idx))
            pre_tok.append(tokens / len(idx))
            recomputed += int(generated[idx].sum())
            first_prefill_steps += 0 if decoded else 1
            running[idx] = True
            generated[idx] += 1
            length[idx] += 1
            free += _finish(idx, generated, output, held, running, done)
            continue
        if not running.any():
            raise RuntimeError("no request running or admissible: the schedule cannot progress")
        decoded = True
        # Decode stretch: every running request gains a token per step until one finishes or a
        # request needs a block that is not free.
        order = np.flatnonzero(running)            # arrival order is priority order
        left = output - generated[order]
        until_finish = int(left.min())
        # A request needs a new block at a step where its length is one past a whole block.
        first_need = (1 - length[order]) % block_size
        steps = until_finish
        demand = _block_demand(first_need, block_size, steps)
        if demand > free:   # find the step that runs out: the largest s with demand(s) <= free
            lo, hi = 0, steps
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _block_demand(first_need, block_size, mid) <= free:
                    lo = mid
                else:
                    hi = mid
            steps = lo
        if steps > 0:
            dec_n.append(len(order))
            dec_ctx.append(float(length[order].mean()) - 1.0)
            dec_k.append(steps)
            taken = _block_demand_each(first_need, block_size, steps)
            free -= int(taken.sum())
            held[order] += taken
            generated[order] += steps
            length[order] += steps
            free += _finish(order, generated, output, held, running, done)
            if steps == until_finish:
                continue
        # One step with a shortage: requests take blocks in priority order; a request finding none
        # preempts the latest-arrived running one (itself if it is the latest).
        order = list(np.flatnonzero(running))
        stepped = []
        while order:
            i = order.pop(0)
            if (length[i] - 1) % block_size == 0:   # needs a block this step
                while free == 0 and order:
                    victim = order.pop()
                    free += _preempt(victim, held, running)
                    waiting.insert(0, victim)
                    preemptions += 1
                if free == 0:
                    free += _preempt(i, held, running)
                    waiting.insert(0, i)
                    preemptions += 1
                    continue
                free -= 1
                held[i] += 1
            stepped.append(i)
        if stepped:
            idx = np.array(stepped)
            dec_n.append(len(idx))
            dec_ctx.append(float(length[idx].mean()) - 1.0)
            dec_k.append(1)
            generated[idx] += 1
            length[idx] += 1
            free += _finish(idx, generated, output, held, running, done)

    as_f = lambda x: np.asarray(x, float)
    return Schedule(as_f(pre_n), as_f(pre_tok), as_f(dec_n), as_f(dec_ctx), as_f(dec_k), first_prefill_steps,
                    preemptions, recomputed)


def _block_demand_each(first_need: np.ndarray, block_size: int, steps: int) -> np.ndarray:
    """New blocks each request needs over ``steps`` steps (it needs one at steps first_need, +block_size, ...)."""
    return np.where(first_need < steps, (steps - 1 - first_need) // block_size + 1, 0)


def _block_demand(first_need: np.ndarray, block_size: int, steps: int) -> int:
    return int(_block_demand_each(first_need, block_size, steps).sum())


def _finish(idx, generated, output, held, running, done) -> int:
    """Retire the requests of ``idx`` that have all their tokens; the blocks they free."""
    fin = idx[generated[idx] >= output]
    freed = int(held[fin].sum())
    held[fin] = 0
    running[fin] = False
    done[fin] = True
    return freed


def _preempt(i, held, running) -> int:
    freed = int(held[i])
    held[i] = 0
    running[i] = False
    return freed


class ScheduledTime(NamedTuple):
    """Seconds of each schedule (arrays (R,) for R schedules), differentiable in the parameters."""

    e2e_s: jax.Array             # s, the whole batch
    first_prefill_s: jax.Array   # s, the prefill steps before the first decode step
    first_decode_s: jax.Array    # s, the first decode step
    decode_s: jax.Array          # s, all decode steps (over sum(decode_steps) steps)


def scheduled_time(engine: EngineSpec, hw: HardwareParams, schedules: list[Schedule]) -> ScheduledTime:
    """Times of each schedule (``ScheduledTime``). Steps are priced in arrays padded to powers of
    two, so a grid of schedules compiles a few shapes, not one per schedule."""
    n_rows = len(schedules)
    pre_owner = np.concatenate([np.full(len(s.prefill_requests), k) for k, s in enumerate(schedules)])
    dec_owner = np.concatenate([np.full(len(s.decode_steps), k) for k, s in enumerate(schedules)])
    first = np.concatenate([np.arange(len(s.prefill_requests)) < s.first_prefill_steps for s in schedules])
    cat = lambda field: np.concatenate([getattr(s, field) for s in schedules])
    pre_n, pre_tok = _padded(cat("prefill_requests"), cat("prefill_tokens"))
    dec_n, dec_ctx, dec_k = _padded(cat("decode_requests"), cat("decode_context"), cat("decode_steps"))
    prefill = static_batch(engine, hw, pre_n, pre_tok, np.ones_like(pre_n)).prefill_s
    dec = static_batch(engine, hw, dec_n, dec_ctx, dec_k + 1.0)
    prefill, decode = prefill[: len(pre_owner)], dec.decode_total_s[: len(dec_owner)]
    zeros = jnp.zeros(n_rows, prefill.dtype)
    decode_s = zeros.at[dec_owner].add(decode)
    # A schedule's first decode stretch starts with its first decode step (a batch of one-token
    # requests has none).
    starts = np.cumsum([0] + [len(s.decode_steps) for s in schedules[:-1]])
    has_decode = np.array([len(s.decode_steps) > 0 for s in schedules])
    first_decode = jnp.where(has_decode, dec.decode_step_s[np.where(has_decode, starts, 0)], 0.0)
    return ScheduledTime(e2e_s=zeros.at[pre_owner].add(prefill) + decode_s,
                         first_prefill_s=zeros.at[pre_owner].add(jnp.where(first, prefill, 0.0)),
                         first_decode_s=first_decode, decode_s=decode_s)


def _padded(*columns):
    """Columns padded with ones to the next power of two (the padding is priced, then sliced off)."""
    n = len(columns[0])
    size = 1 << max(n - 1, 0).bit_length()
    return tuple(np.concatenate([c, np.ones(size - n)]) for c in columns)
