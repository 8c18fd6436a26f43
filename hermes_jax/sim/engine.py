"""Time-stepped simulation of one engine group (R replicas of one EngineSpec) as a pure init/step pair.

Each step of ``dt`` first routes the requests arriving in the step to replicas (the router sees the
replicas as they are at the step start), then lets every replica make up to ``iterations``
scheduler decisions back to back. A decision happens when its replica becomes free, at a continuous
time: the scheduler admits queued requests that have arrived by then, preempts (recompute) the
newest requests if the KV cache would overflow, composes the batch and runs one iteration taking
its service time (``iteration_cost``), so latencies are never quantized to ``dt``. It then
fast-forwards the pure-decode iterations that follow until the next event (an admission becomes
possible, a request finishes, the KV cache needs a block it lacks, the step ends), evaluated in one
vectorized call: between events the batch is fixed, so this is exact. If a replica still has work
when its decision cap is reached, it continues in the next step from its own clock (counted in
``deferred``); only routing depends on ``dt``.

Work per step is O(R (A + decisions * (B + W))): it grows with load and events, not with the length
of the trace.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from ..engine import EngineSpec
from ..hardware.params import HardwareParams
from ..iteration import iteration_cost
from ..kernels.transfer import tier_transfer_time
from .estimators import Pathwise
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
    iterations: int            # cap on scheduler decisions per replica per step
    fast_forward: int          # W, pure-decode iterations evaluated at once after a decision (0: off)
    arrivals: int              # cap on arrivals per step (max over the trace)
    estimator: object = Pathwise()   # how admission decisions enter gradients (see estimators.py)
    priority: bool = False     # admit by request priority (smaller first), then queue order; else FCFS
    users: int = 0             # closed-loop users (0: open loop only)
    swap_tokens: int = 0       # host swap space per replica in KV tokens (0: preempt by recompute)
    kv_token_bytes: float = 0.0  # B of KV per token per device (swap transfers)


def init(cfg: GroupConfig, req: Requests) -> SimState:
    R, B, N = cfg.replicas, cfg.slots, req.input_tokens.shape[0]
    zeros = jnp.zeros((R, B), I32)
    slots = Slots(req=jnp.full((R, B), -1, I32), prompt_left=zeros, context=zeros, generated=zeros, target=zeros,
                  order=zeros, alloc=zeros, shift=jnp.zeros((R, B), F32), last_token=jnp.zeros((R, B), F32),
                  max_gap=jnp.zeros((R, B), F32))
    never = jnp.full((N,), -1, I32)
    records = Records(replica=never, admit_step=never, admit_off=jnp.zeros(N, F32), first_step=never,
                      first_off=jnp.zeros(N, F32), finish_step=never, finish_off=jnp.zeros(N, F32),
                      preemptions=jnp.zeros(N, I32), generated=jnp.zeros(N, I32), rejected=jnp.zeros(N, bool),
                      max_itl=jnp.zeros(N, F32), last_step=never, last_off=jnp.zeros(N, F32),
                      arr_step=req.arrival_step, arr_off=req.arrival_off, pending=jnp.full((cfg.users,), -1, I32))
    return SimState(slots=slots, clock=jnp.zeros(R, F32), queue=jnp.zeros((R, cfg.queue), I32),
                    queue_done=jnp.zeros((R, cfg.queue), I32), head=jnp.zeros(R, I32), tail=jnp.zeros(R, I32), admitted=jnp.zeros(R, I32),
                    last_tau=jnp.zeros(R, F32),
                    routed=jnp.zeros((), I32), deferred=jnp.zeros((), I32), records=records)


def _blocks(tokens, block_size):
    return (tokens + block_size - 1) // block_size


def _cumsum(x):
    """Inclusive prefix sum along the last axis (booleans count as 0/1)."""
    return jnp.cumsum(x.astype(I32) if x.dtype == bool else x, axis=-1)


def _arrival(cfg: GroupConfig, rec: Records, index, s):
    """Arrival time(s) of requests ``index`` relative to the start of step ``s`` (s). Read from the
    records: closed-loop requests get theirs when the previous reply comes."""
    return (rec.arr_step[index] - s).astype(F32) * jnp.asarray(cfg.dt, F32) + rec.arr_off[index]


def _waiting(req: Requests, cand, history):
    """What a queue entry needs to (re)join: (output tokens it has, tokens to prefill, KV tokens to
    allocate, tokens already in KV). ``history``: -1 never admitted; g >= 0 preempted by recompute
    after g output tokens (prefill the prompt plus them again); -(g + 2) swapped out after g tokens
    (its KV comes back from host memory: input + g - 1 tokens, then it decodes)."""
    swapped = history <= -2
    done = jnp.where(swapped, -history - 2, jnp.maximum(history, 0))
    prompt = req.input_tokens[cand] + done
    kv_back = jnp.where(swapped, prompt - 1, 0)
    return done, jnp.where(swapped, 0, prompt), jnp.where(swapped, kv_back, prompt), kv_back


def _cond(pred, compute, unchanged):
    """``compute()`` if ``pred`` else ``unchanged``, with the result cast to ``unchanged``'s dtypes
    (sums promote to int64 under jax_enable_x64)."""
    def run():
        return jax.tree_util.tree_map(lambda x, like: x.astype(like.dtype), compute(), unchanged)
    return jax.lax.cond(pred, run, lambda: unchanged)


def _prefix_length(ok):
    """Number of leading True entries of a vector."""
    return jnp.where(ok.all(), ok.shape[-1], jnp.argmin(ok)).astype(I32)


def _inverse_permutation(perm):
    return jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[-1], dtype=perm.dtype))


# ------------------------------------------------------------------------------------------ routing
def _route(cfg: GroupConfig, state: SimState, req: Requests, kv_capacity, s):
    """Append the requests arriving in step ``s`` to replica queues, in arrival order: the trace's
    (open-loop) arrivals of the step plus closed-loop requests whose think time ended by the step's
    end. Only integer state (and the closed-loop schedule) is touched, so the loop runs over the
    actual arrivals (a while loop) and stays out of gradients."""
    first, last = req.step_first[s], req.step_first[s + 1]
    N = req.input_tokens.shape[0]
    blocks_used = _blocks(state.slots.alloc, cfg.block_size).sum(-1)
    load = (state.slots.req >= 0).sum(-1)

    def one(i, carry):
        queue, queue_done, tail, routed, rec = carry
        ok = req.admissible[i]
        if cfg.router == "round_robin":
            r = routed % cfg.replicas
        elif cfg.router == "least_outstanding":
            r = jnp.argmin(load + tail - state.head)
        else:  # least_kv: smallest share of KV blocks in use
            r = jnp.argmin(blocks_used / kv_capacity)
        push = ok & ((tail[r] - state.head[r]) < cfg.queue)
        at = jnp.where(push, tail[r] % cfg.queue, cfg.queue)          # out of range: dropped
        queue = queue.at[r, at].set(i, mode="drop")
        queue_done = queue_done.at[r, at].set(-1, mode="drop")
        tail = tail.at[r].add(push.astype(I32))
        rec = rec._replace(replica=rec.replica.at[i].set(jnp.where(push, r, -1)), rejected=rec.rejected.at[i].set(~push))
        if cfg.users:   # a rejected request's user thinks and sends the next one
            rec = _schedule_next(cfg, req, rec, jnp.where(push, -1, i)[None], rec.arr_step[i], rec.arr_off[i][None])
        return queue, queue_done, tail, routed + ok.astype(I32), rec

    carry = (state.queue, state.queue_done, state.tail, state.routed, state.records)
    if cfg.users:
        # merge the step's trace arrivals with due closed-loop requests, by arrival time
        rec = state.records
        opened = first + jnp.arange(cfg.arrivals)
        due = rec.pending
        is_due = (due >= 0) & (rec.arr_step[jnp.maximum(due, 0)] <= s)
        cand = jnp.concatenate([jnp.where(opened < last, opened, -1), jnp.where(is_due, due, -1)])
        when = jnp.where(cand >= 0, _arrival(cfg, rec, jnp.maximum(cand, 0), s), jnp.inf)
        order = cand[jnp.argsort(when)]
        rec = rec._replace(pending=jnp.where(is_due, -1, rec.pending))
        carry = carry[:4] + (rec,)
        queue, queue_done, tail, routed, rec = jax.lax.fori_loop(
            0, (cand >= 0).sum().astype(I32), lambda k, c: one(order[k].astype(I32), c), carry)
    elif cfg.arrivals == 1 or N == 0:
        queue, queue_done, tail, routed, rec = jax.lax.cond(
            last > first, lambda c: one(jnp.minimum(first, N - 1), c), lambda c: c, carry)
    else:
        queue, queue_done, tail, routed, rec = jax.lax.fori_loop(first, last, one, carry)
    return state._replace(queue=queue, queue_done=queue_done, tail=tail, routed=routed, records=rec)


# ------------------------------------------------------------------------------------------ one replica
def _admit(cfg: GroupConfig, req: Requests, s, kv_capacity, now, last_tau, slots: Slots, queue, queue_done, head, tail,
           admitted, rec: Records):
    """Admission over the first M queue entries: those that have arrived by ``now``, taken in queue
    order (FCFS) or by priority then queue order, stopping at the first that does not fit the free
    slots, KV blocks or token budget. The rest of the window closes up behind the new head.
    Returns the new slots, queue, queue_done, head, admitted, admit events (B,) and gates (B,)."""
    B, M, Q, bs = cfg.slots, cfg.admit, cfg.queue, cfg.block_size
    dt = jnp.asarray(cfg.dt, F32)
    active = slots.req >= 0
    j = jnp.arange(M)
    cand = queue[(head + j) % Q]
    in_queue = j < (tail - head)
    arrival = _arrival(cfg, rec, cand, s)
    history = queue_done[(head + j) % Q]
    arrived = in_queue & (arrival <= now)
    if cfg.priority:   # rank arrived candidates by (priority, queue position)
        rank = jnp.argsort(jnp.where(arrived, req.priority[cand] * M + j, 2**30))
    else:              # the queue is in arrival order: its arrived part is a prefix
        rank = j
    cand_r, history_r, arrival_r = cand[rank], history[rank], arrival[rank]
    done_before, prompt, alloc, kv_back = _waiting(req, cand_r, history_r)
    used_blocks = _blocks(slots.alloc, bs).sum()
    prefill_now = jnp.where(active, slots.prompt_left, 0).sum()
    n_active = active.sum()
    ok = (arrived[rank] & (j < B - n_active)
          & (_cumsum(_blocks(alloc, bs)) <= kv_capacity - used_blocks)
          & (prefill_now + _cumsum(cfg.scheduler.admission_tokens(jnp, prompt)) <= cfg.max_batch_tokens)
          & cfg.scheduler.may_admit(jnp, n_active))
    n_admit = _prefix_length(ok)                                  # stop at the first that cannot join
    shift = cfg.estimator.shift(now, arrival_r, last_tau)
    free_rank = jnp.where(active, B, _cumsum(~active) - 1)
    take = (~active) & (free_rank < n_admit)
    pick = jnp.clip(free_rank, 0, M - 1)
    new_req = cand_r[pick]
    slots = Slots(req=jnp.where(take, new_req, slots.req),
                  prompt_left=jnp.where(take, prompt[pick], slots.prompt_left),
                  context=jnp.where(take, kv_back[pick], slots.context),
                  generated=jnp.where(take, done_before[pick], slots.generated),
                  target=jnp.where(take, req.output_tokens[new_req], slots.target),
                  order=jnp.where(take, admitted + pick, slots.order),
                  alloc=jnp.where(take, alloc[pick], slots.alloc),
                  shift=jnp.where(take, shift[pick], slots.shift),
                  # a request back from preemption resumes its inter-token record
                  last_token=jnp.where(take, (rec.last_step[new_req] - s).astype(F32) * dt + rec.last_off[new_req],
                                       slots.last_token),
                  max_gap=jnp.where(take, jnp.where(history_r[pick] != -1, rec.max_itl[new_req], 0.0), slots.max_gap))
    gate = jnp.where(take, cfg.estimator.gate(now + shift - arrival_r)[pick], 1.0).astype(F32)
    if cfg.priority:   # close up: the window entries not admitted keep their order behind the new head
        taken = jnp.zeros(M, bool).at[rank].set(j < n_admit)
        keep = in_queue & ~taken
        to = jnp.where(keep, (head + n_admit + _cumsum(keep) - 1) % Q, Q)
        queue = queue.at[to].set(cand, mode="drop")
        queue_done = queue_done.at[to].set(history, mode="drop")
    events = jnp.where(take & (history_r[pick] == -1), new_req, -1)
    swapped_in = jnp.where(take, kv_back[pick], 0).sum()
    return slots, queue, queue_done, head + n_admit, admitted + n_admit, events, gate, swapped_in


def _head_admissible(cfg: GroupConfig, req: Requests, rec: Records, s, kv_capacity, now, slots: Slots, queue, queue_done,
                     head, tail):
    """Whether admission at ``now`` would take anyone (``now`` may have a leading axis W): the first
    candidate in admission order (the queue head, or the best-priority arrived request of the
    window) fits. If it does not, no one joins."""
    Q, bs, M = cfg.queue, cfg.block_size, cfg.admit
    active = slots.req >= 0
    n_active = active.sum()
    if cfg.priority:
        j = jnp.arange(M)
        cand = queue[(head + j) % Q]
        arrival = _arrival(cfg, rec, cand, s)
        arrived = (j < tail - head) & (arrival <= jnp.expand_dims(now, -1))           # (..., M)
        best = jnp.argmin(jnp.where(arrived, req.priority[cand] * M + j, 2**30), axis=-1)
        nxt, done, any_arrived = cand[best], queue_done[(head + best) % Q], arrived.any(-1)
    else:
        nxt, done = queue[head % Q], queue_done[head % Q]
        arrival = _arrival(cfg, rec, nxt, s)
        any_arrived = (tail > head) & (arrival <= now)
    _, prompt, alloc, _ = _waiting(req, nxt, done)
    prefill_now = jnp.where(active, slots.prompt_left, 0).sum()
    return (any_arrived & (n_active < cfg.slots) & cfg.scheduler.may_admit(jnp, n_active)
            & (_blocks(alloc, bs) <= kv_capacity - _blocks(slots.alloc, bs).sum(-1))
            & (prefill_now + cfg.scheduler.admission_tokens(jnp, prompt) <= cfg.max_batch_tokens))


def _preempt(cfg: GroupConfig, req: Requests, kv_capacity, new, slots: Slots, queue, queue_done, head, tail):
    """Preemption: evict the newest requests until the KV blocks the batch needs fit; the evicted go
    back to the queue front, oldest first. With swap space (``cfg.swap_tokens`` > 0), a request
    that has output tokens is swapped out to host memory while the space holds its KV, else it is
    recomputed later. Returns slots, queue, queue_done, head, events and the KV tokens swapped out."""
    Q, bs = cfg.queue, cfg.block_size
    active = slots.req >= 0
    need = jnp.where(active, jnp.maximum(slots.alloc, slots.context + new), 0)
    rank = jnp.argsort(jnp.where(active, slots.order, 2**30))
    inverse = _inverse_permutation(rank)
    fits = (_cumsum(_blocks(need, bs)[rank]) <= kv_capacity)[inverse]
    evict = active & ~fits
    n_evict = evict.sum()
    evict_rank = _cumsum(evict[rank])[inverse] - 1   # oldest evicted first
    history = slots.generated
    moved = jnp.zeros((), I32)
    if cfg.swap_tokens:
        ring = jnp.arange(Q)
        waiting = ((ring - head) % Q) < (tail - head)
        used = jnp.where(waiting & (queue_done <= -2), _waiting(req, queue, queue_done)[3], 0).sum()
        tokens = jnp.where(evict & (slots.generated > 0), slots.context, 0)          # KV it holds
        ahead = _cumsum(tokens[rank])[inverse]                                         # oldest evicted first
        swap = (tokens > 0) & (used + ahead <= cfg.swap_tokens)
        history = jnp.where(swap, -slots.generated - 2, slots.generated)
        moved = jnp.where(swap, tokens, 0).sum()
    position = jnp.where(evict, (head - n_evict + evict_rank) % Q, Q)
    queue = queue.at[position].set(slots.req, mode="drop")
    queue_done = queue_done.at[position].set(history, mode="drop")
    event = jnp.where(evict, slots.req, -1)
    return slots._replace(req=jnp.where(evict, -1, slots.req)), queue, queue_done, head - n_evict, event, moved


def _iteration(cfg: GroupConfig, hw: HardwareParams, req: Requests, s, kv_capacity, carry, rec: Records):
    """One scheduler decision plus one engine iteration on one replica (then fast-forwarded decode
    iterations); returns the carry and the events (B,). Admission and preemption sit behind
    ``lax.cond`` on cheap tests, so a single replica skips them when nothing can happen."""
    slots, clock, queue, queue_done, head, tail, admitted, last_tau, busy, work = carry
    B, Q, bs = cfg.slots, cfg.queue, cfg.block_size
    dt = jnp.asarray(cfg.dt, F32)
    now = clock
    nobody = jnp.full(B, -1, I32)

    # --- admission
    admit = _head_admissible(cfg, req, rec, s, kv_capacity, now, slots, queue, queue_done, head, tail)
    slots, queue, queue_done, head, admitted, admit_event, gate, swapped_in = _cond(
        admit, lambda: _admit(cfg, req, s, kv_capacity, now, last_tau, slots, queue, queue_done, head, tail, admitted,
                              rec),
        (slots, queue, queue_done, head, admitted, nobody, jnp.ones(B, F32), jnp.zeros((), I32)))
    active = slots.req >= 0

    # --- batch composition and KV check: preempt the newest requests (recompute) until it fits
    new = cfg.scheduler.compose(jnp, slots.prompt_left, active, slots.order, cfg.max_batch_tokens)
    need = jnp.where(active, jnp.maximum(slots.alloc, slots.context + new), 0)
    preempt_generated, preempt_last, preempt_gap = slots.generated, slots.last_token, slots.max_gap
    slots, queue, queue_done, head, preempt_event, swapped_out = _cond(
        _blocks(need, bs).sum() > kv_capacity,
        lambda: _preempt(cfg, req, kv_capacity, new, slots, queue, queue_done, head, tail),
        (slots, queue, queue_done, head, nobody, jnp.zeros((), I32)))
    active = slots.req >= 0
    new = jnp.where(active, new, 0)
    alloc = jnp.where(active, jnp.maximum(slots.alloc, slots.context + new), 0)

    # --- the iteration itself
    logits = active & (new > 0) & (slots.prompt_left <= new)   # prefill completes, or a decode step
    f = hw.log["hbm_bandwidth"].dtype
    # the estimator's gate scales the tokens of requests admitted at this boundary (1 in the forward
    # pass except for the relaxed estimator)
    cost = iteration_cost(cfg.spec, hw, new.astype(f) * gate.astype(f), slots.context.astype(f), logits.astype(f))
    running = active.any()
    swap_time = 0.0
    if cfg.swap_tokens:   # KV moved between HBM and host memory before this iteration runs
        moved = (swapped_in + swapped_out).astype(f) * cfg.kv_token_bytes
        swap_time = tier_transfer_time(hw, "host_dram", moved)
    tau = jnp.where(running, (cost.time + swap_time).astype(F32), 0.0)
    end = now + tau
    generated = slots.generated + logits.astype(I32)
    first_event = jnp.where(logits & (slots.generated == 0), slots.req, -1)
    finished = logits & (generated >= slots.target)
    finish_event = jnp.where(finished, slots.req, -1)
    finish_time = jnp.where(finished, end, 0.0)
    shift = slots.shift
    gap = jnp.where(logits & (slots.generated > 0), end - slots.last_token, 0.0)   # since the request's last token
    slots = slots._replace(req=jnp.where(finished, -1, slots.req), prompt_left=jnp.maximum(slots.prompt_left - new, 0),
                           context=slots.context + new, generated=generated, alloc=jnp.where(finished, 0, alloc),
                           max_gap=jnp.maximum(slots.max_gap, gap), last_token=jnp.where(logits, end, slots.last_token))
    finish_gap = slots.max_gap
    last_tau = tau
    work = work + jnp.where(running, jnp.stack([cost.op_flop.sum(), (cost.op_bytes * (cost.op_network == 0)).sum()]),
                            0.0).astype(F32)
    busy = busy + tau

    if cfg.fast_forward:
        slots, end, ff_finish, ff_time, ff_tau, ff_work, ff_last = _fast_forward(cfg, hw, req, rec, s, kv_capacity, slots, end,
                                                                                  queue, queue_done, head, tail)
        last_tau = jnp.where(ff_tau > 0, ff_last, last_tau)
        finish_event = jnp.where(ff_finish >= 0, ff_finish, finish_event)
        finish_time = jnp.where(ff_finish >= 0, ff_time, finish_time)
        finish_gap = jnp.where(ff_finish >= 0, slots.max_gap, finish_gap)
        busy, work = busy + ff_tau, work + ff_work

    # idle: jump to the next arrival in the queue, else to the step end
    waiting = tail > head
    nxt = queue[head % Q]
    next_arrival = _arrival(cfg, rec, nxt, s)
    idle_to = jnp.where(waiting & (next_arrival > now), jnp.minimum(next_arrival, dt), dt)
    clock = jnp.where(running, end, jnp.maximum(now, idle_to))
    last_tau = jnp.where(running, last_tau, 0.0)
    # event times per slot, each with its request's (zero-valued) gradient correction
    events = (admit_event, now + shift, first_event, now + tau + shift, finish_event, finish_time + shift, finish_gap,
              preempt_event, preempt_generated, preempt_last, preempt_gap)
    return (slots, clock, queue, queue_done, head, tail, admitted, last_tau, busy, work), events


def _schedule_next(cfg: GroupConfig, req: Requests, rec: Records, done, step, when) -> Records:
    """For each request in ``done`` (-1 none) answered or rejected at (``step``, ``when``), make its
    user's next request arrive a think time later."""
    N = rec.arr_step.shape[0]
    i = jnp.maximum(done, 0)
    nxt = jnp.where(done >= 0, req.next_request[i], -1)
    off = when + req.think[i]
    carry = jnp.floor(off / cfg.dt).astype(I32)
    target = jnp.where(nxt >= 0, nxt, N)
    user = jnp.where(nxt >= 0, req.user[i], rec.pending.shape[0])
    return rec._replace(arr_step=rec.arr_step.at[target].set((step + carry).astype(I32), mode="drop"),
                        arr_off=rec.arr_off.at[target].set((off - carry.astype(F32) * cfg.dt).astype(F32), mode="drop"),
                        pending=rec.pending.at[user].set(nxt.astype(I32), mode="drop"))


def _record(cfg: GroupConfig, req: Requests, rec: Records, s, events) -> Records:
    """Write one decision's events (each (B,), request index or -1) into the per-request records."""
    admit, start, first, first_end, finish, finish_time, finish_gap, preempt, generated, last, gap = events
    N = rec.replica.shape[0]
    step = jnp.asarray(s, I32)

    def put(field, index, values):
        return field.at[jnp.where(index >= 0, index, N)].set(jnp.broadcast_to(values, index.shape).astype(field.dtype),
                                                              mode="drop")

    if cfg.users:   # a reply lets the user think, then send its next request
        rec = _schedule_next(cfg, req, rec, finish, step, finish_time)
    return rec._replace(
        admit_step=put(rec.admit_step, admit, step), admit_off=put(rec.admit_off, admit, start),
        first_step=put(rec.first_step, first, step), first_off=put(rec.first_off, first, first_end),
        finish_step=put(rec.finish_step, finish, step), finish_off=put(rec.finish_off, finish, finish_time),
        generated=put(rec.generated, preempt, generated),
        max_itl=put(put(rec.max_itl, preempt, gap), finish, finish_gap),
        last_step=put(rec.last_step, preempt, step), last_off=put(rec.last_off, preempt, last),
        preemptions=rec.preemptions.at[jnp.where(preempt >= 0, preempt, N)].add(1, mode="drop"))


def _fast_forward(cfg: GroupConfig, hw: HardwareParams, req: Requests, rec: Records, s, kv_capacity, slots: Slots,
                  start, queue, queue_done, head, tail):
    """Run, in one vectorized evaluation, the pure-decode iterations that follow until the next
    event: an admission becomes possible, a request finishes (that iteration is included), the KV
    cache needs a block it does not have (preemption), the step ends, or W iterations are done.

    Between such events the batch is fixed, so these iterations are exactly what the scheduler loop
    would run one by one; only their count is found at once. Returns the new slots, the clock,
    the finishing slots' requests (B,) (-1 none) and times, and the busy time and work added.
    """
    W, bs = cfg.fast_forward, cfg.block_size
    dt = jnp.asarray(cfg.dt, F32)
    ids = slots.req
    active = ids >= 0
    n_active = active.sum()
    decoding = active.any() & ~(active & (slots.prompt_left > 0)).any()
    w = jnp.arange(W, dtype=I32)[:, None]                              # (W, 1) iteration index
    context = slots.context + w                                        # (W, B) context at iteration w
    f = hw.log["hbm_bandwidth"].dtype
    if cfg.spec.model.sliding_window:
        one = jnp.broadcast_to(active.astype(f), context.shape)
        cost = iteration_cost(cfg.spec, hw, one, context.astype(f), one)
    else:
        # Decode costs are linear in each sequence's context, so the batch is one slot holding
        # n_active copies at the mean context: O(W) instead of O(W B) work per decision.
        mean = jnp.where(active, slots.context, 0).sum().astype(f) / jnp.maximum(n_active, 1).astype(f)
        ones = jnp.ones((W, 1), f)
        cost = iteration_cost(cfg.spec, hw, ones, mean + w.astype(f), ones, copies=ones * n_active.astype(f))
    tau = cost.time.astype(F32)                                        # (W,)
    begin = start + _cumsum(tau) - tau                              # (W,) start of iteration w

    # KV blocks needed during iteration w
    needed = jnp.where(active, _blocks(jnp.maximum(slots.alloc, context + 1), bs), 0).sum(-1)
    # would the oldest waiting request be admitted at the start of iteration w?
    admits = _head_admissible(cfg, req, rec, s, kv_capacity, begin, slots._replace(alloc=jnp.where(active, jnp.maximum(slots.alloc, context), 0)),
                              queue, queue_done, head, tail)
    left = jnp.where(active, slots.target - slots.generated, 2**30).min()    # iteration left - 1 finishes
    ok = decoding & (begin < dt) & ~admits & (needed <= kv_capacity) & (w[:, 0] < left)
    n = _prefix_length(ok)
    ok = w[:, 0] < n
    end = jnp.where(n > 0, start + jnp.where(ok, tau, 0.0).sum(), start)
    generated = jnp.where(active, slots.generated + n, slots.generated)
    finished = active & (generated >= slots.target)
    grown = jnp.where(active, jnp.maximum(slots.alloc, slots.context + n), slots.alloc)
    # inter-token gaps: iteration 0 ends a gap opened at each request's last token, later ones last tau
    first_gap = start + tau[0] - slots.last_token
    later = jnp.where(ok & (w[:, 0] > 0), tau, 0.0).max()
    ran = active & (n > 0)
    slots = slots._replace(req=jnp.where(finished, -1, slots.req), context=jnp.where(active, slots.context + n, slots.context),
                           generated=generated, alloc=jnp.where(finished, 0, grown),
                           max_gap=jnp.where(ran, jnp.maximum(slots.max_gap, jnp.maximum(first_gap, later)), slots.max_gap),
                           last_token=jnp.where(ran, end, slots.last_token))
    work = jnp.stack([jnp.where(ok, cost.op_flop.sum(-1), 0.0).sum(),
                      jnp.where(ok, (cost.op_bytes * (cost.op_network == 0)).sum(-1), 0.0).sum()]).astype(F32)
    return (slots, end, jnp.where(finished, ids, -1), jnp.where(finished, end, 0.0),
            jnp.where(ok, tau, 0.0).sum(), work, tau[jnp.maximum(n, 1) - 1])


def _replica_step(cfg: GroupConfig, hw: HardwareParams, req: Requests, s, kv_capacity, carry, records: Records):
    """Up to ``cfg.iterations`` scheduler decisions of one replica inside step ``s``, each writing
    its events straight into ``records``. A fixed-length scan of ``lax.cond`` (not a while loop)
    keeps it reverse-differentiable; the cond skips the work of decisions not needed."""
    dt = jnp.asarray(cfg.dt, F32)

    def body(state, _):
        c, rec = state

        def work(c, rec):
            out, events = _iteration(cfg, hw, req, s, kv_capacity, c, rec)
            # keep dtypes fixed whatever jax_enable_x64 promotes sums to
            out = jax.tree_util.tree_map(lambda x, like: x.astype(like.dtype), out, c)
            return out, _record(cfg, req, rec, s, events)

        return jax.lax.cond(c[1] < dt, work, lambda c, rec: (c, rec), c, rec), None

    zero = (jnp.zeros((), F32), jnp.zeros(2, F32))
    (carry, records), _ = jax.lax.scan(body, (carry + zero, records), None, length=cfg.iterations)
    return carry, records


def step(cfg: GroupConfig, hw: HardwareParams, req: Requests, kv_capacity, state: SimState, s):
    """Advance every replica by one ``dt`` step. ``hw`` has a leading replica axis (R).

    Replicas run one after another (a loop, not a vmap) so they share one request record and a
    single replica's conditionals really skip work; within a step they do not interact."""
    state = _route(cfg, state, req, kv_capacity, s)
    fields = (state.slots, state.clock, state.queue, state.queue_done, state.head, state.tail, state.admitted,
              state.last_tau)

    def one(r, acc):
        per, rec, busy, work = acc
        mine = jax.tree_util.tree_map(lambda x: x[r], per)
        out, rec = _replica_step(cfg, jax.tree_util.tree_map(lambda x: x[r], hw), req, s, kv_capacity[r], mine, rec)
        per = jax.tree_util.tree_map(lambda x, y: x.at[r].set(y), per, out[:8])
        return per, rec, busy.at[r].set(out[8]), work.at[r].set(out[9])

    R = cfg.replicas
    acc = (fields, state.records, jnp.zeros(R, F32), jnp.zeros((R, 2), F32))
    acc = one(0, acc) if R == 1 else jax.lax.fori_loop(0, R, one, acc)
    (slots, clock, queue, queue_done, head, tail, admitted, last_tau), rec, busy, work = acc
    # A replica whose clock is still inside the step ran out of decisions: it goes on next step.
    deferred = state.deferred + jnp.any(clock < cfg.dt).astype(I32)
    trace = StepTrace(batch=(slots.req >= 0).sum(-1).astype(I32),
                      kv_blocks=_blocks(slots.alloc, cfg.block_size).sum(-1).astype(I32),
                      busy_s=busy, queued=(tail - head).astype(I32), flop=work[:, 0], bytes=work[:, 1])
    new_state = SimState(slots=slots._replace(last_token=slots.last_token - cfg.dt), clock=clock - cfg.dt, queue=queue, queue_done=queue_done, head=head, tail=tail,
                         admitted=admitted, last_tau=last_tau, routed=state.routed, deferred=deferred,
                         records=rec)
    return new_state, trace


def _report(label: str, steps: int, s):
    done = (int(s) + 1) / steps
    bar = "#" * int(done * 30)
    sys.stderr.write(f"\r{label} [{bar:<30s}] {done:6.1%}")
    if int(s) + 1 >= steps:
        sys.stderr.write("\n")
    sys.stderr.flush()


@partial(jax.jit, static_argnums=(0, 4, 5))
def run(cfg: GroupConfig, hw: HardwareParams, req: Requests, kv_capacity, checkpoint: bool = False,
        progress: str = "") -> tuple[SimState, StepTrace]:
    """Scan ``step`` over every step of the horizon (S = len(step_first) - 1).

    ``checkpoint=True`` splits the scan into about sqrt(S) segments of sqrt(S) steps and
    rematerializes each segment in the backward pass, so reverse-mode memory grows like sqrt(S)
    states instead of S (the forward result is the same). A non-empty ``progress`` label draws a
    progress bar on stderr (50 updates over the run, from a host callback)."""
    steps = req.step_first.shape[0] - 1
    state = init(cfg, req)
    every = max(steps // 50, 1)

    def advance(st, s):
        if progress:
            jax.lax.cond((s % every == 0) | (s == steps - 1),
                         lambda: jax.debug.callback(partial(_report, progress, steps), s), lambda: None)
        return step(cfg, hw, req, kv_capacity, st, s)

    if not checkpoint:
        return jax.lax.scan(advance, state, jnp.arange(steps, dtype=I32))
    outer = max(int(math.ceil(math.sqrt(steps))), 1)
    inner = max(int(math.ceil(steps / outer)), 1)

    def masked(st, s):   # padding steps past the horizon leave the state alone
        idle = StepTrace(*(jnp.zeros(cfg.replicas, dt) for dt in (I32, I32, F32, I32, F32, F32)))
        return jax.lax.cond(s < steps, advance, lambda st, s: (st, idle), st, s)

    @jax.checkpoint
    def segment(st, indices):
        return jax.lax.scan(masked, st, indices)

    state, trace = jax.lax.scan(segment, state, jnp.arange(outer * inner, dtype=I32).reshape(outer, inner))
    return state, jax.tree_util.tree_map(lambda x: x.reshape((outer * inner,) + x.shape[2:])[:steps], trace)
