"""Time of one engine iteration (prefill, decode or mixed batch), differentiable in HardwareParams.

``iteration_cost`` is pure JAX: it jit-compiles, differentiates with respect to every hardware
parameter, and broadcasts over leading batch axes of ``new`` / ``context`` / ``logits``
(e.g. decode steps) and, through ``jax.vmap``, over parameter sets.

iteration time = host time + sum over operators of count * service_time(operator), where
host time = host_overhead + host_overhead_per_seq * active sequences
          + host_overhead_per_context_token * KV tokens the active sequences hold
          + host_overhead_multiworker [engine spans > 1 device]
          + vocab * (host_overhead_per_vocab + host_overhead_per_logit * sampled sequences)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .engine import EngineSpec
from .hardware.params import ELEMENTWISE_KERNELS, HardwareParams
from .kernels.collectives import collective_time
from .kernels.roofline import op_time
from .models.operators import ATTENTION, COLLECTIVE, ELEMENTWISE, GEMM, OpSpec, op_specs, operator_costs

BOUNDS = ("compute", "memory", "network", "overhead")


class IterationCost(NamedTuple):
    """Cost of one iteration. ``...`` is the broadcast batch shape of the inputs; n = len(ops)."""

    time: jax.Array          # (...,) s, whole iteration including host overhead
    host: jax.Array          # (...,) s, host overhead part
    op_time: jax.Array       # (..., n) s, per operator type, all its executions
    op_compute: jax.Array    # (..., n) s, compute-roofline term (all executions)
    op_memory: jax.Array     # (..., n) s, memory-roofline term (all executions)
    op_network: jax.Array    # (..., n) s, collective time (all executions)
    op_overhead: jax.Array   # (..., n) s, fixed per-kernel overhead (all executions)
    op_flop: jax.Array       # (..., n) FLOP per device, all executions
    op_bytes: jax.Array      # (..., n) B per device (messages for collectives), all executions


def iteration_cost(engine: EngineSpec, hw: HardwareParams, new, context, logits, copies=None) -> IterationCost:
    """Cost of one iteration; ``new``, ``context``, ``logits`` (and optional ``copies``, identical
    sequences per slot) have shape (..., B) in tokens."""
    ops = op_specs(engine.model, engine.parallel)
    costs = operator_costs(engine.model, engine.parallel, engine.weight_dtype, engine.kv_dtype,
                           engine.act_dtype, new, context, logits, copies, kv_reads=engine.system.kv_reads)
    dtype = hw.log["hbm_bandwidth"].dtype
    active = costs["_active_sequences"][0].astype(dtype)
    peak_gemm = hw.peak(engine.compute_dtype)
    flops, nbytes = [], []
    for op in ops:
        flop, moved = costs[op.name]
        if op.kind == ATTENTION:
            flop = (flop + (1.0 - hw.attention_causal_efficiency) * costs["_attention_masked_flop"][0]
                    + hw.attention_row_keys * costs["_attention_row_flop"][0])
            if "_attention_paged_kv_bytes" in costs:
                # The paged kernel's reads at its own streaming efficiency, as equivalent bytes at
                # the attention kernels' efficiency (one roofline per operator).
                reread, paged = costs["_attention_paged_kv_bytes"]
                moved = moved + paged * (1.0 / hw.paged_attention_memory_efficiency - 1.0) \
                    + hw.paged_kv_reread * reread / hw.paged_attention_memory_efficiency
        flops.append(jnp.broadcast_to(flop, active.shape).astype(dtype))
        nbytes.append(jnp.broadcast_to(moved, active.shape).astype(dtype))
    flop, moved = jnp.stack(flops, axis=-1), jnp.stack(nbytes, axis=-1)            # (..., n)
    zero = jnp.zeros_like(flop)
    # Kernels: one roofline over the operator axis (one traced expression, not one per operator),
    # with each operator's (peak, efficiency, half size, memory efficiency) gathered into vectors.
    kernels = [i for i, op in enumerate(ops) if op.kind != COLLECTIVE]
    t, tc, tm, tn, to = zero, zero, zero, zero, zero
    if kernels:
        terms = [kernel_terms(hw, ops[i].kind, ops[i].kernel, peak_gemm) for i in kernels]
        peak, eff, half, mem_eff = (jnp.stack([jnp.asarray(x[j], dtype) for x in terms]) for j in range(4))
        index = jnp.asarray(kernels)
        kt, kc, km = op_time(flop[..., index], moved[..., index], hw, peak, eff, half, mem_eff, engine.roofline)
        busy = (flop[..., index] > 0) | (moved[..., index] > 0)
        t, tc, tm = t.at[..., index].set(kt), tc.at[..., index].set(kc), tm.at[..., index].set(km)
        to = to.at[..., index].set(jnp.where(busy, hw.kernel_overhead_s, 0.0))
    for i, op in enumerate(ops):
        if op.kind == COLLECTIVE:
            ct = collective_time(op.collective, moved[..., i], op.group_size, hw, engine.system.devices_per_node,
                                 engine.collective)
            t, tn = t.at[..., i].set(ct), tn.at[..., i].set(ct)
    count = jnp.asarray([op.count for op in ops], dtype)
    stacked = {k: count * v for k, v in zip(("time", "compute", "memory", "network", "overhead", "flop", "bytes"),
                                            (t, tc, tm, tn, to, flop, moved))}
    sampled = costs["_sampled_sequences"][0].astype(dtype)
    held = jnp.broadcast_to(costs["_held_tokens"][0], active.shape).astype(dtype)
    host = host_time(hw, active, sampled, engine.model.vocab, engine.parallel.devices, held)
    return IterationCost(time=stacked["time"].sum(-1) + host, host=host, op_time=stacked["time"],
                         op_compute=stacked["compute"], op_memory=stacked["memory"],
                         op_network=stacked["network"], op_overhead=stacked["overhead"],
                         op_flop=stacked["flop"], op_bytes=stacked["bytes"])


def kernel_terms(hw: HardwareParams, kind: str, kernel: str, peak_gemm):
    """(peak FLOP/s, compute efficiency, half size in FLOP, memory efficiency) of a GEMM, ATTENTION or
    ELEMENTWISE kernel; ``kernel`` names the ELEMENTWISE_KERNELS class, ``peak_gemm`` the peak of the
    compute dtype. Size-dependent efficiency is a property of tiled matrix kernels; elementwise kernels
    run on the vector units, are memory-bound and stream at a share of bandwidth that depends on the
    kernel (measured: Vidur profiles), so they get the vector peak, no half size and their class's
    efficiency. Attention reads the KV cache at its own share of the streaming efficiency."""
    if kind == ELEMENTWISE:
        return hw.peak("fp32"), hw.compute_efficiency, 0.0, hw.elementwise_efficiency[ELEMENTWISE_KERNELS.index(kernel)]
    if kind == ATTENTION:
        return peak_gemm, hw.attention_efficiency, hw.compute_half_flop, hw.memory_efficiency * hw.attention_memory_efficiency
    if kind == GEMM:
        return peak_gemm, hw.compute_efficiency, hw.compute_half_flop, hw.memory_efficiency
    raise ValueError(f"no kernel terms for operator kind {kind!r}")


def host_time(hw: HardwareParams, active, sampled, vocab: int, devices: int, held=0.0):
    """Host seconds of one iteration with ``active`` sequences of which ``sampled`` sample a token
    and which hold ``held`` KV tokens (0 when nothing runs). The sampler term scales with the
    vocabulary: measured (Vidur, A100) it grows from ~0.55 ms at 32K entries to ~1 ms at 152K for 8
    sequences."""
    multiworker = hw.host_overhead_multiworker_s if devices > 1 else 0.0
    sampler = vocab * (hw.host_overhead_per_vocab_s + hw.host_overhead_per_logit_s * sampled)
    per_step = (hw.host_overhead_s + hw.host_overhead_per_seq_s * active + hw.host_overhead_per_context_token_s * held
                + multiworker + sampler)
    return jnp.where(active > 0, per_step, 0.0)


def iteration_time(engine: EngineSpec, hw: HardwareParams, new, context, logits=None):
    """Seconds for one iteration; ``logits`` defaults to every active slot sampling a token."""
    new = jnp.asarray(new)
    logits = (new > 0) if logits is None else logits
    return iteration_cost(engine, hw, new, context, logits).time


def operators(engine: EngineSpec) -> tuple[OpSpec, ...]:
    """Static operator list matching the last axis of ``IterationCost`` fields."""
    return op_specs(engine.model, engine.parallel)


def bounds(cost: IterationCost) -> list[str]:
    """Dominant bound per operator (unbatched cost): compute, memory, network or overhead."""
    terms = jnp.stack([cost.op_compute, cost.op_memory, cost.op_network, cost.op_overhead], axis=-1)
    return [BOUNDS[int(i)] for i in jnp.argmax(terms, axis=-1)]
