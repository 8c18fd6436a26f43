"""Many hardware configurations of one scenario in one compiled call.

``sweep(scenario, params)`` replays the same workload (common random numbers) on every parameter
set stacked along a leading axis of ``params`` and returns per-configuration summary metrics.
The configurations go through ``jax.lax.map`` in vmapped chunks of ``batch_size``. Inside a chunk
the simulator's conditionals run a branch when any configuration needs it (a custom batching rule,
``GroupConfig.vmap_guard``) and select per configuration; ``batch_size=1`` keeps them sequential.
benchmarks/ measures both.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from ..hardware.params import HardwareParams
from .build import build_group
from .engine import run
from .scenario import Scenario
from .simulate import _group_rows, prepare
from .workload import Workload, build_workload


def sweep(scenario: Scenario, params: HardwareParams, batch_size: int = 1, workload: Workload | None = None,
          workers: int = 1, devices=None) -> dict:
    """Metrics per configuration (arrays of shape (C,)): finished, mean TTFT / TPOT / E2E (s) over
    finished requests, output tokens per second over the horizon. ``params`` has a leading (C,)
    axis; every replica of the (single) engine gets its configuration's parameters.

    ``devices``: local devices to shard the configurations over (``"all"``: every local device; on a
    CPU, JAX shows one device unless ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is set
    before it starts). Each device maps its share (``shard_map``); configurations are padded to a
    multiple of the devices. Else ``workers`` > 1 splits them into that many equal parts run by
    threads at once (XLA releases the GIL; one compiled function serves all parts)."""
    if len(scenario.engines) != 1:
        raise ConfigError(f"{scenario.source}: sweep needs a single [[engine]], found {len(scenario.engines)}")
    workload = workload or build_workload(scenario)
    entry = scenario.engines[0]
    rows = _group_rows(scenario, workload, entry.name)
    group = build_group(entry)
    cfg, req, _, _ = prepare(group, scenario, workload, rows)
    cfg = dataclasses.replace(cfg, vmap_guard=batch_size > 1)   # vmapped chunks skip branches no lane needs
    kv = group.kv_array()
    arrival = jnp.asarray(workload.arrival_s[rows], jnp.float32)
    tokens = jnp.asarray(workload.output_tokens[rows], jnp.float32)
    args = (req, kv, arrival, tokens, scenario.dt_s, scenario.simulation.horizon_s, entry.replicas, batch_size)
    count = jax.tree_util.tree_leaves(params)[0].shape[0]
    if devices is not None:
        devices = jax.local_devices() if devices == "all" else list(devices)
        if len(devices) > 1:
            return _sharded(cfg, params, args, devices, count)
    if workers <= 1 or count < 2 * workers:
        return _sweep(cfg, params, *args)
    bounds = np.linspace(0, count, workers + 1).astype(int)
    parts = [jax.tree_util.tree_map(lambda x: x[a:b], params) for a, b in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(workers) as pool:
        outs = list(pool.map(lambda p: jax.block_until_ready(_sweep(cfg, p, *args)), parts))
    return {k: jnp.concatenate([o[k] for o in outs]) for k in outs[0]}


def _sharded(cfg, params, args, devices, count) -> dict:
    """``_sweep`` with the configurations split over ``devices`` (one shard each)."""
    from jax.sharding import NamedSharding, PartitionSpec

    n = len(devices)
    padded = -(-count // n) * n
    if padded > count:   # repeat the last configuration; its copies are dropped below
        params = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded - count, 0)]), params)
    mesh = jax.make_mesh((n,), ("configs",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec("configs")))
    out = _sharded_call(cfg, mesh, params, *args)
    return {k: v[:count] for k, v in out.items()}


@partial(jax.jit, static_argnums=(0, 1, 7, 8, 9, 10))
def _sharded_call(cfg, mesh, params, req, kv, arrival, tokens, dt, horizon, replicas, batch_size):
    from jax.sharding import PartitionSpec

    def local(p, req, kv, arrival, tokens):
        return _body(cfg, p, req, kv, arrival, tokens, dt, horizon, replicas, batch_size)

    return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec("configs"),) + (PartitionSpec(),) * 4,
                         out_specs=PartitionSpec("configs"), check_vma=False)(params, req, kv, arrival, tokens)


@partial(jax.jit, static_argnums=(0, 6, 7, 8, 9))
def _sweep(cfg, params, req, kv, arrival, tokens, dt, horizon, replicas, batch_size):
    return _body(cfg, params, req, kv, arrival, tokens, dt, horizon, replicas, batch_size)


def _body(cfg, params, req, kv, arrival, tokens, dt, horizon, replicas, batch_size):
    def one(p):
        hw = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (replicas,) + x.shape), p)
        rec = run(cfg, hw, req, kv)[0].records
        done = rec.finish_step >= 0
        n = jnp.maximum(done.sum(), 1)
        first = rec.first_step * dt + rec.first_off
        finish = rec.finish_step * dt + rec.finish_off
        tpot = jnp.where(tokens > 1, (finish - first) / jnp.maximum(tokens - 1, 1), 0.0)
        return {"finished": done.sum(), "ttft_mean_s": jnp.where(done, first - arrival, 0).sum() / n,
                "tpot_mean_s": jnp.where(done, tpot, 0).sum() / n, "e2e_mean_s": jnp.where(done, finish - arrival, 0).sum() / n,
                "throughput_tokens_s": jnp.where(done, tokens, 0).sum() / horizon}

    # lax.map with batch_size=1 would still vmap (turning conditionals into selects): plain map instead
    return jax.lax.map(one, params) if batch_size == 1 else jax.lax.map(one, params, batch_size=batch_size)
