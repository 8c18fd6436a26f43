"""Alpha-beta models of collectives over ``p`` devices with message ``nbytes`` per device.

Link parameters: alpha = per-step latency (s), beta = effective bandwidth per device per direction
(B/s) = link bandwidth x link efficiency. Formulas (Thakur, Rabenseifner & Gropp 2005; NCCL docs):
- ring all-reduce:  2 (p-1) (alpha + n / (p beta))
- tree all-reduce:  2 ceil(log2 p) alpha + 2 n / beta     (double binary tree, pipelined)
- all-to-all:       (p-1) (alpha + n / (p beta))
- send/recv:        alpha + n / beta
A group larger than a node runs at the inter-node link's parameters (the slowest hop bounds it).

Two protocols, as in NCCL's own tuning model, and each call takes the faster (NCCL picks the protocol
by its predicted time): the bandwidth protocol (NCCL "Simple") pays ``collective_overhead_s`` per call
and reaches the link's effective bandwidth; the low-latency one (NCCL "LL": data and flag in one
store, no separate synchronisation) pays ``collective_ll_overhead_s`` per call and
``collective_ll_latency_ratio`` x alpha per step, at ``collective_ll_bandwidth_efficiency`` of that
bandwidth. In the Vidur NCCL profiles (A100, 4 GPUs) time rises from a ~20 us floor at a steeper
slope below a few MB than above, where the line's intercept is ~60 us: one alpha-beta line cannot
follow both (``python calibration/data_checks.py`` prints the two lines).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from ..hardware.params import HardwareParams

ALGORITHMS = ("ring", "tree", "auto")


def link(hw: HardwareParams, group_size: int, devices_per_node: int):
    """(alpha s, beta B/s) of the link a group of ``group_size`` devices communicates over."""
    if group_size <= devices_per_node:
        return hw.intra_link_latency, hw.intra_link_bandwidth * hw.intra_link_efficiency
    return hw.inter_link_latency, hw.inter_link_bandwidth * hw.inter_link_efficiency


def allreduce_time(nbytes, p: int, alpha, beta, algorithm: str = "ring"):
    if p <= 1:
        return jnp.zeros_like(jnp.asarray(nbytes, dtype=jnp.result_type(float)))
    ring = 2 * (p - 1) * (alpha + nbytes / (p * beta))
    tree = 2 * math.ceil(math.log2(p)) * alpha + 2 * nbytes / beta
    if algorithm == "ring":
        return ring
    if algorithm == "tree":
        return tree
    if algorithm == "auto":  # NCCL picks the faster per message size
        return jnp.minimum(ring, tree)
    raise ValueError(f"collective algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def alltoall_time(nbytes, p: int, alpha, beta):
    if p <= 1:
        return jnp.zeros_like(jnp.asarray(nbytes, dtype=jnp.result_type(float)))
    return (p - 1) * (alpha + nbytes / (p * beta))


def sendrecv_time(nbytes, alpha, beta):
    return alpha + nbytes / beta


def _alpha_beta_time(kind: str, nbytes, p: int, alpha, beta, algorithm: str):
    if kind == "allreduce":
        return allreduce_time(nbytes, p, alpha, beta, algorithm)
    if kind == "alltoall":
        return alltoall_time(nbytes, p, alpha, beta)
    if kind == "sendrecv":
        return sendrecv_time(nbytes, alpha, beta)
    raise ValueError(f"unknown collective {kind!r}")


def protocol_times(kind: str, nbytes, p: int, hw: HardwareParams, devices_per_node: int, algorithm: str = "ring"):
    """(bandwidth protocol, low-latency protocol) seconds of one collective, overheads included."""
    alpha, beta = link(hw, p, devices_per_node)
    simple = _alpha_beta_time(kind, nbytes, p, alpha, beta, algorithm) + hw.collective_overhead_s
    low_latency = (_alpha_beta_time(kind, nbytes, p, alpha * hw.collective_ll_latency_ratio,
                                    beta * hw.collective_ll_bandwidth_efficiency, algorithm)
                   + hw.collective_ll_overhead_s)
    return simple, low_latency


def collective_time(kind: str, nbytes, p: int, hw: HardwareParams, devices_per_node: int, algorithm: str = "ring"):
    """Seconds for one collective of ``kind`` (allreduce | alltoall | sendrecv) under the faster
    protocol; 0 for no data."""
    simple, low_latency = protocol_times(kind, nbytes, p, hw, devices_per_node, algorithm)
    return jnp.where(nbytes > 0, jnp.minimum(simple, low_latency), 0.0)
