"""Time-stepped simulation of one engine group (R replicas of one EngineSpec) as a pure init/step pair.

Each step of ``dt`` first routes the requests arriving in the step to replicas (the router sees the
replicas as they are at the step start), then lets every replica run up to ``iterations`` engine
iterations back to back. An iteration starts when its replica becomes free, at a continuous time,
and takes the service time of its batch (``iteration_cost``), so latencies are never quantized to
``dt``. At each iteration boundary the scheduler admits queued requests that have arrived by then,
preempts (recompute) the newest requests if the KV cache would overflow, and composes the batch.
If a replica still has work when its iteration cap is reached, it simply continues in the next step
from its own clock (counted in ``deferred``); only routing depends on ``dt``.

Work per step is O(R (A + iterations * B)): it grows with load, not with the length of the trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from ..engine import EngineSpec
from ..hardware.params import HardwareParams
from ..iteration import iteration_cost
from .state import Records, Requests, SimState, Slots, StepTrace

I32, F32 = jnp.int32, jnp.float32


@dataclass(frozen=True)
class GroupConfig:
    """Static configuration of an engine group (shapes, policies, counts)."""

    spec: EngineSpec
    replicas: int
    slots: int                 # B = max_batch_size
    queue: int                 # Q, waiting requests per replica
    admit: int                 # candidates examined per admission
    block_size: int            # tokens per KV block
    max_batch_tokens: int
    scheduler: object
    router: str
    dt: float                  # s
    iterations: int            # cap on iterations per replica per step
    arrivals: int              # cap on arrivals per step (max over the trace)


def init(cfg: GroupConfig, n_requests: int) -> SimState:
    R, B, N = cfg.replicas, cfg.slots, n_requests
    zeros = jnp.zeros((R, B), I32)
    slots = Slots(req=jnp.full((R, B), -1, I32), prompt_left=zeros, context=zeros, generated=zeros, target=zeros,
                  order=zeros, alloc=zeros)
    never = jnp.full((N,), -1, I32)
    records = Records(replica=never, admit_step=never, admit_off=jnp.zeros(N, F32), first_step=never,
                      first_off=jnp.zeros(N, F32), finish_step=never, finish_off=jnp.zeros(N, F32),
                      preemptions=jnp.zeros(N, I32), generated=jnp.zeros(N, I32), rejected=jnp.zeros(N, bool))
    return SimState(slots=slots, clock=jnp.zeros(R, F32), queue=jnp.zeros((R, cfg.queue), I32),
                    queue_done=jnp.zeros((R, cfg.queue), I32), head=jnp.zeros(R, I32), tail=jnp.zeros(R, I32), admitted=jnp.zeros(R, I32),
                    routed=jnp.zeros((), I32), deferred=jnp.zeros((), I32), records=records)


def _blocks(tokens, block_size):
    return (tokens + block_size - 1) // block_size


# ------------------------------------------------------------------------------------------ routing
def _route(cfg: GroupConfig, state: SimState, req: Requests, kv_capacity, s):
    """Append the requests arriving in step ``s`` to replica queues."""
    first, last = req.step_first[s], req.step_first[s + 1]
    N = req.input_tokens.shape[0]

    def one(j, st):
        i = first + j
        valid = i < last
        i_safe = jnp.minimum(i, N - 1)
        ok = valid & req.admissible[i_safe]
        active = (st.slots.req >= 0).sum(-1)
        waiting = st.tail - st.head
        if cfg.router == "round_robin":
            r = st.routed % cfg.replicas
        elif cfg.router == "least_outstanding":
            r = jnp.argmin(active + waiting)
        else:  # least_kv: smallest share of KV blocks in use
            r = jnp.argmin(_blocks(st.slots.alloc, cfg.block_size).sum(-1) / kv_capacity)
        room = (st.tail[r] - st.head[r]) < cfg.queue
        push = ok & room
        at = st.tail[r] % cfg.queue
        queue = st.queue.at[r, at].set(jnp.where(push, i_safe, st.queue[r, at]))
        queue_done = st.queue_done.at[r, at].set(jnp.where(push, -1, st.queue_done[r, at]))
        tail = st.tail.at[r].add(push.astype(I32))
        rec = st.records
        idx = jnp.where(valid, i_safe, N)  # out of range: dropped
        rec = rec._replace(replica=rec.replica.at[idx].set(jnp.where(push, r, -1), mode="drop"),
                           rejected=rec.rejected.at[idx].set(~push, mode="drop"))
        return st._replace(queue=queue, queue_done=queue_done, tail=tail, routed=st.routed + ok.astype(I32), records=rec)

    return jax.lax.fori_loop(0, cfg.arrivals, one, state)


# ------------------------------------------------------------------------------------------ one replica
def _iteration(cfg: GroupConfig, hw: HardwareParams, req: Requests, s, kv_capacity, carry):
    """One scheduler decision plus one engine iteration on one replica; returns events (B,)."""
    slots, clock, queue, queue_done, head, tail, admitted, busy, work = carry
    B, M, Q, bs = cfg.slots, cfg.admit, cfg.queue, cfg.block_size
    dt = jnp.asarray(cfg.dt, F32)
    now = clock
    active = slots.req >= 0

    # --- admission: a prefix of the queue that has arrived, fits free slots, KV blocks and tokens
    j = jnp.arange(M)
    cand = queue[(head + j) % Q]
    in_queue = j < (tail - head)
    arrival = (req.arrival_step[cand] - s).astype(F32) * dt + req.arrival_off[cand]
    history = queue_done[(head + j) % Q]
    done_before = jnp.maximum(history, 0)
    prompt = req.input_tokens[cand] + done_before
    need_blocks = _blocks(prompt, bs)
    used_blocks = _blocks(slots.alloc, bs).sum()
    tokens = cfg.scheduler.admission_tokens(jnp, prompt)
    prefill_now = jnp.where(active, slots.prompt_left, 0).sum()
    n_active = active.sum()
    ok = (in_queue & (arrival <= now) & (j < B - n_active)
          & (jnp.cumsum(need_blocks) <= kv_capacity - used_blocks)
          & (prefill_now + jnp.cumsum(tokens) <= cfg.max_batch_tokens)
          & cfg.scheduler.may_admit(jnp, n_active))
    ok = jnp.cumprod(ok.astype(I32)).astype(bool)          # FCFS: stop at the first that cannot join
    n_admit = ok.sum()
    free_rank = jnp.where(active, B, jnp.cumsum(~active) - 1)
    take = (~active) & (free_rank < n_admit)
    pick = jnp.clip(free_rank, 0, M - 1)
    new_req = cand[pick]
    slots = Slots(req=jnp.where(take, new_req, slots.req),
                  prompt_left=jnp.where(take, prompt[pick], slots.prompt_left),
                  context=jnp.where(take, 0, slots.context),
                  generated=jnp.where(take, done_before[pick], slots.generated),
                  target=jnp.where(take, req.output_tokens[new_req], slots.target),
                  order=jnp.where(take, admitted + pick, slots.order),
                  alloc=jnp.where(take, prompt[pick], slots.alloc))
    admit_event = jnp.where(take & (history[pick] < 0), new_req, -1)
    head = head + n_admit
    admitted = admitted + n_admit
    active = slots.req >= 0

    # --- batch composition and KV check: preempt the newest requests (recompute) until it fits
    new = cfg.scheduler.compose(jnp, slots.prompt_left, active, slots.order, cfg.max_batch_tokens)
    need = jnp.where(active, jnp.maximum(slots.alloc, slots.context + new), 0)
    rank = jnp.argsort(jnp.where(active, slots.order, 2**30))
    inverse = jnp.argsort(rank)
    fits = (jnp.cumsum(_blocks(need, bs)[rank]) <= kv_capacity)[inverse]
    evict = active & ~fits
    n_evict = evict.sum()
    evict_rank = jnp.cumsum(jnp.where(evict, 1, 0)[rank])[inverse] - 1   # oldest evicted first
    position = jnp.where(evict, head - n_evict + evict_rank, Q * 4)
    queue = queue.at[jnp.where(evict, position % Q, Q)].set(slots.req, mode="drop")
    queue_done = queue_done.at[jnp.where(evict, position % Q, Q)].set(slots.generated, mode="drop")
    head = head - n_evict
    preempt_event = jnp.where(evict, slots.req, -1)
    preempt_generated = slots.generated
    slots = slots._replace(req=jnp.where(evict, -1, slots.req))
    active = slots.req >= 0
    new = jnp.where(active, new, 0)
    alloc = jnp.where(active, jnp.maximum(slots.alloc, slots.context + new), 0)

    # --- the iteration itself
    logits = active & (new > 0) & (slots.prompt_left <= new)   # prefill completes, or a decode step
    f = hw.log["hbm_bandwidth"].dtype
    cost = iteration_cost(cfg.spec, hw, new.astype(f), slots.context.astype(f), logits.astype(f))
    running = active.any()
    tau = jnp.where(running, cost.time.astype(F32), 0.0)
    end = now + tau
    generated = slots.generated + logits.astype(I32)
    first_event = jnp.where(logits & (slots.generated == 0), slots.req, -1)
    finished = logits & (generated >= slots.target)
    finish_event = jnp.where(finished, slots.req, -1)
    slots = Slots(req=jnp.where(finished, -1, slots.req), prompt_left=jnp.maximum(slots.prompt_left - new, 0),
                  context=slots.context + new, generated=generated, target=slots.target, order=slots.order,
                  alloc=jnp.where(finished, 0, alloc))

    # idle: jump to the next arrival in the queue, else to the step end
    waiting = tail > head
    nxt = queue[head % Q]
    next_arrival = (req.arrival_step[nxt] - s).astype(F32) * dt + req.arrival_off[nxt]
    idle_to = jnp.where(waiting & (next_arrival > now), jnp.minimum(next_arrival, dt), dt)
    clock = jnp.where(running, end, jnp.maximum(now, idle_to))
    events = (admit_event, now, first_event, finish_event, end, preempt_event, preempt_generated)
    flop = jnp.where(running, cost.op_flop.sum(), 0.0).astype(F32)
    traffic = jnp.where(running, (cost.op_bytes * (cost.op_network == 0)).sum(), 0.0).astype(F32)
    return (slots, clock, queue, queue_done, head, tail, admitted, busy + tau, work + jnp.stack([flop, traffic])), events


def _replica_step(cfg, hw, req, s, kv_capacity, slots, clock, queue, queue_done, head, tail, admitted):
    """Up to ``cfg.iterations`` iterations of one replica inside step ``s``; events (K, B)."""
    dt = jnp.asarray(cfg.dt, F32)
    B = cfg.slots
    none = (jnp.full(B, -1, I32), jnp.zeros((), F32), jnp.full(B, -1, I32), jnp.full(B, -1, I32), jnp.zeros((), F32),
            jnp.full(B, -1, I32), jnp.zeros(B, I32))

    def body(carry, _):
        go = carry[1] < dt
        def work(c):
            # keep dtypes fixed whatever jax_enable_x64 promotes sums to
            out = _iteration(cfg, hw, req, s, kv_capacity, c)
            return jax.tree_util.tree_map(lambda x, like: x.astype(like.dtype), out, (c, none))

        return jax.lax.cond(go, work, lambda c: (c, none), carry)

    carry = (slots, clock, queue, queue_done, head, tail, admitted, jnp.zeros((), F32), jnp.zeros(2, F32))
    carry, events = jax.lax.scan(body, carry, None, length=cfg.iterations)
    return carry, events


def step(cfg: GroupConfig, hw: HardwareParams, req: Requests, kv_capacity, state: SimState, s):
    """Advance every replica by one ``dt`` step. ``hw`` has a leading replica axis (R)."""
    state = _route(cfg, state, req, kv_capacity, s)
    rec = state.records
    run = jax.vmap(partial(_replica_step, cfg), in_axes=(0, None, None, 0, 0, 0, 0, 0, 0, 0, 0))
    carry, ev = run(hw, req, s, kv_capacity, state.slots, state.clock, state.queue, state.queue_done, state.head,
                    state.tail, state.admitted)
    slots, clock, queue, queue_done, head, tail, admitted, busy, work = carry
    admit_ev, start, first_ev, finish_ev, end, preempt_ev, preempt_gen = ev  # (R, K, B) / (R, K)
    N = rec.replica.shape[0]

    def scatter(field, index, values):
        index = jnp.where(index >= 0, index, N).reshape(-1)
        return field.at[index].set(jnp.broadcast_to(values, index.shape).reshape(-1), mode="drop")

    start_b = jnp.broadcast_to(start[..., None], admit_ev.shape)
    end_b = jnp.broadcast_to(end[..., None], admit_ev.shape)
    step_i = jnp.asarray(s, I32)
    rec = rec._replace(
        admit_step=scatter(rec.admit_step, admit_ev, step_i), admit_off=scatter(rec.admit_off, admit_ev, start_b.reshape(-1)),
        first_step=scatter(rec.first_step, first_ev, step_i), first_off=scatter(rec.first_off, first_ev, end_b.reshape(-1)),
        finish_step=scatter(rec.finish_step, finish_ev, step_i), finish_off=scatter(rec.finish_off, finish_ev, end_b.reshape(-1)),
        generated=scatter(rec.generated, preempt_ev, preempt_gen.reshape(-1)),
        preemptions=rec.preemptions.at[jnp.where(preempt_ev >= 0, preempt_ev, N).reshape(-1)].add(1, mode="drop"))
    # A replica whose clock is still inside the step ran out of iterations: it goes on next step.
    deferred = state.deferred + jnp.any(clock < cfg.dt).astype(I32)
    trace = StepTrace(batch=(slots.req >= 0).sum(-1), kv_blocks=_blocks(slots.alloc, cfg.block_size).sum(-1),
                      busy_s=busy, queued=tail - head, flop=work[:, 0], bytes=work[:, 1])
    new_state = SimState(slots=slots, clock=clock - cfg.dt, queue=queue, queue_done=queue_done, head=head, tail=tail, admitted=admitted,
                         routed=state.routed, deferred=deferred, records=rec)
    return new_state, trace


@partial(jax.jit, static_argnums=0)
def run(cfg: GroupConfig, hw: HardwareParams, req: Requests, kv_capacity) -> tuple[SimState, StepTrace]:
    """Scan ``step`` over every step of the horizon (S = len(step_first) - 1)."""
    steps = req.step_first.shape[0] - 1
    state = init(cfg, req.input_tokens.shape[0])
    return jax.lax.scan(lambda st, s: step(cfg, hw, req, kv_capacity, st, s), state, jnp.arange(steps, dtype=I32))
