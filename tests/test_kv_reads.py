"""Decode attention's KV reads as a stack's kernel choice (kernels.kv_reads): where the rule applies,
what it costs, and that a fit recovers its two values or leaves them alone when no row takes it."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from hermes_jax import ConfigError, EngineSpec, Parallelism, cli, get_hardware, get_model
from hermes_jax.calibrate.fit import LogSquared, fit_parameters
from hermes_jax.calibrate.static import StaticBatchTable
from hermes_jax.iteration import iteration_cost, operators
from hermes_jax.kernels.kv_reads import GroupedKVReads, PagedKVReads
from hermes_jax.stacks import get_stack, profiles_from_toml

PAGED = ["paged_attention_memory_efficiency", "paged_kv_reread"]


def _attention_bytes(model, hw, batch, context, tp=1):
    engine = EngineSpec(model, hw.spec, Parallelism(tp=tp))
    names = [op.name for op in operators(engine)]
    cost = iteration_cost(engine, hw.params, jnp.array([1.0]), jnp.array([float(context)]), jnp.array([1.0]),
                          jnp.array([float(batch)]))
    return float(cost.op_bytes[names.index("attention")]) / engine.model.layers


def test_the_stack_picks_the_kernel_by_platform():
    cuda = get_hardware("h100-sxm", stack="vllm").spec.kv_reads
    assert isinstance(cuda, PagedKVReads) and cuda.sliding_window_only       # XFormers for windows only
    assert get_hardware("a100-40gb", stack="vllm").spec.kv_reads == cuda
    rocm = get_hardware("mi300x", stack="vllm").spec.kv_reads
    assert isinstance(rocm, PagedKVReads) and not rocm.sliding_window_only   # every model paged on ROCm
    for device, stack in (("h100-sxm", "trt-llm"), ("mi300x", "trt-llm"), ("h100-sxm", None)):
        assert isinstance(get_hardware(device, stack=stack).spec.kv_reads, GroupedKVReads), (device, stack)


def test_unknown_rule_in_a_stack_file_names_file_and_field(tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text('[mine]\ndecode_attention = { cuda = "magic" }\n')
    with pytest.raises(ConfigError, match=r"s.toml.*decode_attention.cuda.*magic.*paged-sliding-window"):
        profiles_from_toml(bad)
    bad.write_text('[mine]\ndecode_attention = "paged"\n')
    with pytest.raises(ConfigError, match=r"s.toml.*decode_attention: expected a table"):
        profiles_from_toml(bad)


def test_unshared_reads_above_the_switch_cost_what_mha_reads():
    """Every re-read reaching HBM (reread 1, efficiency 1): above 512 sequences x heads a sliding-window
    GQA model reads as much KV as the same model with one KV head per query head; at or below the
    switch, and for a model without a window at any batch, exactly what grouped reads cost."""
    hw = get_hardware("h100-sxm", stack="vllm", dtype=jnp.float64)
    hw = dataclasses.replace(hw, params=hw.params.replace(paged_kv_reread=1.0, paged_attention_memory_efficiency=1.0))
    plain = get_hardware("h100-sxm", dtype=jnp.float64)
    plain = dataclasses.replace(plain, params=hw.params)      # same values, grouped kernel
    mistral = get_model("mistral-7b-v0.1")
    as_mha = dataclasses.replace(mistral, kv_heads=mistral.heads)
    # 32 sequences x 32 heads = 1024 > 512: every query head reads its KV (writes of the new token aside)
    assert _attention_bytes(mistral, hw, 32, 1024) == pytest.approx(_attention_bytes(as_mha, plain, 32, 1024), rel=2e-3)
    # 16 x 32 = 512, or TP2 at 32 (16 heads per device): shared, exactly the grouped bytes
    assert _attention_bytes(mistral, hw, 16, 1024) == pytest.approx(_attention_bytes(mistral, plain, 16, 1024), rel=1e-12)
    assert _attention_bytes(mistral, hw, 32, 1024, tp=2) == pytest.approx(
        _attention_bytes(mistral, plain, 32, 1024, tp=2), rel=1e-12)
    llama = get_model("llama-3-8b")
    for batch in (16, 64):
        assert _attention_bytes(llama, hw, batch, 1024) == pytest.approx(_attention_bytes(llama, plain, batch, 1024),
                                                                         rel=1e-12)


def _table(model, hw, stack="vllm"):
    grid = [(b, n) for b in (1, 16, 32, 64) for n in (128, 512, 2048)]
    rows = pd.DataFrame({"model": model, "hardware": "h100-sxm", "stack": "", "tp": 1,
                         "batch": [b for b, _ in grid], "input": [n for _, n in grid],
                         "output": [n for _, n in grid], "latency_s": np.nan, "ttft_s": np.nan})
    return StaticBatchTable(rows, hw.spec, hw.params, get_stack(stack))


def test_fit_recovers_the_paged_kernel_and_leaves_it_alone_where_no_row_takes_it():
    hw = get_hardware("h100-sxm", stack="vllm", dtype=jnp.float64)
    truth = hw.params.replace(paged_kv_reread=0.6, paged_attention_memory_efficiency=0.7, memory_efficiency=0.8)
    names = ["memory_efficiency", *PAGED]
    start = hw.params.replace(paged_kv_reread=1.0, paged_attention_memory_efficiency=1.0)
    window = _table("mistral-7b-v0.1", hw)
    clean = np.asarray(window.predict(truth)[0])
    fit = fit_parameters(lambda p: (window.predict(p)[0], clean), start, names, loss=LogSquared(), steps=150,
                         polish_steps=40)
    for n in names:
        assert fit.value(n) == pytest.approx(float(getattr(truth, n)), rel=0.02), n
    assert not fit.unused
    # A model without a sliding window never runs the paged kernel: those values are not fitted,
    # keep their start and the result says why.
    full = _table("llama-3-8b", hw)
    measured = np.asarray(full.predict(truth)[0])
    fit = fit_parameters(lambda p: (full.predict(p)[0], measured), start, names,
                         loss=LogSquared(), steps=100, polish_steps=30)
    assert fit.unused == PAGED and fit.names == ["memory_efficiency"]
    assert fit.value("memory_efficiency") == pytest.approx(0.8, rel=0.02)
    assert sum("no fitted row's prediction changes with it" in w for w in fit.warnings) == 2
    assert float(fit.params.paged_kv_reread) == pytest.approx(1.0)


def test_estimate_says_which_decode_kernel_a_point_runs_on(capsys):
    # The row names the kernel before any time is computed (a prompt past the context: no compile).
    for model, expected in (("mistral-7b-v0.1", "paged-sliding-window"), ("llama-3-8b", "grouped")):
        assert cli.main(["estimate", "--model", model, "--hardware", "h100-sxm", "--tp", "1", "--batch", "32",
                         "--prompt", "128,40000", "--output", "8", "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        assert [r["decode_attention"] for r in rows] == [expected] * 2, model
