"""Configuration sweeps across machines on Ray (optional: ``pip install 'hermes_jax[ray]'``).

``sweep_on_ray(scenario, params, chunk=...)`` cuts the configurations into chunks of one size and
runs each chunk as a Ray task calling ``sweep`` on it (the scenario and the workload travel once,
through Ray's object store). Ray keeps its worker processes, so a worker compiles the simulator once
and reuses it for every later chunk of the same size; a cluster (``ray.init(address=...)`` before
the call, or ``address=``) spreads the chunks over its machines. The result is the same
per-configuration metrics as ``sweep`` (common random numbers: every chunk replays one workload).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from ..hardware.params import HardwareParams
from .scenario import Scenario
from .workload import Workload, build_workload


def _chunk_sweep(scenario, workload, logs: dict, batch_size: int) -> dict:
    """One chunk on a Ray worker: NumPy in, NumPy out (no JAX arrays cross processes)."""
    from .sweep import sweep

    params = HardwareParams({k: jnp.asarray(v) for k, v in logs.items()})
    out = sweep(scenario, params, batch_size=batch_size, workload=workload)
    return {k: np.asarray(v) for k, v in out.items()}


def sweep_on_ray(scenario: Scenario, params: HardwareParams, chunk: int = 16, batch_size: int = 1,
                 workload: Workload | None = None, address: str | None = None, num_cpus: int | None = None) -> dict:
    """Metrics per configuration, as ``sweep``, computed by Ray tasks of ``chunk`` configurations.
    Starts a local Ray instance (``num_cpus`` workers) unless Ray is already initialised or
    ``address`` names a cluster."""
    try:
        import ray
    except ImportError:
        raise ConfigError("sweep_on_ray needs Ray: pip install 'hermes_jax[ray]'") from None
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    workload = workload if workload is not None else build_workload(scenario)
    logs = {k: np.asarray(v) for k, v in params.log.items()}
    count = next(iter(logs.values())).shape[0]
    padded = -(-count // chunk) * chunk   # equal chunks: one compiled program per worker
    logs = {k: np.concatenate([v, np.repeat(v[-1:], padded - count, 0)]) for k, v in logs.items()}
    task = ray.remote(_chunk_sweep)
    scenario_ref, workload_ref = ray.put(scenario), ray.put(workload)
    futures = [task.remote(scenario_ref, workload_ref, {k: v[a:a + chunk] for k, v in logs.items()}, batch_size)
               for a in range(0, padded, chunk)]
    parts = ray.get(futures)
    return {k: jnp.asarray(np.concatenate([p[k] for p in parts])[:count]) for k in parts[0]}


__all__ = ["sweep_on_ray"]
