"""Sweeps across processes on Ray: a local Ray instance, the same metrics as one in-process sweep."""

import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario
from hermes_jax.sim.build import build_group
from hermes_jax.sim.sweep import sweep

ray = pytest.importorskip("ray")   # in the test extra; the library keeps it optional


def test_ray_sweep_equals_the_in_process_sweep():
    from hermes_jax.sim.distributed import sweep_on_ray

    scenario = load_scenario(DEFAULT_SCENARIO, ["simulation.horizon_s=3"])
    base = build_group(scenario.engines[0]).params
    scale = jnp.asarray([-0.3, 0.0, 0.3])          # 3 configurations in chunks of 2: the last chunk is padded
    batch = type(base)({k: jnp.broadcast_to(v, (3,) + v.shape) for k, v in base.log.items()})
    batch = type(base)({**batch.log, "hbm_bandwidth": batch.log["hbm_bandwidth"] + scale})
    try:
        remote = sweep_on_ray(scenario, batch, chunk=2, num_cpus=1)   # one worker: compiles once
    finally:
        ray.shutdown()
    local = sweep(scenario, batch)
    for key in local:
        assert remote[key].shape == (3,), key
        np.testing.assert_allclose(np.asarray(remote[key]), np.asarray(local[key]), rtol=1e-5, err_msg=key)
