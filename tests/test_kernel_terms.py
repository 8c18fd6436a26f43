"""The measured-kernel terms the calibration found: per-class elementwise efficiency, causal-mask
skipping, parallel blocks, collective launch cost and the host-time breakdown."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax import EngineSpec, Parallelism, get_hardware, get_model, iteration_cost, static_batch
from hermes_jax.hardware.params import ELEMENTWISE_KERNELS, FIELDS
from hermes_jax.iteration import host_time, operators
from hermes_jax.kernels.collectives import collective_time, protocol_times


def _op(engine, cost, name):
    names = [op.name for op in operators(engine)]
    return float(cost.op_time[0, names.index(name)]), float(cost.op_flop[0, names.index(name)])


def test_scalar_efficiency_broadcasts_to_every_kernel_class():
    hw = get_hardware("a100-80gb", elementwise_efficiency=0.4)
    assert FIELDS["elementwise_efficiency"][0] == (len(ELEMENTWISE_KERNELS),)
    np.testing.assert_allclose(hw.params.elementwise_efficiency, 0.4)


def test_each_elementwise_class_uses_its_own_efficiency(llama7b_a100, a100_ideal):
    new, ctx, lg = jnp.array([[4096.0]]), jnp.array([[0.0]]), jnp.array([[0.0]])
    slow_norm = a100_ideal.params.replace(elementwise_efficiency=jnp.array([0.25, 1, 1, 1, 1.0]))
    base = iteration_cost(llama7b_a100, a100_ideal.params, new, ctx, lg)
    slow = iteration_cost(llama7b_a100, slow_norm, new, ctx, lg)
    assert _op(llama7b_a100, slow, "input_norm")[0] == pytest.approx(4 * _op(llama7b_a100, base, "input_norm")[0], rel=1e-6)
    assert _op(llama7b_a100, slow, "residual_add")[0] == pytest.approx(_op(llama7b_a100, base, "residual_add")[0])


def test_unskipped_causal_mask_doubles_long_prefill_attention(llama7b_a100, a100_ideal):
    n = 4096.0
    args = (jnp.array([[n]]), jnp.array([[0.0]]), jnp.array([[0.0]]))
    skip = _op(llama7b_a100, iteration_cost(llama7b_a100, a100_ideal.params, *args), "attention")[1]
    full = _op(llama7b_a100, iteration_cost(llama7b_a100, a100_ideal.params.replace(attention_causal_efficiency=1e-12),
                                            *args), "attention")[1]
    assert full / skip == pytest.approx(2 * n / (n + 1), rel=1e-9)  # rectangle n^2 vs triangle n(n+1)/2
    # decode has nothing masked: the parameter has no effect
    dec = (jnp.array([[1.0]]), jnp.array([[n]]), jnp.array([[1.0]]))
    a = _op(llama7b_a100, iteration_cost(llama7b_a100, a100_ideal.params, *dec), "attention")[1]
    b = _op(llama7b_a100, iteration_cost(llama7b_a100, a100_ideal.params.replace(attention_causal_efficiency=1e-12),
                                         *dec), "attention")[1]
    assert a == b


def test_per_row_attention_work_adds_key_positions_per_query(llama7b_a100, a100_ideal):
    # k extra key positions per query row: prefill of n over context c does n (c + (n+1)/2 + k) pairs.
    n, c, k = 512.0, 1024.0, 300.0
    args = (jnp.array([[n]]), jnp.array([[c]]), jnp.array([[0.0]]))
    base = _op(llama7b_a100, iteration_cost(llama7b_a100, a100_ideal.params, *args), "attention")[1]
    rows = _op(llama7b_a100, iteration_cost(llama7b_a100, a100_ideal.params.replace(attention_row_keys=k), *args),
               "attention")[1]
    assert rows / base == pytest.approx((c + (n + 1) / 2 + k) / (c + (n + 1) / 2), rel=1e-9)


def test_parallel_block_has_one_norm_and_one_three_way_add():
    phi, llama = get_model("phi-2"), get_model("llama-2-7b")
    assert phi.parallel_block and not llama.parallel_block
    hw = get_hardware("a100-80gb", ideal=True)
    counts = {op.name: op.count for op in operators(EngineSpec(phi, hw.spec, Parallelism()))}
    assert "post_norm" not in counts and counts["residual_add"] == phi.layers


def test_collective_overhead_is_paid_once_per_call(h100):
    p = h100.params
    zero = p.replace(collective_overhead_s=0.0)
    t = collective_time("allreduce", jnp.array([1e6, 64e6]), 8, p, 8)
    t0 = collective_time("allreduce", jnp.array([1e6, 64e6]), 8, zero, 8)
    np.testing.assert_allclose(t - t0, float(p.collective_overhead_s), rtol=1e-9)
    assert float(collective_time("allreduce", jnp.array(0.0), 8, p, 8)) == 0.0


def _ring(nbytes, p, alpha, beta, overhead):
    return 2 * (p - 1) * (alpha + nbytes / (p * beta)) + overhead


def test_low_latency_protocol_wins_small_messages_and_bandwidth_protocol_large(h100):
    """Hand-computed: LL at 5 us per call, a tenth of alpha per step and 40% of the bandwidth
    against Simple at 40 us; the faster one is taken, and the crossover sits where they meet."""
    p = h100.params.replace(collective_overhead_s=40e-6, collective_ll_overhead_s=5e-6,
                            collective_ll_latency_ratio=0.1, collective_ll_bandwidth_efficiency=0.4)
    alpha, beta = float(p.intra_link_latency), float(p.intra_link_bandwidth * p.intra_link_efficiency)
    sizes = np.array([1e4, 1e6, 1e8])
    simple = _ring(sizes, 4, alpha, beta, 40e-6)
    ll = _ring(sizes, 4, 0.1 * alpha, 0.4 * beta, 5e-6)
    got = np.asarray(collective_time("allreduce", jnp.asarray(sizes), 4, p, 8))
    np.testing.assert_allclose(got, np.minimum(simple, ll), rtol=1e-9)
    assert ll[0] < simple[0] and simple[-1] < ll[-1]  # each protocol wins somewhere
    # crossover: (40 - 5) us + 6 * 0.9 alpha = 1.5 n (1/0.4 - 1) / beta
    n_star = (35e-6 + 6 * 0.9 * alpha) * beta / (1.5 * 1.5)
    below, above = protocol_times("allreduce", jnp.asarray([0.99 * n_star, 1.01 * n_star]), 4, p, 8)
    assert float(above[0]) < float(below[0]) and float(below[1]) < float(above[1])


def test_neutral_and_ideal_low_latency_protocol_leave_one_alpha_beta_line():
    """Parts never measured keep a LL protocol that never wins (the single alpha-beta model); the
    ideal roofline has no overheads and the two protocols coincide."""
    for hw in (get_hardware("b200"), get_hardware("h100-sxm", ideal=True)):
        p = hw.params
        sizes = np.geomspace(1e3, 1e9, 13)
        alpha, beta = float(p.intra_link_latency), float(p.intra_link_bandwidth * p.intra_link_efficiency)
        got = np.asarray(collective_time("allreduce", jnp.asarray(sizes), 8, p, 8))
        np.testing.assert_allclose(got, _ring(sizes, 8, alpha, beta, float(p.collective_overhead_s)), rtol=1e-9)


def test_low_latency_protocol_gradients_match_finite_differences(h100):
    p = h100.params.astype(jnp.float64).replace(collective_overhead_s=40e-6, collective_ll_overhead_s=5e-6,
                                                 collective_ll_latency_ratio=0.1, collective_ll_bandwidth_efficiency=0.4)
    sizes = jnp.asarray([3e4, 2e5, 5e7])

    def total(q):
        return collective_time("allreduce", sizes, 4, q, 8).sum()

    grads = jax.grad(total)(p).log
    for name in ("collective_overhead_s", "collective_ll_overhead_s", "collective_ll_latency_ratio",
                 "collective_ll_bandwidth_efficiency", "intra_link_efficiency", "intra_link_latency"):
        h = 1e-6
        up = type(p)({**p.log, name: p.log[name] + h})
        down = type(p)({**p.log, name: p.log[name] - h})
        fd = (float(total(up)) - float(total(down))) / (2 * h)
        assert float(grads[name]) == pytest.approx(fd, rel=1e-4), name
        assert abs(fd) > 0, name  # each parameter matters on one of the sizes


def test_host_time_terms(h100):
    p = h100.params
    one = host_time(p, 8.0, 8.0, 32000, 1)
    multi = host_time(p, 8.0, 8.0, 32000, 8)
    assert float(multi - one) == pytest.approx(float(p.host_overhead_multiworker_s))
    big_vocab = host_time(p, 8.0, 8.0, 152064, 1)
    expected = (152064 - 32000) * (p.host_overhead_per_vocab_s + 8 * p.host_overhead_per_logit_s)
    assert float(big_vocab - one) == pytest.approx(float(expected))
    assert float(host_time(p, 0.0, 0.0, 32000, 8)) == 0.0  # an idle engine costs nothing


@pytest.mark.parametrize("prompt,batch", [(512, 16), (8192, 1), (512, 1)])
def test_tensor_parallel_prefill_has_diminishing_returns(prompt, batch):
    """The cost model is C/p + K(p) with K non-decreasing, so doubling TP from 4 to 8 never gains more
    than from 2 to 4 (README: the A100 Splitwise rows that break this are the held-out prefill miss)."""
    hw = get_hardware("a100-80gb")
    t = {tp: float(static_batch(EngineSpec(get_model("llama-2-70b"), hw.spec, Parallelism(tp=tp)), hw.params,
                                float(batch), float(prompt), 2.0).prefill_s) for tp in (2, 4, 8)}
    assert t[2] / t[4] >= t[4] / t[8] > 1.0
