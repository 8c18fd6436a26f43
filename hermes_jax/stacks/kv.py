"""KV-cache capacity under a stack's sizing rule, and how a static batch runs when it does not fit."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ..engine import EngineSpec
from ..estimate import StaticBatchEstimate, activation_bytes, static_batch
from ..hardware.params import HardwareParams
from ..models.operators import kv_bytes_per_token_per_device, weight_bytes_per_device
from .preemption import Schedule, preempt_schedule
from .profile import StackProfile


class KVCapacity(NamedTuple):
    blocks: int            # KV blocks per device (0: the weights and reserves leave nothing)
    block_size: int        # tokens per block
    free_bytes: float      # B per device left for KV (negative: missing)
    weights_bytes: float   # B per device
    activation_bytes: float  # B per device, peak of the profiling pass
    capacity_bytes: float  # B per device


def kv_capacity(engine: EngineSpec, hw: HardwareParams, stack: StackProfile) -> KVCapacity:
    """Blocks per device: gpu_memory_utilization * capacity - weights - profiling-pass activations -
    non-torch allocations, over the KV bytes of one block (KV is sharded like the heads)."""
    kv = stack.kv
    capacity = float(np.exp(np.asarray(hw.log["hbm_capacity"], dtype=np.float64)))
    weights = weight_bytes_per_device(engine.model, engine.parallel, engine.weight_dtype)
    tokens = max(kv.profile_tokens, 1)
    act = activation_bytes(engine, tokens, min(kv.profile_sequences, tokens))
    free = kv.gpu_memory_utilization * capacity - weights - act - kv.non_torch_bytes
    per_block = kv_bytes_per_token_per_device(engine.model, engine.parallel, engine.kv_dtype) * kv.block_size
    blocks = max(int(free // per_block), 0) if per_block > 0 else 0
    return KVCapacity(blocks, kv.block_size, free, weights, act, capacity)


class Waves(NamedTuple):
    """A static batch split into waves of what fits; ``full`` waves of ``per_wave`` then one of ``last``."""

    fits: bool             # the whole batch fits at once
    per_wave: int          # requests per full wave (0: not even one request fits)
    full: int              # number of full waves
    last: int              # requests in the final partial wave (0: none)
    missing_bytes: float   # B per device the whole batch would need beyond the KV cache


def static_waves(engine: EngineSpec, cap: KVCapacity, batch: int, prompt: int, output: int) -> Waves:
    """How a stack that admits what fits runs ``batch`` requests of ``prompt + output`` tokens: in
    waves of as many requests as the KV blocks hold at their final length.

    Assumption: no request is preempted mid-wave (a stack whose ``overflow`` is "preempt" runs the
    schedule of ``overflow_schedule`` instead)."""
    tokens = engine.model.kv_tokens(prompt + output)
    per_request = math.ceil(tokens / cap.block_size)
    per_wave = cap.blocks // per_request if per_request else batch
    per_block = kv_bytes_per_token_per_device(engine.model, engine.parallel, engine.kv_dtype) * cap.block_size
    missing = max(batch * per_request - cap.blocks, 0) * per_block
    if per_wave >= batch:
        return Waves(True, batch, 1, 0, 0.0)
    if per_wave == 0:
        return Waves(False, 0, 0, 0, missing)
    return Waves(False, per_wave, batch // per_wave, batch % per_wave, missing)


def static_batch_in_waves(engine: EngineSpec, hw: HardwareParams, per_wave, full, last, prompt, output
                          ) -> tuple[jnp.ndarray, StaticBatchEstimate]:
    """(end-to-end seconds, estimate of one full wave) of a static batch run as ``full`` waves of
    ``per_wave`` requests then one of ``last`` (arrays broadcast; differentiable in ``hw``). The
    first token of the first wave's requests comes with its prefill: ``wave.prefill_s``."""
    last = np.asarray(last, float)
    wave = static_batch(engine, hw, per_wave, prompt, output)
    e2e = np.asarray(full, float) * wave.e2e_s
    if np.any(last > 0):  # a partial last wave only where some batch does not fit at once
        rest = static_batch(engine, hw, np.maximum(last, 1.0), prompt, output)
        e2e = e2e + jnp.where(last > 0, rest.e2e_s, 0.0)
    return e2e, wave


def overflow_schedule(engine: EngineSpec, cap: KVCapacity, stack: StackProfile, waves: Waves, batch: int,
                      prompt: int, output: int) -> Schedule | None:
    """The preempting schedule of a batch that does not fit, where the stack preempts (``stack.overflow``
    "preempt"); None where the batch fits, the stack runs waves, or one request takes nearly every
    block (vLLM's watermark: it would refuse the request; the waves estimate stands)."""
    if waves.fits or waves.per_wave == 0 or stack.overflow != "preempt" or output < 1:
        return None
    if engine.model.sliding_window and prompt + output > engine.model.sliding_window:
        return None   # blocks recycled past the window: not emulated, the waves estimate stands
    try:
        return preempt_schedule(cap.blocks, cap.block_size, batch, prompt, output,
                                max_num_seqs=stack.kv.profile_sequences, max_batched_tokens=stack.kv.profile_tokens)
    except ValueError:
        return None
