"""Differentiable hardware parameters: a pytree of natural logs of SI values.

Why log space: every parameter is a positive rate, size or time, so optimising its log keeps it
positive, makes steps relative (a 10% change is the same step for 1e12 FLOP/s and 1e-6 s), and
gives gradients of matching scale. Users read and write natural units through attribute access
(``hw.hbm_bandwidth`` is B/s) and ``replace``; ``hw.log`` is what optimisers see.

Units are decimal SI throughout: 1 GB/s = 1e9 B/s, 1 TFLOP/s = 1e12 FLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError

DTYPES = ("fp32", "bf16", "fp8", "int8", "fp4")
"""Compute dtypes with a peak rate; fp16 runs at the bf16 rate."""

TIERS = ("host_dram", "cxl", "local_ssd", "remote_store")
"""Memory tiers a node can see besides HBM, in order of the tier arrays."""

ELEMENTWISE_KERNELS = ("norm", "rope", "activation", "residual_add", "embedding")
"""Memory-bound kernel classes with their own streaming efficiency (order of elementwise_efficiency).
Measured on one A100 (Vidur profiles) they reach very different shares of HBM bandwidth: a residual
add ~90%, the activation ~50%, rotary ~40%, RMSNorm ~33%, the embedding gather ~15%."""

# name: (shape, unit, meaning). This table is the documentation of every parameter; all are
# differentiable. Shapes () are scalars; (5,) follow DTYPES; (4,) follow TIERS.
FIELDS: dict[str, tuple[tuple[int, ...], str, str]] = {
    # accelerator
    "peak_flops": ((len(DTYPES),), "FLOP/s", "dense peak per device by dtype (DTYPES order); "
                   "a dtype without native support carries the rate it is emulated at"),
    "hbm_bandwidth": ((), "B/s", "device memory bandwidth"),
    "hbm_capacity": ((), "B", "device memory capacity"),
    "compute_efficiency": ((), "1", "share of peak reached by large GEMMs"),
    "compute_half_flop": ((), "FLOP", "per-device op size at which GEMM efficiency is half its maximum"),
    "attention_efficiency": ((), "1", "share of peak reached by attention kernels"),
    "attention_causal_efficiency": ((), "1", "share of the causally masked attention work a kernel skips "
                                    "(1: FlashAttention-2 style tile skipping; 0: computes the full rectangle)"),
    "attention_row_keys": ((), "tokens", "fixed attention work per query row, as extra key positions "
                           "(softmax rescaling, Q load and output write per query tile)"),
    "memory_efficiency": ((), "1", "share of HBM bandwidth reached by large streams"),
    "memory_half_bytes": ((), "B", "per-device op traffic at which bandwidth efficiency is halved"),
    "attention_memory_efficiency": ((), "1", "bandwidth attention kernels reach reading the KV cache, as a share "
                                    "of memory_efficiency (paged gathers of small blocks stream worse than "
                                    "dense tensors; 1: the same)"),
    "paged_attention_memory_efficiency": ((), "1", "bandwidth a paged decode kernel that does not share KV "
                                          "heads reaches reading them, as a share of the attention kernels' "
                                          "(where the stack's rule runs it: kernels.kv_reads)"),
    "paged_kv_reread": ((), "1", "share of a query-head group's KV re-reads that reach HBM in a decode kernel "
                        "that does not share KV heads across the group, where the stack's rule says it runs "
                        "(kernels.kv_reads; 0: shared as FlashAttention does, 1: every query head reads its KV "
                        "head from HBM)"),
    "elementwise_efficiency": ((len(ELEMENTWISE_KERNELS),), "1", "share of HBM bandwidth reached by each "
                               "memory-bound kernel class (ELEMENTWISE_KERNELS order)"),
    "kernel_overhead_s": ((), "s", "fixed time per kernel (launch and tail)"),
    "host_overhead_s": ((), "s", "per-iteration host time: scheduler, input preparation, sampler"),
    "host_overhead_per_seq_s": ((), "s", "extra host time per sequence in the batch per iteration"),
    "host_overhead_per_context_token_s": ((), "s", "extra host time per iteration per token of KV cache the "
                                          "running sequences hold (block tables rebuilt on the host each "
                                          "step, as in vLLM's v0 engine)"),
    "host_overhead_multiworker_s": ((), "s", "extra host time per iteration when the engine spans more than "
                                    "one device (inputs broadcast to the workers)"),
    "host_overhead_per_vocab_s": ((), "s", "sampler time per vocabulary entry per iteration"),
    "host_overhead_per_logit_s": ((), "s", "sampler time per vocabulary entry per sampled sequence"),
    # links (per device, one direction)
    "intra_link_bandwidth": ((), "B/s", "intra-node link bandwidth per device per direction"),
    "intra_link_latency": ((), "s", "intra-node per-message latency (alpha)"),
    "collective_overhead_s": ((), "s", "fixed time per collective call (launch and synchronisation), "
                              "bandwidth protocol"),
    "collective_ll_overhead_s": ((), "s", "fixed time per collective call in the low-latency protocol"),
    "collective_ll_latency_ratio": ((), "1", "per-step latency of the low-latency protocol over the link's alpha"),
    "collective_ll_bandwidth_efficiency": ((), "1", "share of the bandwidth protocol's bandwidth that the "
                                           "low-latency protocol reaches"),
    "intra_link_efficiency": ((), "1", "share of intra-node link bandwidth reached by collectives"),
    "inter_link_bandwidth": ((), "B/s", "inter-node bandwidth per device per direction"),
    "inter_link_latency": ((), "s", "inter-node per-message latency (alpha)"),
    "inter_link_efficiency": ((), "1", "share of inter-node bandwidth reached by collectives"),
    # memory tiers seen from one device
    "tier_bandwidth": ((len(TIERS),), "B/s", "transfer bandwidth from each tier into HBM"),
    "tier_latency": ((len(TIERS),), "s", "first-byte latency of each tier"),
    "tier_capacity": ((len(TIERS),), "B", "capacity of each tier available to one node"),
    # host CPU
    "cpu_cores": ((), "1", "CPU cores per node"),
    "cpu_core_flops": ((), "FLOP/s", "fp32 peak per core (vector units)"),
    "cpu_dram_bandwidth": ((), "B/s", "CPU DRAM bandwidth per node"),
    # power and price
    "power_idle_w": ((), "W", "device power when idle"),
    "power_max_w": ((), "W", "device power at full load (TDP)"),
    "price_per_hour": ((), "$/h", "rental price per device-hour"),
}

# Fields set to 1 by the ideal roofline (the LL latency ratio too: ideal LL and Simple coincide).
EFFICIENCY_FIELDS = ("compute_efficiency", "attention_efficiency", "attention_causal_efficiency", "memory_efficiency",
                     "attention_memory_efficiency", "paged_attention_memory_efficiency",
                     "elementwise_efficiency", "intra_link_efficiency", "inter_link_efficiency",
                     "collective_ll_latency_ratio", "collective_ll_bandwidth_efficiency")
OVERHEAD_FIELDS = ("compute_half_flop", "attention_row_keys", "paged_kv_reread", "memory_half_bytes", "kernel_overhead_s", "collective_overhead_s",
                   "collective_ll_overhead_s",
                   "host_overhead_s", "host_overhead_per_seq_s", "host_overhead_per_context_token_s",
                   "host_overhead_multiworker_s",
                   "host_overhead_per_vocab_s", "host_overhead_per_logit_s")
# Rates, sizes and efficiencies a device cannot do without: 0 would make a service time infinite (or
# a KV cache empty), so 0 is refused where parameters are built; overheads and latencies may be 0.
POSITIVE_FIELDS = ("peak_flops", "hbm_bandwidth", "hbm_capacity", "compute_efficiency", "attention_efficiency",
                   "memory_efficiency", "attention_memory_efficiency", "paged_attention_memory_efficiency",
                   "elementwise_efficiency",
                   "intra_link_bandwidth", "intra_link_efficiency", "inter_link_bandwidth", "inter_link_efficiency",
                   "collective_ll_bandwidth_efficiency", "tier_bandwidth", "cpu_cores", "cpu_core_flops",
                   "cpu_dram_bandwidth")


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class HardwareParams:
    """Differentiable parameters of one node type (device, its links, tiers, host CPU).

    ``log[name]`` holds ``log(value)`` for every name in ``FIELDS``; ``hw.name`` returns the natural
    value. A value of exactly 0 (an overhead switched off) is stored as ``-inf`` and reads back as 0.
    """

    log: Mapping[str, jax.Array]

    def tree_flatten(self):
        names = tuple(FIELDS)
        return tuple(self.log[n] for n in names), names

    @classmethod
    def tree_unflatten(cls, names, children):
        return cls(dict(zip(names, children)))

    def __getattr__(self, name: str):
        if name in FIELDS:
            return jnp.exp(self.log[name])
        raise AttributeError(name)

    @classmethod
    def from_natural(cls, values: Mapping[str, object], dtype=None) -> "HardwareParams":
        """Build from natural SI values; every FIELDS name is required and must be >= 0 (> 0 for
        POSITIVE_FIELDS). A scalar
        given for a vector field applies to every entry."""
        missing = [n for n in FIELDS if n not in values]
        if missing:
            raise ConfigError(f"hardware parameters missing: {', '.join(missing)}")
        logs = {}
        for name, (shape, unit, _) in FIELDS.items():
            value = np.asarray(values[name], dtype=np.float64)
            if value.shape == () and shape != ():
                value = np.broadcast_to(value, shape)
            if value.shape != shape:
                raise ConfigError(f"hardware parameter {name}: expected shape {shape}, got {value.shape}")
            if not np.all(np.isfinite(value)) or np.any(value < 0):
                raise ConfigError(f"hardware parameter {name} must be finite and >= 0 ({unit}), got {value}")
            if name in POSITIVE_FIELDS and np.any(value == 0):
                raise ConfigError(f"hardware parameter {name} must be > 0 ({unit}; 0 would make every operation "
                                  f"that needs it take forever), got {value}")
            with np.errstate(divide="ignore"):
                logs[name] = jnp.asarray(np.log(value), dtype=dtype)
        return cls(logs)

    def natural(self) -> dict[str, np.ndarray]:
        """All parameters in natural SI units as NumPy arrays."""
        return {n: np.exp(np.asarray(self.log[n], dtype=np.float64)) for n in FIELDS}

    def replace(self, **values) -> "HardwareParams":
        """Copy with some parameters set to new natural values (scalars or arrays)."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise ConfigError(f"unknown hardware parameter(s) {sorted(unknown)}; known: {', '.join(FIELDS)}")
        logs = dict(self.log)
        for name, value in values.items():
            logs[name] = jnp.log(jnp.asarray(value, dtype=jnp.result_type(self.log[name])))
        return HardwareParams(logs)

    def astype(self, dtype) -> "HardwareParams":
        return HardwareParams({n: jnp.asarray(v, dtype=dtype) for n, v in self.log.items()})

    def peak(self, dtype: str) -> jax.Array:
        """Peak FLOP/s for a compute dtype name (fp16 maps to bf16)."""
        return self.peak_flops[dtype_index(dtype)]


def dtype_index(dtype: str) -> int:
    dtype = {"fp16": "bf16", "float16": "bf16", "bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype)
    if dtype not in DTYPES:
        raise ConfigError(f"unknown compute dtype {dtype!r}; known: {', '.join(DTYPES)} (and fp16)")
    return DTYPES.index(dtype)


def stack(params: list[HardwareParams]) -> HardwareParams:
    """Stack several parameter sets along a new leading axis, for ``jax.vmap`` over configurations."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params)
