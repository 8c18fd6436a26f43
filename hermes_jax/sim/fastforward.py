"""Exact fast-forward over the pure-decode iterations between scheduler events."""

from __future__ import annotations

import jax.numpy as jnp

from ..hardware.params import HardwareParams
from ..iteration import iteration_cost
from .admission import head_admissible
from .group import I32, F32, GroupConfig, blocks, cumsum, prefix_length
from .state import Records, Requests, Slots


def fast_forward(cfg: GroupConfig, hw: HardwareParams, req: Requests, rec: Records, s, kv_capacity, slots: Slots,
                  start, queue, queue_done, head, tail, limit):
    """Run, in one vectorized evaluation, the pure-decode iterations that follow until the next
    event: an admission becomes possible, a request finishes (that iteration is included), the KV
    cache needs a block it does not have (preemption), the step ends, or W iterations are done.

    Between such events the batch is fixed, so these iterations are exactly what the scheduler loop
    would run one by one; only their count is found at once. Returns the new slots, the clock,
    the finishing slots' requests (B,) (-1 none) and times, and the busy time and work added.
    """
    W, bs = cfg.fast_forward, cfg.block_size
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
    begin = start + cumsum(tau) - tau                              # (W,) start of iteration w

    # KV blocks needed during iteration w
    needed = jnp.where(active, blocks(jnp.maximum(slots.alloc, context + 1), bs), 0).sum(-1)
    # would the oldest waiting request be admitted at the start of iteration w?
    admits = head_admissible(cfg, req, rec, s, kv_capacity, begin, slots._replace(alloc=jnp.where(active, jnp.maximum(slots.alloc, context), 0)),
                              queue, queue_done, head, tail)
    left = jnp.where(active, slots.target - slots.generated, 2**30).min()    # iteration left - 1 finishes
    ok = decoding & (begin < limit) & ~admits & (needed <= kv_capacity) & (w[:, 0] < left)
    n = prefix_length(ok)
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
