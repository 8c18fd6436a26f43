"""Memory-tier transfers and CPU work.

Tier transfer: ``t = latency + nbytes / (bandwidth / sharers)``: concurrent transfers on one tier
share its bandwidth equally (fluid model). CPU work: roofline over the cores given to it,
``max(flop / (cores * core_flops), nbytes / dram_bandwidth)``.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..errors import ConfigError
from ..hardware.params import TIERS, HardwareParams


def tier_index(tier: str) -> int:
    if tier not in TIERS:
        raise ConfigError(f"unknown memory tier {tier!r}; known: {', '.join(TIERS)}")
    return TIERS.index(tier)


def tier_transfer_time(hw: HardwareParams, tier: str, nbytes, sharers=1.0):
    """Seconds to move ``nbytes`` from ``tier`` into device memory with ``sharers`` concurrent streams."""
    i = tier_index(tier)
    bandwidth = hw.tier_bandwidth[i] / jnp.maximum(sharers, 1.0)
    return jnp.where(nbytes > 0, hw.tier_latency[i] + nbytes / bandwidth, 0.0)


def cpu_time(hw: HardwareParams, flop, nbytes, cores=None):
    """Seconds of CPU work on ``cores`` cores (default: all); memory traffic at node DRAM bandwidth."""
    cores = hw.cpu_cores if cores is None else jnp.minimum(cores, hw.cpu_cores)
    return jnp.maximum(flop / (cores * hw.cpu_core_flops), nbytes / hw.cpu_dram_bandwidth)
