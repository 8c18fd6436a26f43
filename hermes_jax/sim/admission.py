"""Who joins the batch at a decision (admission over the queue window) and who leaves it when the KV
cache overflows (preemption by recompute or swap)."""

from __future__ import annotations

import jax.numpy as jnp

from .group import I32, F32, GroupConfig, arrival_time, blocks, cumsum, inverse_permutation, prefix_length
from .state import Records, Requests, Slots


def rejoin_need(req: Requests, cand, history):
    """What a queue entry needs to (re)join: (output tokens it has, tokens to prefill, KV tokens to
    allocate, tokens already in KV, KV tokens swapped back from host memory). ``history``: -1 never
    admitted (its ``cached`` prompt prefix arrives with its KV: fetched from a tier or sent by a
    prefill engine); g >= 0 preempted by recompute after g output tokens (prefill the prompt plus
    them again, the cached prefix included); -(g + 2) swapped out after g tokens (its KV comes back
    from host memory: input + g - 1 tokens, then it decodes)."""
    swapped = history <= -2
    done = jnp.where(swapped, -history - 2, jnp.maximum(history, 0))
    prompt = req.input_tokens[cand] + done
    swap_back = jnp.where(swapped, prompt - 1, 0)
    context = jnp.where(swapped, swap_back, jnp.where(history == -1, req.cached[cand], 0))
    return done, jnp.where(swapped, 0, prompt - context), jnp.where(swapped, swap_back, prompt), context, swap_back


def admit(cfg: GroupConfig, req: Requests, s, kv_capacity, now, last_tau, slots: Slots, queue, queue_done, head, tail,
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
    arrival = arrival_time(cfg, rec, cand, s)
    history = queue_done[(head + j) % Q]
    arrived = in_queue & (arrival <= now)
    if cfg.priority:   # rank arrived candidates by (priority, queue position)
        rank = jnp.argsort(jnp.where(arrived, req.priority[cand] * M + j, 2**30))
    else:              # the queue is in arrival order: its arrived part is a prefix
        rank = j
    cand_r, history_r, arrival_r = cand[rank], history[rank], arrival[rank]
    done_before, prompt, alloc, kv_back, swap_back = rejoin_need(req, cand_r, history_r)
    used_blocks = blocks(slots.alloc, bs).sum()
    prefill_now = jnp.where(active, slots.prompt_left, 0).sum()
    n_active = active.sum()
    ok = (arrived[rank] & (j < B - n_active)
          & (cumsum(blocks(alloc, bs)) <= kv_capacity - used_blocks)
          & (prefill_now + cumsum(cfg.scheduler.admission_tokens(jnp, prompt)) <= cfg.max_batch_tokens)
          & cfg.scheduler.may_admit(jnp, n_active))
    n_admit = prefix_length(ok)                                  # stop at the first that cannot join
    shift = cfg.estimator.shift(now, arrival_r, last_tau)
    free_rank = jnp.where(active, B, cumsum(~active) - 1)
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
        to = jnp.where(keep, (head + n_admit + cumsum(keep) - 1) % Q, Q)
        queue = queue.at[to].set(cand, mode="drop")
        queue_done = queue_done.at[to].set(history, mode="drop")
    events = jnp.where(take & (history_r[pick] == -1), new_req, -1)
    swapped_in = jnp.where(take, swap_back[pick], 0).sum()
    return slots, queue, queue_done, head + n_admit, admitted + n_admit, events, gate, swapped_in


def head_admissible(cfg: GroupConfig, req: Requests, rec: Records, s, kv_capacity, now, slots: Slots, queue, queue_done,
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
        arrival = arrival_time(cfg, rec, cand, s)
        arrived = (j < tail - head) & (arrival <= jnp.expand_dims(now, -1))           # (..., M)
        best = jnp.argmin(jnp.where(arrived, req.priority[cand] * M + j, 2**30), axis=-1)
        nxt, done, any_arrived = cand[best], queue_done[(head + best) % Q], arrived.any(-1)
    else:
        nxt, done = queue[head % Q], queue_done[head % Q]
        arrival = arrival_time(cfg, rec, nxt, s)
        any_arrived = (tail > head) & (arrival <= now)
    _, prompt, alloc, _, _ = rejoin_need(req, nxt, done)
    prefill_now = jnp.where(active, slots.prompt_left, 0).sum()
    return (any_arrived & (n_active < cfg.slots) & cfg.scheduler.may_admit(jnp, n_active)
            & (blocks(alloc, bs) <= kv_capacity - blocks(slots.alloc, bs).sum(-1))
            & (prefill_now + cfg.scheduler.admission_tokens(jnp, prompt) <= cfg.max_batch_tokens))


def preempt(cfg: GroupConfig, req: Requests, kv_capacity, new, slots: Slots, queue, queue_done, head, tail):
    """Preemption: evict the newest requests until the KV blocks the batch needs fit; the evicted go
    back to the queue front, oldest first. With swap space (``cfg.swap_tokens`` > 0), a request
    that has output tokens is swapped out to host memory while the space holds its KV, else it is
    recomputed later. Returns slots, queue, queue_done, head, events and the KV tokens swapped out."""
    Q, bs = cfg.queue, cfg.block_size
    active = slots.req >= 0
    need = jnp.where(active, jnp.maximum(slots.alloc, slots.context + new), 0)
    rank = jnp.argsort(jnp.where(active, slots.order, 2**30))
    inverse = inverse_permutation(rank)
    fits = (cumsum(blocks(need, bs)[rank]) <= kv_capacity)[inverse]
    evict = active & ~fits
    n_evict = evict.sum()
    evict_rank = cumsum(evict[rank])[inverse] - 1   # oldest evicted first
    history = slots.generated
    moved = jnp.zeros((), I32)
    if cfg.swap_tokens:
        ring = jnp.arange(Q)
        waiting = ((ring - head) % Q) < (tail - head)
        used = jnp.where(waiting & (queue_done <= -2), rejoin_need(req, queue, queue_done)[4], 0).sum()
        tokens = jnp.where(evict & (slots.generated > 0), slots.context, 0)          # KV it holds
        ahead = cumsum(tokens[rank])[inverse]                                         # oldest evicted first
        swap = (tokens > 0) & (used + ahead <= cfg.swap_tokens)
        history = jnp.where(swap, -slots.generated - 2, slots.generated)
        moved = jnp.where(swap, tokens, 0).sum()
    position = jnp.where(evict, (head - n_evict + evict_rank) % Q, Q)
    queue = queue.at[position].set(slots.req, mode="drop")
    queue_done = queue_done.at[position].set(history, mode="drop")
    event = jnp.where(evict, slots.req, -1)
    return slots._replace(req=jnp.where(evict, -1, slots.req)), queue, queue_done, head - n_evict, event, moved
