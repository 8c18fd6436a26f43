"""Differentiability and vectorization: gradients vs finite differences, vmap vs a loop,
float32 vs float64, no recompilation on a second call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax import RooflineOptions, static_batch
from hermes_jax.hardware.params import FIELDS, stack
from hermes_jax.estimate import _sum_max_affine

SCALAR_FIELDS = [n for n, (shape, _, _) in FIELDS.items() if shape == ()]


def _e2e(engine, params, batch=8.0, prompt=1024.0, output=64.0):
    return static_batch(engine, params, batch, prompt, output).e2e_s


@pytest.mark.parametrize("point", [(1.0, 2048.0, 64.0), (32.0, 512.0, 128.0)])
def test_gradient_matches_central_differences(llama70b_h100_tp8, h100, point):
    """d e2e / d log(param) for every parameter the time depends on (float64, relative error <= 1e-3)."""
    params = h100.params.astype(jnp.float64)
    grads = jax.grad(lambda p: _e2e(llama70b_h100_tp8, p, *point))(params)
    checked = 0
    for name in FIELDS:
        g = np.asarray(grads.log[name])
        for idx in np.ndindex(g.shape):
            if abs(g[idx]) < 1e-9 * float(_e2e(llama70b_h100_tp8, params, *point)):
                continue  # parameter does not affect the time here (e.g. tier bandwidth, power)
            h = 1e-5

            def shifted(delta):
                log = dict(params.log)
                log[name] = log[name].at[idx].add(delta) if g.shape else log[name] + delta
                return float(_e2e(llama70b_h100_tp8, type(params)(log), *point))

            fd = (shifted(h) - shifted(-h)) / (2 * h)
            assert g[idx] == pytest.approx(fd, rel=1e-3, abs=1e-12), f"{name}{idx}"
            checked += 1
    assert checked >= 10  # compute, memory, overheads and link parameters all matter


def test_gradient_signs_are_physical(llama70b_h100_tp8, h100):
    grads = jax.grad(lambda p: _e2e(llama70b_h100_tp8, p))(h100.params.astype(jnp.float64)).log
    for faster in ("hbm_bandwidth", "memory_efficiency", "compute_efficiency", "intra_link_bandwidth"):
        assert float(grads[faster]) < 0, faster
    for slower in ("host_overhead_s", "kernel_overhead_s", "intra_link_latency"):
        assert float(grads[slower]) > 0, slower
    assert float(grads["power_max_w"]) == 0.0 and float(grads["price_per_hour"]) == 0.0


def test_smooth_roofline_gradient_matches_finite_differences(llama70b_h100_tp8, h100):
    import dataclasses
    engine = dataclasses.replace(llama70b_h100_tp8, roofline=RooflineOptions("smooth", 8.0))
    params = h100.params.astype(jnp.float64)
    g = jax.grad(lambda p: _e2e(engine, p))(params).log["hbm_bandwidth"]
    h = 1e-5
    up = dict(params.log, hbm_bandwidth=params.log["hbm_bandwidth"] + h)
    down = dict(params.log, hbm_bandwidth=params.log["hbm_bandwidth"] - h)
    fd = (float(_e2e(engine, type(params)(up))) - float(_e2e(engine, type(params)(down)))) / (2 * h)
    assert float(g) == pytest.approx(fd, rel=1e-3)
    # smooth is an upper bound of the hard roofline, within the documented 2^(1/p) - 1
    hard, smooth = float(_e2e(llama70b_h100_tp8, params)), float(_e2e(engine, params))
    assert hard <= smooth <= hard * 2 ** (1 / 8)


def test_vmap_over_configurations_equals_loop(llama70b_h100_tp8, h100):
    params = h100.params.astype(jnp.float64)
    bandwidths = np.array([2e12, 3.35e12, 4.8e12, 8e12])
    sets = stack([params.replace(hbm_bandwidth=b) for b in bandwidths])
    batch = jnp.array([1.0, 4.0, 16.0, 64.0])
    prompt = jnp.array([128.0, 512.0, 2048.0, 4096.0])
    output = jnp.array([2.0, 17.0, 128.0, 300.0])
    fn = jax.vmap(lambda p, b, i, o: static_batch(llama70b_h100_tp8, p, b, i, o).e2e_s)
    batched = np.asarray(fn(sets, batch, prompt, output))
    looped = [float(static_batch(llama70b_h100_tp8, params.replace(hbm_bandwidth=bw), b, i, o).e2e_s)
              for bw, b, i, o in zip(bandwidths, batch, prompt, output)]
    np.testing.assert_allclose(batched, looped, rtol=1e-12)


def test_float32_close_to_float64(llama70b_h100_tp8, h100):
    for point in [(1.0, 128.0, 16.0), (64.0, 4096.0, 512.0)]:
        r64 = static_batch(llama70b_h100_tp8, h100.params.astype(jnp.float64), *point)
        r32 = static_batch(llama70b_h100_tp8, h100.params.astype(jnp.float32), *point)
        assert r32.e2e_s.dtype == jnp.float32
        for field in ("prefill_s", "decode_step_s", "e2e_s"):
            assert float(getattr(r32, field)) == pytest.approx(float(getattr(r64, field)), rel=1e-4), field


def test_no_recompilation_on_second_call(llama70b_h100_tp8, h100):
    params = h100.params.astype(jnp.float64)
    from hermes_jax.estimate import _static_batch   # the compiled function behind static_batch
    static_batch(llama70b_h100_tp8, params, 2.0, 100.0, 10.0)
    size = _static_batch._cache_size()
    for point in [(3.0, 999.0, 77.0), (64.0, 8.0, 2.0)]:
        static_batch(llama70b_h100_tp8, params.replace(hbm_bandwidth=1e12), *point)
    assert _static_batch._cache_size() == size


def test_closed_form_sum_of_max_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b, c, d = rng.normal(size=4)
        n = float(rng.integers(0, 40))
        brute = sum(max(a + b * k, c + d * k) for k in range(int(n)))
        assert float(_sum_max_affine(a, b, c, d, n)) == pytest.approx(brute, abs=1e-9)
