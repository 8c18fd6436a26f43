"""State pytrees of the time-stepped simulator. R replicas, B slots per replica, Q queue entries per
replica, N requests. Times are float32 seconds *relative to the start of the current step* (the
global time of step s is s * dt, never accumulated), so float32 keeps microsecond resolution over
hours; request events are stored as (step index, offset) pairs and joined in float64 on the host."""

from __future__ import annotations

from typing import NamedTuple

import jax


class Requests(NamedTuple):
    """Arrival-sorted requests routed to one engine group (device inputs)."""

    arrival_step: jax.Array   # (N,) int32, step in which the request arrives
    arrival_off: jax.Array    # (N,) float32 s, arrival time minus arrival_step * dt
    input_tokens: jax.Array   # (N,) int32 tokens
    output_tokens: jax.Array  # (N,) int32 tokens (>= 1)
    cached: jax.Array         # (N,) int32 prompt tokens whose KV arrives with the request (< input_tokens)
    admissible: jax.Array     # (N,) bool, False: rejected before routing (too long for the model or KV)
    priority: jax.Array       # (N,) int32, smaller is admitted first when the engine orders by priority
    next_request: jax.Array   # (N,) int32, closed loop: the user's next request (-1: none)
    think: jax.Array          # (N,) float32 s, closed loop: think time after this request's reply
    user: jax.Array           # (N,) int32, closed-loop user (-1: open loop)
    step_first: jax.Array     # (S + 1,) int32, index of the first request arriving in each step


class Slots(NamedTuple):
    """Requests resident on each replica (in its KV cache); req = -1 marks an empty slot."""

    req: jax.Array            # (R, B) int32 request index
    prompt_left: jax.Array    # (R, B) int32 tokens still to prefill (input, plus output so far after a recompute)
    context: jax.Array        # (R, B) int32 tokens whose KV is in the cache
    generated: jax.Array      # (R, B) int32 output tokens sampled so far
    target: jax.Array         # (R, B) int32 output tokens wanted
    order: jax.Array          # (R, B) int32 admission sequence number (older = smaller)
    alloc: jax.Array          # (R, B) int32 tokens of KV blocks allocated
    shift: jax.Array          # (R, B) float32 s, always 0: carries the anchored estimator's gradient correction
    last_token: jax.Array     # (R, B) float32 s, when the slot's request sampled its last token (step-relative)
    max_gap: jax.Array        # (R, B) float32 s, longest time between consecutive output tokens so far


class Records(NamedTuple):
    """Per-request outcome; step fields are -1 until the event happens."""

    replica: jax.Array        # (N,) int32, -1 until routed
    admit_step: jax.Array     # (N,) int32, first admission into a batch
    admit_off: jax.Array      # (N,) float32 s
    first_step: jax.Array     # (N,) int32, first output token
    first_off: jax.Array      # (N,) float32 s
    finish_step: jax.Array    # (N,) int32, last output token
    finish_off: jax.Array     # (N,) float32 s
    preemptions: jax.Array    # (N,) int32
    generated: jax.Array      # (N,) int32 output tokens sampled (kept across preemptions)
    rejected: jax.Array       # (N,) bool: queue full or not admissible
    max_itl: jax.Array        # (N,) float32 s, longest inter-token gap (at finish, or at the last preemption)
    last_step: jax.Array      # (N,) int32, step of the last token before the last preemption (-1: none)
    last_off: jax.Array       # (N,) float32 s, its offset
    arr_step: jax.Array       # (N,) int32, arrival step (closed-loop requests: set when the previous reply comes)
    arr_off: jax.Array        # (N,) float32 s, arrival offset in that step
    pending: jax.Array        # (U,) int32, per closed-loop user the request waiting to be routed (-1: none)


class SimState(NamedTuple):
    slots: Slots
    clock: jax.Array          # (R,) float32 s, when each replica is next free, relative to the step start
    queue: jax.Array          # (R, Q) int32 ring buffer of waiting request indices
    queue_done: jax.Array     # (R, Q) int32 output tokens a waiting request already has (-1: never admitted)
    head: jax.Array           # (R,) int32 ring position of the oldest waiting request
    tail: jax.Array           # (R,) int32 ring position after the newest
    admitted: jax.Array       # (R,) int32 admissions so far (source of Slots.order)
    last_tau: jax.Array       # (R,) float32 s, duration of the iteration that ended at ``clock`` (0 after idle)
    routed: jax.Array         # () int32 requests routed so far (round robin)
    deferred: jax.Array       # () int32 steps whose iteration cap was reached before the step ended
    records: Records


class StepTrace(NamedTuple):
    """Per-step, per-replica time series (scan outputs, shape (S, R))."""

    batch: jax.Array          # active sequences at the step end
    kv_blocks: jax.Array      # KV blocks allocated at the step end
    busy_s: jax.Array         # s of iterations started in the step
    queued: jax.Array         # waiting requests at the step end
    flop: jax.Array           # FLOP per device of iterations started in the step
    bytes: jax.Array          # B of HBM traffic per device of iterations started in the step
