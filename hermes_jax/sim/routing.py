"""Routing arrivals to replica queues, and the closed-loop schedule of each user's next request."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .group import I32, F32, GroupConfig, arrival_time, blocks
from .state import Records, Requests, SimState


def route(cfg: GroupConfig, state: SimState, req: Requests, kv_capacity, s, first=None, last=None):
    """Append the requests arriving in step ``s`` to replica queues, in arrival order: the trace's
    (open-loop) arrivals of the step plus closed-loop requests whose think time ended by the step's
    end. Only integer state (and the closed-loop schedule) is touched, so the loop runs over the
    actual arrivals (a while loop) and stays out of gradients."""
    if first is None:   # every trace arrival of the step (else the index range given)
        first, last = req.step_first[s], req.step_first[s + 1]
    N = req.input_tokens.shape[0]
    blocks_used = blocks(state.slots.alloc, cfg.block_size).sum(-1)
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
        r = jnp.asarray(r, I32)
        push = ok & ((tail[r] - state.head[r]) < cfg.queue)
        at = jnp.where(push, tail[r] % cfg.queue, cfg.queue)          # out of range: dropped
        queue = queue.at[r, at].set(jnp.asarray(i, I32), mode="drop")
        queue_done = queue_done.at[r, at].set(-1, mode="drop")
        tail = tail.at[r].add(push.astype(I32))
        rec = rec._replace(replica=rec.replica.at[i].set(jnp.where(push, r, -1)), rejected=rec.rejected.at[i].set(~push))
        if cfg.users:   # a rejected request's user thinks and sends the next one
            rec = schedule_next(cfg, req, rec, jnp.where(push, -1, i)[None], rec.arr_step[i], rec.arr_off[i][None])
        return queue, queue_done, tail, routed + ok.astype(I32), rec

    carry = (state.queue, state.queue_done, state.tail, state.routed, state.records)
    if cfg.users:
        # merge the step's trace arrivals with due closed-loop requests, by arrival time
        rec = state.records
        opened = first + jnp.arange(cfg.arrivals)
        due = rec.pending
        is_due = (due >= 0) & (rec.arr_step[jnp.maximum(due, 0)] <= s)
        cand = jnp.concatenate([jnp.where(opened < last, opened, -1), jnp.where(is_due, due, -1)])
        when = jnp.where(cand >= 0, arrival_time(cfg, rec, jnp.maximum(cand, 0), s), jnp.inf)
        order = cand[jnp.lexsort((cand, when))]   # equal times: lower request index first, as the reference
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


def schedule_next(cfg: GroupConfig, req: Requests, rec: Records, done, step, when) -> Records:
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
