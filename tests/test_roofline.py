"""Hand-computed roofline cases: ideal hardware, numbers worked out from datasheets."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax import EngineSpec, Parallelism, get_hardware, get_model, static_batch
from hermes_jax.hardware.params import HardwareParams
from hermes_jax.iteration import operators
from hermes_jax.models.operators import op_specs, operator_costs


def test_llama7b_batch1_decode_on_a100_is_weight_bandwidth_bound(llama7b_a100, a100_ideal):
    model = get_model("llama-2-7b")
    est = static_batch(llama7b_a100, a100_ideal.params, 1, 1, 2)
    # Decode reads every weight except the embedding table (rows are gathered) once: 13.2 GB.
    weights = (model.param_count() - model.vocab * model.hidden) * 2.0
    expected = weights / 2.039e12
    assert float(est.decode_step_s) == pytest.approx(expected, rel=0.01)
    # and the step is memory bound in every GEMM
    cost = est.decode_first
    names = [op.name for op in op_specs(model, llama7b_a100.parallel)]
    for i, name in enumerate(names):
        if name in ("qkv_proj", "out_proj", "mlp_up", "mlp_down", "lm_head"):
            assert float(cost.op_memory[i]) > 10 * float(cost.op_compute[i]), name


def test_llama7b_long_prefill_on_a100_is_compute_bound(llama7b_a100, a100_ideal):
    model = get_model("llama-2-7b")
    prompt = 4096
    est = static_batch(llama7b_a100, a100_ideal.params, 1, prompt, 1)
    # Linear layers: 2 FLOP per weight per token (embedding excluded, LM head on one token);
    # attention: 4 * h * e * n(n+1)/2 per layer.
    linear = 2.0 * (model.param_count() - 2 * model.vocab * model.hidden) * prompt + 2.0 * model.vocab * model.hidden
    attention = model.layers * 4.0 * model.hidden * prompt * (prompt + 1) / 2
    # Unfused elementwise kernels are memory bound: 2 norms, rope on q and k, 2 residual adds and the
    # gated activation per layer, plus the final norm and the embedding gather (bf16 = 2 B).
    T, d, f = prompt, model.hidden, model.ffn
    per_layer = 2 * (2 * T * d * 2 + d * 2) + 2 * T * 2 * d * 2 + 2 * 3 * T * d * 2 + 3 * T * f * 2
    elementwise = model.layers * per_layer + (2 * T * d * 2 + d * 2) + T * d * 4
    expected = (linear + attention) / 312e12 + elementwise / 2.039e12
    assert float(est.prefill_s) == pytest.approx(expected, rel=0.01)
    assert float(est.decode_step_s) == 0.0 and float(est.e2e_s) == pytest.approx(float(est.prefill_s))


def test_decode_time_grows_with_context_by_kv_bytes(llama7b_a100, a100_ideal):
    model = get_model("llama-2-7b")
    short = static_batch(llama7b_a100, a100_ideal.params, 8, 128, 2).decode_step_s
    long = static_batch(llama7b_a100, a100_ideal.params, 8, 3968, 2).decode_step_s
    extra_kv = 8 * (3968 - 128) * model.kv_bytes_per_token("bf16")
    assert float(long - short) == pytest.approx(extra_kv / 2.039e12, rel=0.02)


def test_e2e_equals_explicit_sum_of_decode_steps(llama7b_a100, a100_ideal):
    batch, prompt, output = 4, 300, 40
    est = static_batch(llama7b_a100, a100_ideal.params, batch, prompt, output)
    steps = [float(static_batch(llama7b_a100, a100_ideal.params, batch, prompt + k, 2).decode_step_s)
             for k in range(output - 1)]
    assert float(est.e2e_s) == pytest.approx(float(est.prefill_s) + sum(steps), rel=1e-9)
    assert float(est.decode_step_s) == pytest.approx(steps[0], rel=1e-12)


def test_sliding_window_caps_attention_and_kv():
    hw = get_hardware("a100-80gb", ideal=True)
    model = dataclasses.replace(get_model("llama-2-7b"), sliding_window=512, name="llama-2-7b-sw512")
    engine = EngineSpec(model, hw.spec)
    costs = operator_costs(model, Parallelism(), "bf16", "bf16", "bf16", np.array([1.0]), np.array([3000.0]), np.array([1.0]))
    _, kv_bytes = costs["attention"]
    per_token = 2 * model.kv_heads * model.head_dim * 2.0
    assert float(kv_bytes) == pytest.approx((512 + 1) * per_token + 2 * model.hidden * 2.0, rel=1e-9)
    # e2e across the window kink equals the explicit sum
    prompt, output = 480, 70
    est = static_batch(engine, hw.params, 2, prompt, output)
    steps = [float(static_batch(engine, hw.params, 2, prompt + k, 2).decode_step_s) for k in range(output - 1)]
    assert float(est.decode_total_s) == pytest.approx(sum(steps), rel=1e-9)


def _with(params, **values):
    return HardwareParams({**params.log, **{k: jnp.log(jnp.asarray(v, params.log[k].dtype)) for k, v in values.items()}})


def test_paged_kv_terms_scale_kv_reads_and_hold_in_the_closed_form_sum():
    """Host time per held KV token and the attention's own KV-read efficiency: the decode step grows by
    exactly their share, and the closed-form decode total still equals the explicit sum of steps,
    across a sliding-window kink too."""
    hw = get_hardware("a100-80gb", ideal=True)
    model = dataclasses.replace(get_model("llama-2-7b"), sliding_window=512, name="llama-2-7b-sw512")
    engine = EngineSpec(model, hw.spec)
    per_token, eff = 2e-8, 0.5
    slow = _with(hw.params, host_overhead_per_context_token_s=per_token, attention_memory_efficiency=eff)
    base = static_batch(engine, hw.params, 4, 300, 2)
    est = static_batch(engine, slow, 4, 300, 2)
    attention = [op.name for op in operators(engine)].index("attention")
    extra_host = per_token * 4 * 301
    assert float(est.decode_first.host - base.decode_first.host) == pytest.approx(extra_host, rel=1e-9)
    # memory-bound decode attention: half the bandwidth doubles its memory term
    assert float(est.decode_first.op_memory[attention]) == pytest.approx(
        float(base.decode_first.op_memory[attention]) / eff, rel=1e-9)
    prompt, output = 480, 70
    total = static_batch(engine, slow, 2, prompt, output).decode_total_s
    steps = [float(static_batch(engine, slow, 2, prompt + k, 2).decode_step_s) for k in range(output - 1)]
    assert float(total) == pytest.approx(sum(steps), rel=1e-9)
