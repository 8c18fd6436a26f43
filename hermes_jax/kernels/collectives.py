"""Alpha-beta models of collectives over ``p`` devices with message ``nbytes`` per device.

Link parameters: alpha = per-step latency (s), beta = effective bandwidth per device per direction
(B/s) = link bandwidth x link efficiency. Formulas (Thakur, Rabenseifner & Gropp 2005; NCCL docs):
- ring all-reduce:  2 (p-1) (alpha + n / (p beta))
- tree all-reduce:  2 ceil(log2 p) alpha + 2 n / beta     (double binary tree, pipelined)
- all-to-all:       (p-1) (alpha + n / (p beta))
- send/recv:        alpha + n / beta
A group larger than a node runs at the inter-node link's parameters (the slowest hop bounds it).
Every call adds ``collective_overhead_s`` (kernel launch and the synchronisation of the group), which
sets the ~20-60 us floor NCCL shows for small messages.
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


def collective_time(kind: str, nbytes, p: int, hw: HardwareParams, devices_per_node: int, algorithm: str = "ring"):
    """Seconds for one collective of ``kind`` (allreduce | alltoall | sendrecv); 0 for no data."""
    alpha, beta = link(hw, p, devices_per_node)
    if kind == "allreduce":
        t = allreduce_time(nbytes, p, alpha, beta, algorithm)
    elif kind == "alltoall":
        t = alltoall_time(nbytes, p, alpha, beta)
    elif kind == "sendrecv":
        t = sendrecv_time(nbytes, alpha, beta)
    else:
        raise ValueError(f"unknown collective {kind!r}")
    return jnp.where(nbytes > 0, t + hw.collective_overhead_s, 0.0)
