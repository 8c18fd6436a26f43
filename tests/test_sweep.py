"""Sweeps over hardware configurations: vmapped chunks (with the batched conditional guard), plain
sequential mapping and one run per configuration give the same metrics."""

import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario, simulate
from hermes_jax.sim.build import build_group
from hermes_jax.sim.sweep import sweep


def test_vmapped_sweep_equals_sequential_and_single_runs():
    scenario = load_scenario(DEFAULT_SCENARIO, ["simulation.horizon_s=8", "simulation.dt_s=0.1"])
    base = build_group(scenario.engines[0]).params
    scale = jnp.asarray([-0.4, 0.0, 0.3, 0.6])
    batch = type(base)({k: jnp.broadcast_to(v, (4,) + v.shape) for k, v in base.log.items()})
    batch = type(base)({**batch.log, "hbm_bandwidth": batch.log["hbm_bandwidth"] + scale})
    vmapped, sequential = sweep(scenario, batch, batch_size=4), sweep(scenario, batch, batch_size=1, workers=2)
    for key in vmapped:
        np.testing.assert_allclose(np.asarray(vmapped[key]), np.asarray(sequential[key]), rtol=1e-5, err_msg=key)
    assert np.all(np.diff(np.asarray(vmapped["e2e_mean_s"])) < 0)   # more bandwidth, shorter latency
    single = simulate(scenario).requests      # the catalog parameters are configuration 1 (scale 0)
    done = single[single.status == "finished"]
    assert float(vmapped["finished"][1]) == len(done)
    assert float(vmapped["e2e_mean_s"][1]) == pytest.approx(done.e2e_s.mean(), rel=1e-5)


SHARDED = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario
from hermes_jax.sim.build import build_group
from hermes_jax.sim.sweep import sweep
assert len(jax.local_devices()) == 2
scenario = load_scenario(DEFAULT_SCENARIO, ["simulation.horizon_s=4"])
base = build_group(scenario.engines[0]).params
scale = jnp.asarray([-0.4, 0.0, 0.3])          # 3 configurations over 2 devices: one is padding
batch = type(base)({k: jnp.broadcast_to(v, (3,) + v.shape) for k, v in base.log.items()})
batch = type(base)({**batch.log, "hbm_bandwidth": batch.log["hbm_bandwidth"] + scale})
sharded, plain = sweep(scenario, batch, devices="all"), sweep(scenario, batch)
for key in plain:
    assert sharded[key].shape == (3,), key
    np.testing.assert_allclose(np.asarray(sharded[key]), np.asarray(plain[key]), rtol=1e-6, err_msg=key)
print("devices", len(sharded["finished"].sharding.device_set) if hasattr(sharded["finished"], "sharding") else 0)
"""


def test_sharded_sweep_over_host_devices_equals_one_device():
    """Two host CPU devices (a fresh process: the device count is fixed when JAX starts)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
