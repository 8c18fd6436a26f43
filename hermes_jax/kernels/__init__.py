"""Service-time kernels: roofline, collectives, memory-tier transfers, CPU work."""

from .collectives import allreduce_time, alltoall_time, collective_time, sendrecv_time
from .roofline import RooflineOptions, combine, compute_time, memory_time, op_time
from .transfer import cpu_time, tier_transfer_time

__all__ = ["allreduce_time", "alltoall_time", "collective_time", "sendrecv_time", "RooflineOptions", "combine",
           "compute_time", "memory_time", "op_time", "cpu_time", "tier_transfer_time"]
