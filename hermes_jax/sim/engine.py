"""Time-stepped simulation of one engine group (R replicas of one EngineSpec) as a pure init/step pair.

Each step of ``dt`` routes the requests arriving in the step to replicas (a state-dependent router
sees the replicas as they are at each arrival's exact time) and lets every replica make up to ``iterations``
scheduler decisions back to back. A decision happens when its replica becomes free, at a continuous
time: the scheduler admits queued requests that have arrived by then, preempts (recompute or swap) the
newest requests if the KV cache would overflow, composes the batch and runs one iteration taking
its service time (``iteration_cost``), so latencies are never quantized to ``dt``. It then
fast-forwards the pure-decode iterations that follow until the next event (an admission becomes
possible, a request finishes, the KV cache needs a block it lacks, the step ends), evaluated in one
vectorized call: between events the batch is fixed, so this is exact. If a replica still has work
when its decision cap is reached, it continues in the next step from its own clock (counted in
``deferred``).

Work per step is O(R (A + decisions * (B + W))): it grows with load and events, not with the length
of the trace.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..hardware.params import HardwareParams
from ..iteration import iteration_cost
from ..kernels.transfer import tier_transfer_time
from .admission import admit, head_admissible, preempt
from .fastforward import fast_forward
from . import programs
from .group import F32, I32, GroupConfig, arrival_time, blocks, cond
from .routing import route, schedule_next
from .state import Records, Requests, SimState, Slots, StepTrace

__all__ = ["GroupConfig", "init", "step", "run", "run_segments"]


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


def _iteration(cfg: GroupConfig, hw: HardwareParams, req: Requests, s, kv_capacity, carry, rec: Records, limit):
    """One scheduler decision plus one engine iteration on one replica (then fast-forwarded decode
    iterations); returns the carry and the events (B,). Admission and preemption sit behind
    ``lax.cond`` on cheap tests, so a single replica skips them when nothing can happen."""
    slots, clock, queue, queue_done, head, tail, admitted, last_tau, busy, work = carry
    B, Q, bs = cfg.slots, cfg.queue, cfg.block_size
    now = clock
    nobody = jnp.full(B, -1, I32)

    # --- admission
    joins = head_admissible(cfg, req, rec, s, kv_capacity, now, slots, queue, queue_done, head, tail)
    slots, queue, queue_done, head, admitted, admit_event, gate, swapped_in = cond(
        cfg, joins, partial(admit, cfg),
        (req, s, kv_capacity, now, last_tau, slots, queue, queue_done, head, tail, admitted, rec),
        (slots, queue, queue_done, head, admitted, nobody, jnp.ones(B, F32), jnp.zeros((), I32)))
    active = slots.req >= 0

    # --- batch composition and KV check: preempt the newest requests (recompute) until it fits
    new = cfg.scheduler.compose(jnp, slots.prompt_left, active, slots.order, cfg.max_batch_tokens)
    need = jnp.where(active, jnp.maximum(slots.alloc, slots.context + new), 0)
    preempt_generated, preempt_last, preempt_gap = slots.generated, slots.last_token, slots.max_gap
    slots, queue, queue_done, head, preempt_event, swapped_out = cond(
        cfg, blocks(need, bs).sum() > kv_capacity, partial(preempt, cfg),
        (req, kv_capacity, new, slots, queue, queue_done, head, tail),
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
        slots, end, ff_finish, ff_time, ff_tau, ff_work, ff_last = fast_forward(cfg, hw, req, rec, s, kv_capacity, slots, end,
                                                                                  queue, queue_done, head, tail, limit)
        last_tau = jnp.where(ff_tau > 0, ff_last, last_tau)
        finish_event = jnp.where(ff_finish >= 0, ff_finish, finish_event)
        finish_time = jnp.where(ff_finish >= 0, ff_time, finish_time)
        finish_gap = jnp.where(ff_finish >= 0, slots.max_gap, finish_gap)
        busy, work = busy + ff_tau, work + ff_work

    # idle: jump to the next arrival in the queue, else to the step end
    waiting = tail > head
    nxt = queue[head % Q]
    next_arrival = arrival_time(cfg, rec, nxt, s)
    idle_to = jnp.where(waiting & (next_arrival > now), jnp.minimum(next_arrival, limit), limit)
    clock = jnp.where(running, end, jnp.maximum(now, idle_to))
    last_tau = jnp.where(running, last_tau, 0.0)
    # event times per slot, each with its request's (zero-valued) gradient correction
    events = (admit_event, now + shift, first_event, now + tau + shift, finish_event, finish_time + shift, finish_gap,
              preempt_event, preempt_generated, preempt_last, preempt_gap)
    return (slots, clock, queue, queue_done, head, tail, admitted, last_tau, busy, work), events


def _record(cfg: GroupConfig, req: Requests, rec: Records, s, events) -> Records:
    """Write one decision's events (each (B,), request index or -1) into the per-request records."""
    admitted, start, first, first_end, finish, finish_time, finish_gap, preempted, generated, last, gap = events
    N = rec.replica.shape[0]
    step = jnp.asarray(s, I32)

    def put(field, index, values):
        return field.at[jnp.where(index >= 0, index, N)].set(jnp.broadcast_to(values, index.shape).astype(field.dtype),
                                                              mode="drop")

    if cfg.users:   # a reply lets the user think, then send its next request
        rec = schedule_next(cfg, req, rec, finish, step, finish_time)
    return rec._replace(
        admit_step=put(rec.admit_step, admitted, step), admit_off=put(rec.admit_off, admitted, start),
        first_step=put(rec.first_step, first, step), first_off=put(rec.first_off, first, first_end),
        finish_step=put(rec.finish_step, finish, step), finish_off=put(rec.finish_off, finish, finish_time),
        generated=put(rec.generated, preempted, generated),
        max_itl=put(put(rec.max_itl, preempted, gap), finish, finish_gap),
        last_step=put(rec.last_step, preempted, step), last_off=put(rec.last_off, preempted, last),
        preemptions=rec.preemptions.at[jnp.where(preempted >= 0, preempted, N)].add(1, mode="drop"))


_EVENT_INDICES = (0, 2, 4, 7)   # the entries of ``_iteration``'s events that name requests (-1: none)


def _no_events(cfg: GroupConfig, args):
    """Events of a decision not taken: no request named, every value 0 (shapes from ``_iteration``)."""
    shapes = jax.eval_shape(partial(_iteration, cfg), *args)[1]
    return tuple(jnp.full(x.shape, -1 if k in _EVENT_INDICES else 0, x.dtype) for k, x in enumerate(shapes))


def _decision(cfg: GroupConfig, hw, req: Requests, s, kv_capacity, c, rec: Records, limit):
    """One decision of ``_iteration`` with its events written into the records."""
    out, events = _iteration(cfg, hw, req, s, kv_capacity, c, rec, limit)
    return out, _record(cfg, req, rec, s, events)


def _replica_step(cfg: GroupConfig, hw: HardwareParams, req: Requests, s, kv_capacity, carry, records: Records, limit):
    """Up to ``cfg.iterations`` scheduler decisions of one replica that start before ``limit`` (s from
    the step start), each writing its events straight into ``records``. A fixed-length scan of
    ``lax.cond`` (not a while loop) keeps it reverse-differentiable; the cond skips the work of
    decisions not needed."""

    def body(state, _):
        c, rec = state
        return cond(cfg, c[1] < limit, partial(_decision, cfg), (hw, req, s, kv_capacity, c, rec, limit), (c, rec)), None

    if cfg.vmap_guard:
        # Batched, a cond selects each of its outputs per lane: with the (N,) records among them every
        # decision cost O(lanes * N) and runs grew quadratically in the requests. The decision returns
        # its (B,) events instead; they are scattered by a cond of their own that needs no select (an
        # idle lane's events are all -1, so its scatter writes nothing).
        def body(state, _):   # noqa: F811
            c, rec = state
            args = (hw, req, s, kv_capacity, c, rec, limit)
            take = c[1] < limit
            c, events = cond(cfg, take, partial(_iteration, cfg), args, (c, _no_events(cfg, args)))
            rec = cond(cfg, take, partial(_record, cfg), (req, rec, s, events), rec, select=False)
            return (c, rec), None

    zero = (jnp.zeros((), F32), jnp.zeros(2, F32))
    (carry, records), _ = jax.lax.scan(body, (carry + zero, records), None, length=cfg.iterations)
    return carry, records


def _run_replicas(cfg: GroupConfig, hw: HardwareParams, req: Requests, kv_capacity, state: SimState, s, limit):
    """Every replica's decisions that start before ``limit``; returns the state and per-replica
    busy seconds (R,) and [FLOP, bytes] (R, 2). Replicas run one after another (a loop, not a vmap)
    so they share one request record and a single replica's conditionals really skip work."""
    fields = (state.slots, state.clock, state.queue, state.queue_done, state.head, state.tail, state.admitted,
              state.last_tau)

    def one(r, acc):
        per, rec, busy, work = acc
        mine = jax.tree_util.tree_map(lambda x: x[r], per)
        out, rec = _replica_step(cfg, jax.tree_util.tree_map(lambda x: x[r], hw), req, s, kv_capacity[r], mine, rec,
                                 limit)
        per = jax.tree_util.tree_map(lambda x, y: x.at[r].set(y), per, out[:8])
        return per, rec, busy.at[r].set(out[8]), work.at[r].set(out[9])

    R = cfg.replicas
    acc = (fields, state.records, jnp.zeros(R, F32), jnp.zeros((R, 2), F32))
    acc = one(0, acc) if R == 1 else jax.lax.fori_loop(0, R, one, acc)
    (slots, clock, queue, queue_done, head, tail, admitted, last_tau), rec, busy, work = acc
    state = state._replace(slots=slots, clock=clock, queue=queue, queue_done=queue_done, head=head, tail=tail,
                           admitted=admitted, last_tau=last_tau, records=rec)
    return state, busy, work


def step(cfg: GroupConfig, hw: HardwareParams, req: Requests, kv_capacity, state: SimState, s, active=True):
    """Advance every replica by one ``dt`` step. ``hw`` has a leading replica axis (R).

    Routing sees the replicas at the step start, except with ``cfg.route_each_arrival``: then the
    replicas run up to each arrival of the step before it is routed, as in the exact reference (a
    while loop over the arrivals: forward only). An inactive step (padding past the horizon, see
    ``shapes``) starts no decision: iterations already running finish as they would."""
    dt = jnp.where(active, jnp.asarray(cfg.dt, F32), -jnp.inf)
    if cfg.route_each_arrival:
        def arrive(i, carry):
            st, busy, work = carry
            st, b, w = _run_replicas(cfg, hw, req, kv_capacity, st, s, arrival_time(cfg, st.records, i, s))
            return route(cfg, st, req, kv_capacity, s, i, i + 1), busy + b, work + w

        zero = (jnp.zeros(cfg.replicas, F32), jnp.zeros((cfg.replicas, 2), F32))
        state, busy, work = jax.lax.fori_loop(req.step_first[s], req.step_first[s + 1], arrive, (state,) + zero)
        state, b, w = _run_replicas(cfg, hw, req, kv_capacity, state, s, dt)
        busy, work = busy + b, work + w
    else:
        state = route(cfg, state, req, kv_capacity, s)
        state, busy, work = _run_replicas(cfg, hw, req, kv_capacity, state, s, dt)
    slots, clock, tail, head = state.slots, state.clock, state.tail, state.head
    # A replica whose clock is still inside the step ran out of decisions: it goes on next step.
    deferred = state.deferred + (jnp.any(clock < cfg.dt) & active).astype(I32)
    trace = StepTrace(batch=(slots.req >= 0).sum(-1).astype(I32),
                      kv_blocks=blocks(slots.alloc, cfg.block_size).sum(-1).astype(I32),
                      busy_s=busy, queued=(tail - head).astype(I32), flop=work[:, 0], bytes=work[:, 1])
    new_state = state._replace(slots=slots._replace(last_token=slots.last_token - cfg.dt), clock=clock - cfg.dt,
                               deferred=deferred)
    return new_state, trace


@partial(jax.jit, static_argnums=(0, 6))
def _segment(cfg: GroupConfig, hw: HardwareParams, req: Requests, kv_capacity, state: SimState, first, length: int,
             horizon_steps):
    """``length`` steps from step ``first``; steps at or past ``horizon_steps`` are inactive."""
    def advance(st, s):
        return step(cfg, hw, req, kv_capacity, st, s, active=s < horizon_steps)
    return jax.lax.scan(advance, state, first + jnp.arange(length, dtype=I32))


_start = jax.jit(init, static_argnums=0)


def run_segments(cfg: GroupConfig, hw: HardwareParams, req: Requests, kv_capacity, horizon_steps: int,
                 segments: int = 16, progress=None) -> tuple[SimState, StepTrace]:
    """The forward run of ``run`` as ``segments`` calls of one compiled segment of the scan, so
    progress is reported from Python between them (``progress(done_steps, total_steps)``) and no
    host callback keeps the program out of JAX's persistent compilation cache. ``req`` covers a
    padded number of steps (a multiple of ``segments``); the steps from ``horizon_steps`` on are
    inactive and the trace (NumPy arrays) is cut to the horizon."""
    total = req.step_first.shape[0] - 1
    length = -(-total // segments)
    state = programs.call(_start, (0,), cfg, req)
    traces = []
    horizon = jnp.asarray(horizon_steps, I32)
    for k in range(segments):
        if k * length >= total:
            break
        state, trace = programs.call(_segment, (0, 6), cfg, hw, req, kv_capacity, state, jnp.asarray(k * length, I32),
                                     length, horizon)
        traces.append(trace)
        if progress is not None:
            progress(min((k + 1) * length, horizon_steps), horizon_steps)
    # joined on the host: eager jnp ops on these per-run shapes would each compile a small program
    trace = jax.tree_util.tree_map(lambda *xs: np.concatenate([np.asarray(x) for x in xs])[:horizon_steps], *traces)
    return state, trace


@partial(jax.jit, static_argnums=(0, 4))
def run(cfg: GroupConfig, hw: HardwareParams, req: Requests, kv_capacity, checkpoint: bool = False
        ) -> tuple[SimState, StepTrace]:
    """Scan ``step`` over every step of the horizon (S = len(step_first) - 1), as one program (the
    differentiable simulator and sweeps; ``run_segments`` is the forward run with progress).

    ``checkpoint=True`` splits the scan into about sqrt(S) segments of sqrt(S) steps and
    rematerializes each segment in the backward pass, so reverse-mode memory grows like sqrt(S)
    states instead of S (the forward result is the same)."""
    steps = req.step_first.shape[0] - 1
    state = init(cfg, req)

    def advance(st, s):
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
