"""Path estimators (sim.estimators): gradients of simulated latencies with respect to hardware
parameters exact along the sample path, unchanged by checkpointing, and estimators that leave the
forward simulation alone. How far each is from the true slope of the mean is measured in
docs/gradients.md (benchmarks/gradient_check.py); the default estimator's tests are in
test_smoothed_gradients.py."""

import jax
import numpy as np
import pytest

from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario
from hermes_jax.sim.differentiable import DifferentiableSim, soft_quantile
from hermes_jax.sim.estimators import Anchored, Pathwise, StraightThrough

KEY = "hbm_bandwidth"
SCENARIO = ["simulation.horizon_s=3", "simulation.dt_s=0.05", "client.chat.arrival.rate_per_s=5"]


def shifted(params, delta):
    return type(params)({**params.log, KEY: params.log[KEY] + delta})


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(str(DEFAULT_SCENARIO), SCENARIO)


def summed(model):
    """Total E2E of finished requests and total wait before admission: one function, so each
    estimator's derivative is traced and compiled once for every test that needs it."""
    def f(p):
        t = model.times(p)
        return jax.numpy.stack([(t["finish"] - model.arrival).sum(where=t["finished"]),
                                (t["admit"] - model.arrival).sum()])
    return f


@pytest.fixture(scope="module")
def models(scenario):
    """(model, f, value, gradient along hbm_bandwidth of both sums) per estimator. Pathwise in
    forward mode (one compile gives the values at any shift, for the finite differences, and the
    slope); anchored with and without checkpointing in reverse mode, the mode checkpointing acts on,
    over every parameter entry (the value comes out of the same compile)."""
    model = DifferentiableSim(scenario, estimator=Pathwise(), checkpoint=False)
    g = summed(model)
    along = jax.jit(lambda d: jax.jvp(lambda d: g(shifted(model.params, d)), (d,), (jax.numpy.ones_like(d),)))
    value, grad = (np.asarray(a) for a in along(0.0))
    out = {"pathwise": (model, lambda d: along(d)[0], value, {KEY: grad})}
    for name, checkpoint in (("anchored", False), ("anchored_ckpt", True)):
        model = DifferentiableSim(scenario, estimator=Anchored(), checkpoint=checkpoint)
        g = summed(model)
        jac, value = jax.jit(jax.jacrev(lambda p: (g(p), g(p)), has_aux=True))(model.params)
        out[name] = (model, None, np.asarray(value), {k: np.asarray(v) for k, v in jac.log.items()})
    return out


def test_pathwise_gradient_is_exact_for_the_sample_path(models):
    """Tiny steps flip no decision, so central differences see the same path as autodiff."""
    model, f, _, jac = models["pathwise"]
    grad = float(jac[KEY][0])
    h = 1e-5
    fd = (float(f(h)[0]) - float(f(-h)[0])) / (2 * h)
    assert int(model.times(model.params)["finished"].sum()) >= 8   # several overlapping requests
    assert grad == pytest.approx(fd, rel=0.02)
    assert grad < 0    # more bandwidth, shorter latencies


def test_checkpointed_scan_gives_the_same_values_and_gradients(models):
    (_, _, v1, g1), (_, _, v2, g2) = models["anchored"], models["anchored_ckpt"]
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_estimators_change_gradients_not_results(scenario, models):
    """Anchored and straight-through only reshape the backward pass; the wait of a request that
    joined at the first boundary gets a local gradient instead of the busy period's."""
    base = models["pathwise"][0]
    for model in (models["anchored"][0], DifferentiableSim(scenario, estimator=StraightThrough(1e-3), checkpoint=False)):
        a, b = base.times(base.params), model.times(model.params)
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{model.cfg.estimator} {k}")
    g_path = float(models["pathwise"][3][KEY][1])
    g_anch = float(models["anchored"][3][KEY][1])
    assert abs(g_anch) < 0.2 * abs(g_path)


def test_soft_quantile_approaches_the_order_statistic():
    values = jax.numpy.asarray(np.random.default_rng(0).exponential(size=2000))
    mask = values > 0
    for q in (0.5, 0.9):
        assert float(soft_quantile(values, mask, q, 0.005)) == pytest.approx(np.quantile(np.asarray(values), q), rel=0.03)
    g = jax.grad(lambda v: soft_quantile(v, mask, 0.9))(values)
    assert np.all(np.isfinite(g)) and float(g.sum()) == pytest.approx(1.0, rel=1e-6)


def test_metrics_are_finite_with_gradients(scenario):
    model = DifferentiableSim(scenario)   # the default (smoothed) estimator
    metrics = model.metrics(model.params)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    f = model.function([KEY])
    grad = jax.grad(lambda x: f(x)["throughput_tokens_s"])(model.x0([KEY]))
    assert float(grad[0]) > 0
    with pytest.raises(Exception, match="max_parameters"):   # every entry at once: name the ones you need
        jax.grad(lambda p: model.metrics(p)["e2e_mean_s"])(model.params)
