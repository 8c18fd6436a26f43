"""From a Scenario to what the simulators need: static group configs, hardware, KV capacity and
device-side request arrays (with too-long requests rejected up front and reported)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..engine import EngineSpec
from ..errors import ConfigError
from ..hardware.catalog import get_hardware
from ..hardware.params import HardwareParams, stack
from ..iteration import iteration_cost
from ..mappings import make_room
from ..models.config import get_model
from ..models.operators import Parallelism, kv_bytes_per_token_per_device, weight_bytes_per_device
from .group import GroupConfig
from .scenario import Engine, Scenario
from .shapes import bucket
from .schedulers import SCHEDULERS
from .state import Requests
from .workload import Workload

REJECT_REASONS = ("", "longer than the model context", "larger than the KV cache", "longer than max_batch_tokens",
                  "queue full")


@dataclass(frozen=True)
class EngineGroup:
    """Everything static about one [[engine]] entry, plus its parameters."""

    engine: Engine
    spec: EngineSpec
    replica_hw: tuple[HardwareParams, ...]   # per replica (identical unless hardware lists several)
    replica_kv: tuple[int, ...]              # KV blocks per replica

    @property
    def params(self) -> HardwareParams:
        """The first replica's parameters (all of them for identical replicas)."""
        return self.replica_hw[0]

    @property
    def kv_blocks(self) -> int:
        """The smallest replica's KV blocks: a request must fit wherever the router sends it."""
        return min(self.replica_kv)

    def replica_params(self) -> HardwareParams:
        return stack(list(self.replica_hw))

    def kv_array(self):
        return jnp.asarray(self.replica_kv, jnp.int32)

    def with_params(self, params: HardwareParams) -> "EngineGroup":
        """Every replica on ``params`` (KV blocks recomputed from its HBM capacity)."""
        kv = kv_capacity_blocks(self.spec, params, self.engine, str(self.engine.hardware))
        return EngineGroup(self.engine, self.spec, (params,) * len(self.replica_hw), (kv,) * len(self.replica_kv))

    def astype(self, dtype) -> "EngineGroup":
        return EngineGroup(self.engine, self.spec, tuple(p.astype(dtype) for p in self.replica_hw), self.replica_kv)


def kv_rule(spec: EngineSpec, params: HardwareParams, entry: Engine) -> tuple[float, float, float]:
    """(share of device memory, bytes reserved per device, KV bytes per block per device): blocks =
    floor((capacity * share - reserved) / per block). The catalog rule reserves weights and a fixed
    activation reserve out of ``kv_fraction``; a stack's rule (``stacks.kv.kv_capacity``) reserves
    weights, its profiling pass's activations and non-torch allocations out of
    ``gpu_memory_utilization``. One rule for the host (``kv_capacity_blocks``) and the
    differentiable simulation (``kv_blocks_of``)."""
    weights = weight_bytes_per_device(spec.model, spec.parallel, spec.weight_dtype)
    if entry.kv_from_stack:
        from ..stacks import get_stack
        from ..stacks.kv import kv_capacity
        profile = get_stack(entry.stack)
        cap = kv_capacity(spec, params, profile)
        return (profile.kv.gpu_memory_utilization, weights + cap.activation_bytes + profile.kv.non_torch_bytes,
                kv_bytes_per_token_per_device(spec.model, spec.parallel, spec.kv_dtype) * profile.kv.block_size)
    per_block = kv_bytes_per_token_per_device(spec.model, spec.parallel, spec.kv_dtype) * entry.block_size
    return entry.kv_fraction, weights + entry.activation_reserve_gb * 1e9, per_block


def kv_blocks_of(rule: tuple[float, float, float], log_capacity):
    """KV blocks (int32) under ``rule`` for ``log_capacity`` = ln(HBM bytes), traceable."""
    share, reserved, per_block = rule
    free = jnp.exp(log_capacity) * share - reserved
    return jnp.maximum(jnp.floor(free / max(per_block, 1e-30)), 0).astype(jnp.int32)


def kv_capacity_blocks(spec: EngineSpec, params: HardwareParams, entry: Engine, hardware: str) -> int:
    """KV blocks per replica: the usable share of device memory minus weights and the reserves,
    divided by the KV bytes of one block (per device, since KV is sharded like the heads)."""
    if entry.kv_from_stack:   # the stack's rule, with its own report of what the memory holds
        from ..stacks import get_stack
        from ..stacks.kv import kv_capacity
        cap = kv_capacity(spec, params, get_stack(entry.stack))
        if cap.blocks == 0:
            raise ConfigError(f"{spec.model.name} on {hardware} (tp={entry.tp}, pp={entry.pp}) leaves no room for a KV "
                              f"cache under {entry.stack}'s rule: {cap.free_bytes / 1e9:.2f} GB free per device after "
                              f"weights {cap.weights_bytes / 1e9:.1f} GB and profiling activations "
                              f"{cap.activation_bytes / 1e9:.1f} GB. Raise tp/pp or use a smaller dtype.")
        return cap.blocks
    share, reserved, per_block = kv_rule(spec, params, entry)
    capacity = float(np.exp(np.asarray(params.log["hbm_capacity"], dtype=np.float64)))
    free = capacity * share - reserved
    if free <= per_block:
        weights = reserved - entry.activation_reserve_gb * 1e9
        raise ConfigError(f"{spec.model.name} on {hardware} (tp={entry.tp}, pp={entry.pp}) "
                          f"leaves no room for a KV cache: {capacity * share / 1e9:.1f} GB usable, weights "
                          f"{weights / 1e9:.1f} GB, reserve {entry.activation_reserve_gb:.1f} GB per device; missing "
                          f"{(per_block - free) / 1e9:.2f} GB. Raise tp/pp, kv_fraction, or use a smaller dtype.")
    return int(free // per_block)


def build_group(entry: Engine) -> EngineGroup:
    make_room()   # a group is compiled next: keep the process below its mapping limit (hermes_jax.mappings)
    names = entry.hardware if isinstance(entry.hardware, tuple) else (entry.hardware,) * entry.replicas
    try:
        parts = {n: get_hardware(n, **entry.hardware_kwargs()) for n in dict.fromkeys(names)}
        specs = {n: EngineSpec(get_model(entry.model), hw.spec, Parallelism(tp=entry.tp, pp=entry.pp),
                               weight_dtype=entry.dtype, kv_dtype=entry.kv_dtype) for n, hw in parts.items()}
        spec = specs[names[0]]
        for n, other in specs.items():   # the computation's structure must not depend on the replica
            shape = lambda e: (e.system.kind, e.system.devices_per_node, e.compute_dtype)  # noqa: E731
            if shape(other) != shape(spec):
                raise ConfigError(f"hardware {n!r} differs from {names[0]!r} in kind, devices per node or compute "
                                  f"dtype ({shape(other)} vs {shape(spec)}); replicas behind one router may differ "
                                  "only in parameters")
        kv = {n: kv_capacity_blocks(spec, hw.params, entry, n) for n, hw in parts.items()}
    except ConfigError as exc:
        raise ConfigError(f"[[engine]] {entry.name!r}: {exc}") from None
    return EngineGroup(entry, spec, tuple(parts[n].params for n in names), tuple(kv[n] for n in names))


@partial(jax.jit, static_argnums=0)
def iteration_seconds(spec: EngineSpec, params: HardwareParams, new, context, logits):
    """Jitted ``iteration_cost(...).time`` for host-side callers (one compile per engine spec)."""
    return iteration_cost(spec, params, new, context, logits).time


def iterations_per_step(group: EngineGroup, dt: float, arrivals_per_step: int, cap: int = 0,
                        padded: bool = False) -> tuple[int, int]:
    """(K, W): scheduler decisions per replica per step, and decode iterations fast-forwarded at once.

    A step holds at most ``n = dt / fastest iteration (batch-1 decode) + 1`` iterations. Without
    fast-forward each is a decision (K = n). With it (W = min(n, 64) when n > 2), a decision is
    needed only at events: an admission (at most the arrivals of the step plus requests requeued by
    preemption), a finish, or W decode iterations done; K budgets twice the arrivals plus the W
    blocks plus a margin. A replica that runs out of decisions continues in the next step (counted
    as ``deferred``), so K bounds speed, not correctness. ``padded``: n rounded up to a power of two
    and K to a shape class (``shapes.bucket``, at most 1.5x), so hardware that differs (a design's
    or a fit's next point) shares one compiled program.
    """
    one = jnp.ones((1,))
    fastest = float(iteration_seconds(group.spec, group.params, one, one, one))
    n = int(min(max(math.ceil(dt / fastest) + 1, 2), 4096))
    if padded:
        n = min(1 << (n - 1).bit_length(), 4096)
    width = min(n, 64) if n > 2 else 0
    if cap:
        return cap, width
    k = min(n, 256) if not width else int(min(n, 2 * arrivals_per_step + math.ceil(n / width) + 8, 256))
    return (min(bucket(k, smallest=8), 256) if padded else k), width


def reject_reasons(group: EngineGroup, workload: Workload, mask: np.ndarray) -> np.ndarray:
    """Index into REJECT_REASONS per request (0 = admissible)."""
    e = group.engine
    total = workload.input_tokens + workload.output_tokens
    reason = np.zeros(len(workload), np.int64)
    if e.scheduler != "chunked":
        reason[total > e.max_batch_tokens] = 3
    reason[-(-total // e.block_size) > group.kv_blocks] = 2
    reason[total > group.spec.model.max_context] = 1
    return np.where(mask, reason, 0)


def swap_config(group: EngineGroup) -> dict:
    """Swap space in KV tokens per replica (vLLM swap_space, per device) and KV bytes per token per device."""
    e, spec = group.engine, group.spec
    per_token = kv_bytes_per_token_per_device(spec.model, spec.parallel, spec.kv_dtype)
    if e.preemption != "swap" or per_token == 0:
        return {"swap_tokens": 0, "kv_token_bytes": 0.0}
    return {"swap_tokens": max(int(e.swap_space_gb * 1e9 // per_token), 1), "kv_token_bytes": float(per_token)}


def admission_window(entry: Engine) -> int:
    """Queue entries examined per admission decision (both simulators use the same window). FCFS
    admits a prefix of at most max_batch_size; priority order looks 256 deep (a request further
    back waits for the window to reach it)."""
    return 256 if entry.queue_order == "priority" else max(1, min(entry.max_batch_size, 128))


def group_config(group: EngineGroup, scenario: Scenario, arrivals_per_step: int, queue: int, users: int = 0,
                 padded: bool = False) -> GroupConfig:
    e, sim = group.engine, scenario.simulation
    iterations, width = iterations_per_step(group, scenario.dt_s, arrivals_per_step + users, sim.iterations_per_step,
                                            padded)
    return GroupConfig(spec=group.spec, replicas=e.replicas, slots=e.max_batch_size, queue=queue,
                       admit=admission_window(e),
                       block_size=e.block_size, max_batch_tokens=e.max_batch_tokens, scheduler=SCHEDULERS[e.scheduler],
                       router=e.router, dt=scenario.dt_s, iterations=iterations, fast_forward=width, arrivals=arrivals_per_step,
                       priority=e.queue_order == "priority", users=users,
                       # state-dependent routers see the replicas at each exact arrival (not with closed loop)
                       route_each_arrival=e.replicas > 1 and e.router != "round_robin" and users == 0,
                       **swap_config(group))


def device_requests(arrival_s: np.ndarray, input_tokens, output_tokens, admissible, dt: float, horizon: float,
                    priority=None, next_request=None, think_s=None, user=None, cached=None):
    """Requests as device arrays plus the per-step index of the first arrival (S + 1 entries).
    Closed-loop requests not yet sent (arrival inf) sort last and get a step past the horizon."""
    steps = int(math.ceil(horizon / dt))
    n = len(arrival_s)
    known = np.isfinite(arrival_s)
    step = np.where(known, np.floor(np.where(known, arrival_s, 0.0) / dt), 2**30).astype(np.int64)
    first = np.searchsorted(step, np.arange(steps + 1), side="left").astype(np.int32)
    off = np.where(known, arrival_s - np.where(known, step, 0) * dt, 0.0)

    def ints(x, fill):
        return jnp.asarray(np.full(n, fill) if x is None else x, jnp.int32)

    return Requests(arrival_step=jnp.asarray(step, jnp.int32), arrival_off=jnp.asarray(off, jnp.float32),
                    input_tokens=jnp.asarray(input_tokens, jnp.int32), output_tokens=jnp.asarray(output_tokens, jnp.int32),
                    cached=ints(cached, 0),
                    admissible=jnp.asarray(admissible), priority=ints(priority, 0), next_request=ints(next_request, -1),
                    think=jnp.asarray(np.zeros(n) if think_s is None else think_s, jnp.float32), user=ints(user, -1),
                    step_first=jnp.asarray(first)), steps
