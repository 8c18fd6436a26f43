"""The measured-kernel terms the calibration found: per-class elementwise efficiency, causal-mask
skipping, parallel blocks, collective launch cost and the host-time breakdown."""

import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax import EngineSpec, Parallelism, get_hardware, get_model, iteration_cost
from hermes_jax.hardware.params import ELEMENTWISE_KERNELS, FIELDS
from hermes_jax.iteration import host_time, operators
from hermes_jax.kernels.collectives import collective_time


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


def test_host_time_terms(h100):
    p = h100.params
    one = host_time(p, 8.0, 8.0, 32000, 1)
    multi = host_time(p, 8.0, 8.0, 32000, 8)
    assert float(multi - one) == pytest.approx(float(p.host_overhead_multiworker_s))
    big_vocab = host_time(p, 8.0, 8.0, 152064, 1)
    expected = (152064 - 32000) * (p.host_overhead_per_vocab_s + 8 * p.host_overhead_per_logit_s)
    assert float(big_vocab - one) == pytest.approx(float(expected))
    assert float(host_time(p, 0.0, 0.0, 32000, 8)) == 0.0  # an idle engine costs nothing
