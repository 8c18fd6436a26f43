"""Static configuration of an engine group and the small array helpers its simulation shares."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ..engine import EngineSpec
from .estimators import Pathwise
from .state import Records

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
    route_each_arrival: bool = False   # run replicas up to each arrival before routing it (exact, forward only)
    vmap_guard: bool = False   # under vmap, skip a branch no lane needs (sweeps; forward only)
    swap_tokens: int = 0       # host swap space per replica in KV tokens (0: preempt by recompute)
    kv_token_bytes: float = 0.0  # B of KV per token per device (swap transfers)


def blocks(tokens, block_size):
    return (tokens + block_size - 1) // block_size


def cumsum(x):
    """Inclusive prefix sum along the last axis (booleans count as 0/1)."""
    return jnp.cumsum(x.astype(I32) if x.dtype == bool else x, axis=-1)


def prefix_length(ok):
    """Number of leading True entries of a vector."""
    return jnp.where(ok.all(), ok.shape[-1], jnp.argmin(ok)).astype(I32)


def inverse_permutation(perm):
    return jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[-1], dtype=perm.dtype))


def cond(cfg: GroupConfig, pred, fn, args, unchanged, select: bool = True):
    """``fn(*args)`` if ``pred`` else ``unchanged``, the result cast to ``unchanged``'s dtypes (sums
    promote to int64 under jax_enable_x64). Every traced value ``fn`` needs must be in ``args``.

    Under ``jax.vmap`` a plain ``lax.cond`` becomes a select that runs ``fn`` for every lane on every
    call. With ``cfg.vmap_guard`` the batched form runs ``fn`` only when some lane needs it, then
    selects per lane (a custom batching rule; forward only: it has no reverse-mode derivative).
    ``select=False`` promises that ``fn`` returns ``unchanged`` itself wherever ``pred`` is false (a
    scatter of nothing): the per-lane select, O(lanes x size) for large outputs, is then skipped."""
    def run(*a):
        return jax.tree_util.tree_map(lambda x, like: x.astype(like.dtype), fn(*a), unchanged)

    if not cfg.vmap_guard:
        return jax.lax.cond(pred, lambda: run(*args), lambda: unchanged)

    @jax.custom_batching.custom_vmap
    def guarded(pred, args, unchanged):
        return jax.lax.cond(pred, lambda: run(*args), lambda: unchanged)

    @guarded.def_vmap
    def rule(size, batched, pred, args, unchanged):
        pred_b, args_b, unchanged_b = batched
        pred = pred if pred_b else jnp.broadcast_to(pred, (size,))
        unchanged = jax.tree_util.tree_map(lambda x, b: x if b else jnp.broadcast_to(x, (size,) + x.shape),
                                           unchanged, unchanged_b)
        axes = tuple(jax.tree_util.tree_map(lambda b: 0 if b else None, args_b))

        def lanes():
            out = jax.vmap(run, in_axes=axes)(*args)
            if not select:
                return out
            return jax.tree_util.tree_map(lambda o, u: jnp.where(pred.reshape((size,) + (1,) * (o.ndim - 1)), o, u),
                                          out, unchanged)

        out = jax.lax.cond(pred.any(), lanes, lambda: unchanged)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return guarded(pred, args, unchanged)


def arrival_time(cfg: GroupConfig, rec: Records, index, s):
    """Arrival time(s) of requests ``index`` relative to the start of step ``s`` (s). Read from the
    records: closed-loop requests get theirs when the previous reply comes."""
    return (rec.arr_step[index] - s).astype(F32) * jnp.asarray(cfg.dt, F32) + rec.arr_off[index]
