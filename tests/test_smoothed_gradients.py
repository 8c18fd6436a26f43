"""The default gradient estimator (smoothed regression over log-shifts, sim.smoothing.Smoothed):
equal to the least-squares slope of the forward runs it makes, close to the exact reference's slope,
the same through grad and jacfwd, compiled once for workloads of one bucket, and blind to nothing
the simulation decides (KV capacity, finished requests)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax.errors import ConfigError
from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario
from hermes_jax.sim.build import build_group
from hermes_jax.sim.differentiable import DifferentiableSim, _metrics
from hermes_jax.sim.shapes import request_bucket
from hermes_jax.sim.reference import simulate_reference
from hermes_jax.sim.smoothing import Smoothed

# ~0.8 of the engine's saturation (13 req/s); KV-bound variant: an 24 GB device holds ~40 requests
BASE = ["simulation.horizon_s=15", "simulation.dt_s=0.05", "client.chat.arrival.rate_per_s=10"]
KV_BOUND = BASE + ["engine.e0.hardware_overrides.hbm_capacity=24e9"]
SHIFTS = np.array([-0.1, -0.06, -0.02, 0.02, 0.06, 0.1])


def scenario(extra=(), seed=0):
    return load_scenario(str(DEFAULT_SCENARIO), [*extra, f"simulation.seed={seed}"])


@pytest.fixture(scope="module")
def model():
    return DifferentiableSim(scenario(BASE))


def reference_slope(sc, name, metric):
    """Least-squares slope of the exact reference's metric over SHIFTS of ln ``name``."""
    entry = sc.engines[0]
    base = build_group(entry).params
    values = []
    for d in SHIFTS:
        params = type(base)({**base.log, name: base.log[name] + d})
        df = simulate_reference(sc, params={entry.name: params}).requests
        done = df.status == "finished"
        values.append({"e2e_mean_s": df.e2e_s[done].mean(), "tpot_mean_s": df.tpot_s[done].mean(),
                       "finished": float(done.sum())}[metric])
    return np.polyfit(SHIFTS, values, 1)[0]


def test_gradient_is_the_least_squares_slope_of_its_own_runs(model):
    """One parameter: the estimate is the slope through the antithetic pairs at +-scales."""
    f = model.function(["hbm_bandwidth"], metrics=["e2e_mean_s"])
    x = model.x0(["hbm_bandwidth"])
    grad = float(jax.jacfwd(f)(x)[0, 0])
    scales = np.array(Smoothed().scales)
    shifts = np.concatenate([scales, -scales])
    values = [float(f(x + s)[0]) for s in shifts]
    assert grad == pytest.approx(np.polyfit(shifts, values, 1)[0], rel=1e-4)
    assert grad < 0


def test_grad_and_jacfwd_agree_and_values_are_the_plain_simulation(model):
    names = ["hbm_bandwidth", "host_overhead_s"]
    f = model.function(names, metrics=["e2e_mean_s", "throughput_tokens_s"])
    x = model.x0(names)
    jac = np.asarray(jax.jacfwd(f)(x))
    value, grad = jax.value_and_grad(lambda x: f(x)[0])(x)
    np.testing.assert_allclose(np.asarray(grad), jac[0], rtol=1e-5, atol=1e-9)
    plain = model.metrics(model.params)
    assert float(value) == pytest.approx(float(plain["e2e_mean_s"]), rel=1e-6)
    times = model.times(model.params)
    done = np.asarray(times["finished"])
    e2e = np.asarray(times["finish"] - model.arrival)[done].mean()
    assert float(value) == pytest.approx(e2e, rel=1e-5)


def test_close_to_the_exact_reference_slope(model):
    """Against the least-squares slope of the exact event-driven reference (same seed, same shifts
    definition): the path estimators are 0.3-0.7x here (docs/gradients.md)."""
    sc = scenario(BASE)
    f = model.function(["hbm_bandwidth"], metrics=["e2e_mean_s", "tpot_mean_s"])
    est = np.asarray(jax.jacfwd(f)(model.x0(["hbm_bandwidth"])))[:, 0]
    for i, metric in enumerate(["e2e_mean_s", "tpot_mean_s"]):
        truth = reference_slope(sc, "hbm_bandwidth", metric)
        assert est[i] == pytest.approx(truth, rel=0.1), metric


def test_kv_capacity_is_visible_to_the_gradient():
    """With the KV cache binding, more HBM capacity finishes more requests sooner; the slope of the
    exact reference agrees in sign and size. A path estimator sees nothing (blocks are integers)."""
    sc = scenario(KV_BOUND)
    model = DifferentiableSim(sc)
    f = model.function(["hbm_capacity"], metrics=["e2e_mean_s", "kv_blocks"])
    jac = np.asarray(jax.jacfwd(f)(model.x0(["hbm_capacity"])))[:, 0]
    assert jac[1] > 0                    # blocks grow with capacity
    truth = reference_slope(sc, "hbm_capacity", "e2e_mean_s")
    assert truth < 0 and jac[0] < 0
    assert jac[0] == pytest.approx(truth, rel=0.25)


def test_compiled_once_for_workloads_of_one_bucket(model):
    """Another workload of the same size class (same arrivals, other prompt and output lengths)
    reuses the compiled function: the workload is an argument, not a constant."""
    from dataclasses import replace

    from hermes_jax.sim.workload import build_workload
    sc = scenario(BASE)
    base = model.metrics(model.params)
    workload = build_workload(sc)
    other_workload = replace(workload, input_tokens=workload.input_tokens // 2,
                             output_tokens=np.maximum(workload.output_tokens // 2, 1))
    before = _metrics._cache_size()
    other = DifferentiableSim(sc, workload=other_workload)
    assert other.requests.input_tokens.shape == model.requests.input_tokens.shape
    out = other.metrics(other.params)
    assert _metrics._cache_size() == before
    assert float(out["finished_tokens"]) != float(base["finished_tokens"])   # really another workload


def test_request_buckets_grow_by_at_most_half():
    sizes = [request_bucket(n) for n in range(1, 5000)]
    assert all(s >= n for n, s in zip(range(1, 5000), sizes))
    assert max(s / n for n, s in zip(range(64, 5000), sizes[63:])) <= 1.5


def test_estimator_configuration_is_validated():
    with pytest.raises(ConfigError, match="scales"):
        Smoothed(scales=(0.0,))
    with pytest.raises(ConfigError, match="directions"):
        Smoothed(directions="random")
    with pytest.raises(ConfigError, match="max_parameters"):
        Smoothed(max_parameters=2).design(3)
    d = Smoothed(directions="hadamard").design(3)
    assert d.shape == (4 * 3, 3) and np.allclose(d.T @ d, np.diag(np.diag(d.T @ d)))
    assert Smoothed().design(2).shape == (6, 2)


def test_smoothed_slope_of_a_known_function():
    """y = exp(a) + 3 b: the antithetic pairs give exp(a) sum(s sinh s) / sum(s^2) for a (the slope
    of the smoothed curve, not the tangent) and exactly 3 for the linear b; b's tangent is a symbolic
    zero when only a is differentiated (it is not shifted)."""
    est = Smoothed()
    s = np.asarray(est.scales)
    fwd = est.differentiate(lambda log: {"y": jnp.exp(log["a"]) + 3 * log["b"]})
    g = jax.grad(lambda a: fwd({"a": a, "b": jnp.asarray(2.0)})["y"])(jnp.asarray(0.5))
    assert float(g) == pytest.approx(np.exp(0.5) * (s * np.sinh(s)).sum() / (s ** 2).sum(), rel=1e-5)
    both = jax.grad(lambda v: fwd({"a": v[0], "b": v[1]})["y"])(jnp.asarray([0.5, 2.0]))
    assert float(both[1]) == pytest.approx(3.0, rel=1e-5)


def test_smoothed_value_is_the_lane_mean_with_and_without_derivatives():
    """Smoothed(value="smoothed"): the value is the mean of the forward runs over the design (the
    function whose slope it estimates), the same from a plain call and from jvp; differentiating
    only some of its inputs is refused (their lanes would define another function)."""
    est = Smoothed(value="smoothed", scales=(0.1,))
    f = est.differentiate(lambda log, c: {"y": jnp.exp(2 * log["a"]) + c * log["b"] ** 2})
    log = {"a": jnp.asarray(0.3), "b": jnp.asarray(-0.2)}
    lanes = 0.1 * np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]])
    expected = np.mean([np.exp(2 * (0.3 + da)) + 1.5 * (-0.2 + db) ** 2 for da, db in lanes])
    assert float(f(log, 1.5)["y"]) == pytest.approx(expected, rel=1e-12)
    value, slope = jax.jvp(lambda a, b: f({"a": a, "b": b}, 1.5)["y"], (log["a"], log["b"]),
                           (jnp.asarray(1.0), jnp.asarray(0.0)))
    assert float(value) == pytest.approx(expected, rel=1e-12)
    assert float(slope) == pytest.approx(2 * np.exp(0.6) * np.sinh(0.2) / 0.2, rel=1e-9)  # central difference
    with pytest.raises(ConfigError, match="all of them must be differentiated"):
        jax.jvp(lambda a: f({"a": a, "b": log["b"]}, 1.5)["y"], (log["a"],), (jnp.asarray(1.0),))
    with pytest.raises(ConfigError, match="Smoothed.value"):
        Smoothed(value="mean")
