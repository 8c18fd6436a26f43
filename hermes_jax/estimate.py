"""Static-batch estimates: prefill, decode steps and end-to-end time of B equal requests.

A static batch of ``batch`` requests with ``prompt`` input tokens each is prefilled in one
iteration (which samples the first output token), then runs ``output - 1`` decode iterations over
a context that grows by one token per step. ``e2e_s`` is the time until the whole batch finishes.
All inputs except the EngineSpec are dynamic, so one compiled function serves any batch, prompt
and output, and ``jax.vmap`` runs grids of configurations.

The decode sum is exact for the hard roofline: per operator, compute and memory times are affine
in the step index (attention reads a context that grows by one token per step) up to the sliding
window cap, so the sum of their max has a closed form. With the smooth roofline the affine segment
is summed by the trapezoid rule on 65 nodes plus the Euler-Maclaurin end correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .engine import EngineSpec
from .errors import ConfigError
from .hardware.params import HardwareParams
from .iteration import IterationCost, iteration_cost
from .kernels.roofline import combine
from .mappings import make_room
from .models.operators import kv_bytes_per_token_per_device, weight_bytes_per_device

SMOOTH_NODES = 65


def _sum_relu_affine(p, q, n):
    """sum_{k=0}^{n-1} max(p + q k, 0), exact, elementwise; n >= 0 (float)."""
    safe_q = jnp.where(q == 0, 1.0, q)
    root = -p / safe_q
    k0 = jnp.clip(jnp.floor(root) + 1, 0, n)          # q > 0: positive for k >= k0
    up = (n - k0) * p + q * (k0 + n - 1) * (n - k0) / 2
    k1 = jnp.clip(jnp.ceil(root), 0, n)               # q < 0: positive for k < k1
    down = k1 * p + q * (k1 - 1) * k1 / 2
    flat = n * jnp.maximum(p, 0.0)
    return jnp.where(q > 0, up, jnp.where(q < 0, down, flat))


def _sum_max_affine(a, b, c, d, n):
    """sum_{k=0}^{n-1} max(a + b k, c + d k), exact."""
    return n * c + d * n * (n - 1) / 2 + _sum_relu_affine(a - c, b - d, n)


def _sum_combine_affine(engine: EngineSpec, a, b, c, d, n):
    if engine.roofline.combine == "max":
        return _sum_max_affine(a, b, c, d, n)
    last = jnp.maximum(n - 1, 0.0)
    u = jnp.linspace(0.0, 1.0, SMOOTH_NODES)
    k = u[:, None] * last[None] if jnp.ndim(last) else u * last
    k = k.reshape(k.shape + (1,) * (jnp.ndim(a) - jnp.ndim(last)))
    f = combine(a + b * k, c + d * k, engine.roofline)
    integral = jnp.trapezoid(f, dx=1.0, axis=0) * last / (SMOOTH_NODES - 1)
    ends = (f[0] + f[-1]) / 2
    return jnp.where(n >= 2, integral + ends, jnp.where(n == 1, f[0], 0.0))


class StaticBatchEstimate(NamedTuple):
    """Times of a static batch; shapes follow the broadcast of batch, prompt and output."""

    prefill_s: jax.Array         # s, prefill iteration (= time to first token)
    decode_step_s: jax.Array     # s, first decode iteration (0 if output <= 1)
    decode_total_s: jax.Array    # s, all output - 1 decode iterations
    tpot_s: jax.Array            # s, mean decode iteration
    e2e_s: jax.Array             # s, prefill + all decode iterations
    prefill: IterationCost       # breakdown of the prefill iteration
    decode_first: IterationCost  # breakdown of the first decode iteration


def _cost(engine, hw, prompt, context, batch, new):
    one = jnp.ones((1,), dtype=prompt.dtype)
    return iteration_cost(engine, hw, new * one, jnp.asarray(context)[..., None] * one, one,
                          copies=jnp.asarray(batch)[..., None] * one)


def static_batch(engine: EngineSpec, hw: HardwareParams, batch, prompt, output) -> StaticBatchEstimate:
    """Times of a static batch: ``batch`` requests of ``prompt`` input and ``output`` output tokens.
    Compiled once per engine configuration; called outside a trace, it first makes room for the
    compiled program (``mappings.make_room``: a loop over hundreds of configurations keeps running)."""
    make_room(inputs=(hw, batch, prompt, output))
    return _static_batch(engine, hw, batch, prompt, output)


@partial(jax.jit, static_argnums=0)
def _static_batch(engine: EngineSpec, hw: HardwareParams, batch, prompt, output) -> StaticBatchEstimate:
    batch, prompt, output = (jnp.asarray(x, dtype=hw.log["hbm_bandwidth"].dtype) for x in (batch, prompt, output))
    prefill = _cost(engine, hw, prompt, 0.0 * prompt, batch, prompt[..., None])
    n = jnp.maximum(output - 1, 0.0)                     # decode iterations after the prefill
    window = engine.model.sliding_window
    m = jnp.clip(window - prompt, 0, n) if window else n  # steps before the context hits the window
    steps = jnp.stack([prompt, prompt + 1, prompt + m])
    dec = _cost(engine, hw, prompt, steps, batch, jnp.ones_like(prompt)[..., None])
    first = jax.tree_util.tree_map(lambda x: x[0], dec)
    tc0, tc1, tcm = dec.op_compute[0], dec.op_compute[1], dec.op_compute[2]
    tm0, tm1, tmm = dec.op_memory[0], dec.op_memory[1], dec.op_memory[2]
    m_ = m[..., None]
    n_ = n[..., None]
    affine = _sum_combine_affine(engine, tc0, tc1 - tc0, tm0, tm1 - tm0, m_)
    capped = (n_ - m_) * combine(tcm, tmm, engine.roofline)
    per_op = affine + capped + n_ * (first.op_network + first.op_overhead)
    # Host time is affine in the held context until the window caps it.
    h0, h1, hm = dec.host[0], dec.host[1], dec.host[2]
    host_total = m * h0 + (h1 - h0) * m * jnp.maximum(m - 1, 0.0) / 2 + (n - m) * hm
    decode_total = per_op.sum(-1) + host_total
    prefill_s = prefill.time
    return StaticBatchEstimate(
        prefill_s=prefill_s, decode_step_s=jnp.where(n > 0, first.time, 0.0), decode_total_s=decode_total,
        tpot_s=jnp.where(n > 0, decode_total / jnp.maximum(n, 1.0), 0.0), e2e_s=prefill_s + decode_total,
        prefill=prefill, decode_first=first)


@dataclass(frozen=True)
class MemoryFootprint:
    """Bytes per device of a static batch."""

    weights: float
    kv_per_token: float          # whole model, before sharding
    kv_per_token_device: float
    kv_total: float              # per device, all sequences at their final length
    activations: float           # per device, peak of one layer's working set in the prefill
    capacity: float

    @property
    def required(self) -> float:
        return self.weights + self.kv_total + self.activations

    @property
    def missing(self) -> float:
        return max(self.required - self.capacity, 0.0)


def activation_bytes(engine: EngineSpec, tokens, sequences) -> float:
    """Peak activation bytes per device of a forward pass over ``tokens`` tokens in ``sequences``
    sequences: one layer's working set (residual, normed input, widest projection output) plus the
    fp32 logits of each sequence's last token."""
    m, par = engine.model, engine.parallel
    ab = 4.0 if engine.act_dtype == "fp32" else 2.0
    width = max(m.hidden, (2 if m.gated_mlp else 1) * max(m.ffn, m.expert_ffn * m.top_k) / par.tp,
                (m.heads + 2 * m.kv_heads) * m.head_dim / par.tp)
    return tokens * (2 * m.hidden + width) * ab + sequences * m.vocab / par.tp * 4.0


def memory_footprint(engine: EngineSpec, hw: HardwareParams, batch: int, prompt: int, output: int) -> MemoryFootprint:
    m, par = engine.model, engine.parallel
    kv_dev = kv_bytes_per_token_per_device(m, par, engine.kv_dtype)
    tokens = batch * m.kv_tokens(prompt + output)
    activations = activation_bytes(engine, batch * prompt, batch)
    return MemoryFootprint(
        weights=weight_bytes_per_device(m, par, engine.weight_dtype),
        kv_per_token=m.kv_bytes_per_token(engine.kv_dtype), kv_per_token_device=kv_dev,
        kv_total=tokens * kv_dev, activations=activations, capacity=float(np.exp(np.asarray(hw.log["hbm_capacity"]))))


def check_fits(engine: EngineSpec, hw: HardwareParams, batch: int, prompt: int, output: int) -> MemoryFootprint:
    """Raise ConfigError saying how much memory is missing if the batch does not fit on a device."""
    fp = memory_footprint(engine, hw, batch, prompt, output)
    if fp.missing > 0:
        gb = 1e9
        raise ConfigError(
            f"{engine.model.name} does not fit on {engine.system.name} at tp={engine.parallel.tp} "
            f"pp={engine.parallel.pp} (batch {batch}, {prompt}+{output} tokens): needs {fp.required / gb:.1f} GB per device "
            f"(weights {fp.weights / gb:.1f}, KV {fp.kv_total / gb:.1f}, activations {fp.activations / gb:.1f}) but has "
            f"{fp.capacity / gb:.1f} GB; missing {fp.missing / gb:.1f} GB. Use more tensor/pipeline parallelism, "
            "a smaller dtype, or a smaller batch.")
    if prompt + output > engine.model.max_context:
        raise ConfigError(f"prompt + output = {prompt + output} tokens exceeds {engine.model.name}'s context of "
                          f"{engine.model.max_context} tokens")
    return fp
