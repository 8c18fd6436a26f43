"""Serving stacks apart from hardware, static-batch readers, and parameter recovery by the fitter."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from hermes_jax import ConfigError, EngineSpec, Parallelism, get_hardware, get_model, static_batch
from hermes_jax.calibrate.fit import Bound, LogSquared, Prior, fit_parameters
from hermes_jax.calibrate.readers import EXCLUDED_HARDWARE, read_static_batch
from hermes_jax.calibrate.static import StaticBatchTable
from hermes_jax.stacks import StackProfile, get_stack, load_stack_file, profiles_from_toml
from hermes_jax.stacks.kv import kv_capacity, static_waves

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_inference_bench"


def test_stack_values_override_catalog_and_fall_back_by_die():
    stack = StackProfile("unit", "1", devices={"h100-sxm": {"memory_efficiency": 0.5, "host_overhead_s": 1e-3}})
    h100 = get_hardware("h100-sxm", stack=stack)
    assert float(h100.params.memory_efficiency) == pytest.approx(0.5)
    assert h100.spec.stack == "unit" and h100.spec.calibrated
    # gh200 has no fit: it takes the h100-sxm values (same die) and says so
    gh200 = get_hardware("gh200", stack=stack)
    assert float(gh200.params.memory_efficiency) == pytest.approx(0.5) and not gh200.spec.calibrated
    assert "h100-sxm" in gh200.spec.provenance
    # a device no stack has a fit for keeps the catalog's values, and the provenance says that too
    tpu = get_hardware("tpu-v5e", stack=stack)
    assert float(tpu.params.memory_efficiency) == pytest.approx(float(get_hardware("tpu-v5e").params.memory_efficiency))
    assert "no values" in tpu.spec.provenance
    # one that another shipped stack has a fit for takes that stack's values (its own KV rule and kernels)
    mi = get_hardware("mi300x", stack=stack)
    assert float(mi.params.memory_efficiency) == pytest.approx(get_stack("vllm").devices["mi300x"]["memory_efficiency"])
    assert "another stack" in mi.spec.provenance and not mi.spec.calibrated
    # the datasheet never moves with the stack
    assert float(h100.params.hbm_bandwidth) == float(get_hardware("h100-sxm").params.hbm_bandwidth)


def test_a_device_without_a_fit_of_its_die_takes_the_platform_fallback(tmp_path):
    stack = StackProfile("unit", "1", devices={"h100-sxm": {"memory_efficiency": 0.5},
                                               "a100-40gb": {"memory_efficiency": 0.7}},
                         fallback={"cuda": "h100-sxm"})
    b200 = get_hardware("b200", stack=stack)   # another die, same platform
    assert float(b200.params.memory_efficiency) == pytest.approx(0.5) and not b200.spec.calibrated
    assert "h100-sxm" in b200.spec.provenance and "fallback" in b200.spec.provenance
    # the same die still wins over the platform fallback
    assert float(get_hardware("a100-80gb", stack=stack).params.memory_efficiency) == pytest.approx(0.7)
    # another platform does not take it: vLLM's MI300X fit (another stack on that device) comes first
    assert float(get_hardware("mi300x", stack=stack).params.memory_efficiency) == pytest.approx(
        get_stack("vllm").devices["mi300x"]["memory_efficiency"])
    # a stack's own platform fallback comes before another stack's fit on the device
    mii = get_hardware("h100-sxm", stack="deepspeed-mii")
    assert mii.spec.provenance.startswith("deepspeed-mii 0.2 fitted on a100-40gb")
    # a calibration's kernel-level start never borrows (a refit would start from the fit it redoes)
    start = get_hardware("gaudi2", stack="sarathi-2024")
    assert float(start.params.host_overhead_s) == pytest.approx(float(get_hardware("gaudi2").params.host_overhead_s))
    gaudi = get_hardware("gaudi2", stack="vllm")
    assert "deepspeed habana-2024 on gaudi2" in gaudi.spec.provenance
    assert float(gaudi.params.host_overhead_s) == pytest.approx(get_stack("deepspeed").devices["gaudi2"]["host_overhead_s"])
    with pytest.raises(ConfigError, match="fallback.cuda.*no fitted values"):
        StackProfile("unit", devices={"h100-sxm": {}}, fallback={"cuda": "b200"})
    # written and read back
    from hermes_jax.stacks.profile import profiles_to_toml
    path = tmp_path / "s.toml"
    path.write_text(profiles_to_toml({"unit": stack}))
    assert profiles_from_toml(path)["unit"].fallback == {"cuda": "h100-sxm"}
    path.write_text('[mine]\nfallback = { cuda = 3 }\n')
    with pytest.raises(ConfigError, match=r"s.toml.*fallback"):
        profiles_from_toml(path)


def test_the_shipped_cuda_fallback_predicts_a_held_out_die_far_better_than_catalog_values():
    """vLLM's runs of a held-out model on A100-40GB predicted with the values fitted on H100 (its
    CUDA fallback) against the catalog's values (what a device without a fit took before).
    calibration/device_transfer.py measures every device: 6-20% against 46-122%."""
    from hermes_jax.calibrate.transfer import predict_with
    rows = read_static_batch(DATA / "All_results.csv").rows
    rows = rows[(rows["stack"] == "vllm") & (rows.hardware == "a100-40gb") & (rows.model == "qwen2-7b") & (rows.tp == 2)]
    vllm = get_stack("vllm")
    assert len(rows) == 19 and vllm.fallback["cuda"] == "h100-sxm"
    (ratio, catalog), _ = predict_with(rows, vllm, "a100-40gb", [vllm.devices["h100-sxm"], None])
    mape, mape_catalog = np.abs(ratio - 1).mean(), np.abs(catalog - 1).mean()
    assert mape < 0.25 and mape_catalog > 2 * mape, (mape, mape_catalog)


def test_stack_file_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text('[mine]\nversion = "1"\n[mine.devices.h100-sxm]\nhbm_bandwidth = 1e12\n')
    with pytest.raises(ConfigError, match=r"s.toml.*hbm_bandwidth.*datasheet physics"):
        profiles_from_toml(bad)
    bad.write_text('[mine]\noverflow = "drop"\n')
    with pytest.raises(ConfigError, match=r"s.toml.*overflow"):
        profiles_from_toml(bad)
    good = tmp_path / "g.toml"
    good.write_text('[mine]\nversion = "2"\n[mine.devices.a100-80gb]\ncompute_efficiency = 0.5\n')
    assert load_stack_file(good) == ["mine"]
    assert get_stack("mine").version == "2"
    with pytest.raises(ConfigError, match="unknown stack"):
        get_stack("no-such-stack")


def test_kv_capacity_rule_and_waves():
    hw = get_hardware("a100-80gb")
    engine = EngineSpec(get_model("llama-2-70b"), hw.spec, Parallelism(tp=2))
    cap = kv_capacity(engine, hw.params, get_stack("vllm"))
    kv = get_stack("vllm").kv
    per_block = 2 * 80 * 8 * 128 * 2 / 2 * kv.block_size          # K and V, 80 layers, 8 KV heads / tp 2
    free = kv.gpu_memory_utilization * cap.capacity_bytes - cap.weights_bytes - cap.activation_bytes - kv.non_torch_bytes
    assert cap.blocks == int(free // per_block)
    w = static_waves(engine, cap, 64, 2048, 2048)
    assert not w.fits and w.per_wave == cap.blocks // 256 and w.full * w.per_wave + w.last == 64
    assert static_waves(engine, cap, 1, 128, 128).fits


def test_inference_bench_reader_keeps_every_row_accounted():
    table = read_static_batch(DATA / "All_results.csv")
    raw = pd.read_csv(DATA / "All_results.csv")
    assert len(table.rows) + len(table.skipped) == len(raw)
    assert set(table.skipped.reason) <= {"model not in the catalog", "device not in the catalog", "no latency measured",
                                         *EXCLUDED_HARDWARE.values()}
    pvc = table.skipped[table.skipped.hardware == "Intel PVC GPU"]
    assert len(pvc) and (pvc.reason == EXCLUDED_HARDWARE["Intel PVC GPU"]).all()
    assert (table.rows.hardware == "max1550").sum() == 24
    first = table.rows.iloc[0]
    assert raw.iloc[first.line - 2].Latency == pytest.approx(first.latency_s)
    # An MI250 package is two GCDs, each a device to ROCm: N packages run tensor parallel over 2N.
    mi250 = table.rows[table.rows.hardware == "mi250-gcd"]
    packages = raw.iloc[mi250.line.to_numpy() - 2]["Num of Hardware"].to_numpy()
    assert len(mi250) and (mi250.tp.to_numpy() == 2 * packages).all()
    other = table.rows[table.rows.hardware == "h100-sxm"]
    assert (other.tp.to_numpy() == raw.iloc[other.line.to_numpy() - 2]["Num of Hardware"].to_numpy()).all()
    ttft = read_static_batch(DATA / "Fig_22_all_results_TTFT_ITL.csv")
    assert ttft.rows.ttft_s.notna().all() and (ttft.rows.output == ttft.rows.input).all()
    assert (ttft.skipped.reason == "no latency measured").any()


def test_generic_csv_errors_name_file_line_column(tmp_path):
    f = tmp_path / "runs.csv"
    f.write_text("model,hardware,tp,batch,input,output,latency_s\nllama-2-7b,h100-sxm,1,4,128,128,1.5\n"
                 "llama-2-7b,h100-sxm,1,2.5,128,128,1.5\n")
    with pytest.raises(ConfigError, match=r"runs.csv:3 column 'batch'"):
        read_static_batch(f)
    f.write_text("model,hardware,tp,batch,input,latency_s\n")
    with pytest.raises(ConfigError, match=r"missing column\(s\) output"):
        read_static_batch(f)
    f.write_text("model,hardware,tp,batch,input,output,latency_s\nno-such-model,h100-sxm,1,4,128,128,1.5\n")
    with pytest.raises(ConfigError, match=r"runs.csv:2 column 'model'"):
        read_static_batch(f, unsupported="error")


@pytest.fixture(scope="module")
def synthetic_table():
    """Static-batch latencies generated from known parameters, one engine, 0.5% log-normal noise."""
    hw = get_hardware("h100-sxm", dtype=jnp.float64)
    truth = hw.params.replace(memory_efficiency=0.62, host_overhead_s=3.0e-3, compute_efficiency=0.55)
    grid = [(b, n) for b in (1, 8, 32, 128) for n in (128, 512, 2048)]
    rows = pd.DataFrame({"model": "llama-3.1-8b", "hardware": "h100-sxm", "stack": "", "tp": 1,
                         "batch": [b for b, _ in grid], "input": [n for _, n in grid], "output": [n for _, n in grid],
                         "latency_s": np.nan, "ttft_s": np.nan})  # to be predicted
    table = StaticBatchTable(rows, hw.spec, hw.params, get_stack("vllm"))
    clean = np.asarray(table.predict(truth)[0])
    return hw, truth, table, clean


NAMES = ["memory_efficiency", "host_overhead_s", "compute_efficiency"]


def test_fit_recovers_identifiable_parameters_with_covering_intervals(synthetic_table):
    """Exact data: the truth within 2%. Twenty seeds of 0.5% noise: every estimate within 4 sd and
    each parameter's 90% interval covering the truth in 15-20 of 20 (one compile serves all fits)."""
    hw, truth, table, clean = synthetic_table

    def predict(p):
        return table.predict(p)[0], clean

    def fit(meas):
        return fit_parameters(predict, hw.params, NAMES, loss=LogSquared(), steps=150, polish_steps=40, measured=meas)

    exact = fit(clean)
    for n in NAMES:
        assert exact.value(n) == pytest.approx(float(getattr(truth, n)), rel=0.02), n
    covered = dict.fromkeys(NAMES, 0)
    for seed in range(20):
        meas = clean * np.exp(np.random.default_rng(seed).normal(0, 0.005, clean.shape))
        res = fit(meas)
        for n in NAMES:
            err = abs(np.log(res.value(n) / float(getattr(truth, n))))
            assert err < 4 * float(res.sd_log[n]), n
            lo, hi = res.interval90[n]
            covered[n] += int(lo <= float(getattr(truth, n)) <= hi)
        assert not res.warnings
    assert all(15 <= c <= 20 for c in covered.values()), covered


def test_fit_flags_what_the_data_cannot_identify(synthetic_table):
    hw, truth, table, clean = synthetic_table
    # host_overhead_s and host_overhead_per_seq_s cannot be told apart at one batch size
    one_batch = clean[:3]
    sub = StaticBatchTable(table.rows.iloc[:3], hw.spec, hw.params, get_stack("vllm"))
    res = fit_parameters(lambda p: (sub.predict(p)[0], one_batch), hw.params,
                         ["host_overhead_s", "host_overhead_per_seq_s", "memory_efficiency"], loss=LogSquared(),
                         steps=60, polish_steps=30, bounds={"host_overhead_per_seq_s": Bound(1e-9, 1e-2)},
                         priors={"memory_efficiency": Prior(0.6, 1.0)})
    assert any("not identified" in w and "host_overhead" in w for w in res.warnings)


def test_a_held_out_row_without_a_finite_value_leaves_the_fit_alone(synthetic_table):
    """A row outside the fit (weight 0) whose measurement has no log ratio (0 here) must not reach
    the fitted rows' gradient (0 * nan is nan): the fit equals the one without that row."""
    hw, truth, table, clean = synthetic_table
    names = ["memory_efficiency", "host_overhead_s"]
    kwargs = dict(loss=LogSquared(), steps=40, polish_steps=20)
    train = np.ones(len(clean), bool)
    train[-1] = False
    broken = np.asarray(clean, float).copy()
    broken[-1] = 0.0
    a = fit_parameters(lambda p: (table.predict(p)[0], clean), hw.params, names, train=train, **kwargs)
    b = fit_parameters(lambda p: (table.predict(p)[0], broken), hw.params, names, train=train, **kwargs)
    for n in names:
        assert np.isfinite(b.theta[n]).all()
        np.testing.assert_allclose(b.theta[n], a.theta[n], rtol=1e-9)


def test_scenario_engines_take_a_stack_with_its_kv_rule(tmp_path):
    """``stack = "..."`` on an engine (or --stack for every engine without one) applies the stack's
    values and, unless the engine sizes its cache itself, the stack's KV rule; bad names point at
    the engine and field."""
    from hermes_jax.sim.build import build_group
    from hermes_jax.sim.scenario import load_scenario

    path = tmp_path / "s.toml"
    path.write_text('[simulation]\ndt_s = 0.01\nhorizon_s = 1\n\n'
                    '[[engine]]\nname = "own"\nmodel = "llama-2-7b"\nhardware = "a100-80gb"\nstack = "sarathi-2024"\n\n'
                    '[[engine]]\nname = "plain"\nmodel = "llama-2-7b"\nhardware = "a100-80gb"\nkv_fraction = 0.8\n\n'
                    '[[client]]\nname = "c"\nengine = "own"\narrival = { process = "poisson", rate_per_s = 1.0 }\n'
                    'input_tokens = { dist = "fixed", value = 64 }\noutput_tokens = { dist = "fixed", value = 8 }\n')
    scenario = load_scenario(path, stack="vllm")
    own, plain = scenario.engine("own"), scenario.engine("plain")
    assert (own.stack, own.kv_from_stack) == ("sarathi-2024", True)
    assert (plain.stack, plain.kv_from_stack) == ("vllm", False)  # sizes its own cache: kv_fraction
    group = build_group(own)
    hw = get_hardware("a100-80gb", stack="sarathi-2024")
    for name in ("memory_efficiency", "kernel_overhead_s", "host_overhead_per_seq_s"):
        assert float(group.replica_hw[0].log[name]) == pytest.approx(float(hw.params.log[name]))
    assert group.replica_kv[0] == kv_capacity(group.spec, hw.params, get_stack("sarathi-2024")).blocks
    assert load_scenario(path).engine("plain").stack == ""
    with pytest.raises(ConfigError, match=r"s\.toml.*own.*stack.*unknown stack 'nope'"):
        load_scenario(path, ["engine.own.stack=nope"])


def test_runs_that_cannot_have_done_the_work_are_reported_not_fitted():
    """A latency below the datasheet floor (weights read once per decode step at peak bandwidth), a
    prompt + output beyond the model's context and a parallel layout the model cannot take are
    impossible rows with their reason."""
    hw = get_hardware("h100-sxm")
    rows = pd.DataFrame({"model": ["llama-7b", "llama-7b", "llama-7b"], "hardware": "h100-sxm", "stack": "vllm",
                         "tp": 1, "batch": 16, "input": [1024, 512, 1024], "output": [1024, 512, 1024],
                         "latency_s": [0.8, 6.0, 20.0], "ttft_s": np.nan, "source": "t.csv", "line": [2, 3, 4]})
    rows.loc[2, ["input", "output"]] = 2048
    # A layout the catalog model cannot take (DeepSpeed on Gaudi 2 ran Qwen2-7B's 28 heads at TP8)
    rows = pd.concat([rows, rows.iloc[[1]].assign(model="qwen2-7b", tp=8, line=5)], ignore_index=True)
    table = StaticBatchTable(rows, hw.spec, hw.params, get_stack("vllm"))
    reasons = dict(zip(table.impossible.row, table.impossible.reason))
    assert set(reasons) == {0, 2, 3}
    assert "below the datasheet floor" in reasons[0] and "exceeds llama-7b's context of 2048" in reasons[2]
    assert "tp=8 does not divide qwen2-7b's 28 attention heads" in reasons[3]
    assert table.keep.tolist() == [False, True, False, False]


def test_bad_calibration_input_is_refused_with_its_reason(tmp_path, capsys):
    """Nothing a user types silently changes the fit: a misspelt held-out value, a bound or prior a
    log-space fit cannot use, a flag the chosen fit ignores; NaN never reaches a JSON report."""
    from hermes_jax.calibrate.report import jsonable
    from hermes_jax.calibrate.static_fit import split_rows
    from hermes_jax.cli import main

    rows = pd.DataFrame({"model": ["a", "b"], "tp": [1, 2]})
    with pytest.raises(ConfigError, match=r"split column 'model': no row has B; values: a, b"):
        split_rows(rows, {"model": ["B"]})
    with pytest.raises(ConfigError, match=r"not of the column's type"):
        split_rows(rows, {"tp": ["two"]})
    with pytest.raises(ConfigError, match=r"bound lower must be a finite number > 0"):
        Bound(0.0, 1.0)
    with pytest.raises(ConfigError, match=r"prior needs value > 0 and sd_log > 0"):
        Prior(0.5, 0.0)
    assert jsonable({"x": np.nan, "y": [np.float32(2.0), np.inf], "z": np.arange(2)}) == {"x": None, "y": [2.0, None],
                                                                                          "z": [0, 1]}
    data = str(tmp_path / "none.csv")
    assert main(["calibrate", data, "--device", "h100-sxm", "--trace", "--model", "llama-2-7b",
                 "--hold-out", "model=x"]) == 2
    assert "--hold-out not supported with --trace" in capsys.readouterr().err
    assert main(["calibrate", data, "--device", "h100-sxm", "--model", "llama-2-7b"]) == 2
    assert "--model is for --trace fits" in capsys.readouterr().err


def test_gemm_ceiling_comes_back_from_first_token_runs_of_engines_with_their_own_values():
    """Time-to-first-token runs generated with a known large-GEMM efficiency (0.8) by two engines
    whose other values differ are fitted back within 0.5%, each run predicted with its own engine's
    values; the fitted profile carries its provenance; missing profiles and runs are refused."""
    from hermes_jax.calibrate.prefill import fit_gemm_ceiling, first_token_seconds, with_device_values
    device = "h100-sxm"
    rows = pd.DataFrame({"model": "llama-3.1-8b", "hardware": device, "tp": 1, "batch": [16, 4, 16],
                         "input": [1024, 2048, 512], "output": 1, "stack": ["vllm", "vllm", "trt-llm"],
                         "latency_s": np.nan, "ttft_s": np.nan})
    truth = {s: with_device_values(get_stack(s), device, {"compute_efficiency": 0.8}, {}) for s in ("vllm", "trt-llm")}
    for stack, profile in truth.items():
        mine = (rows["stack"] == stack).to_numpy()
        rows.loc[mine, "ttft_s"] = first_token_seconds(profile, device, rows[mine])
    fit = fit_gemm_ceiling({"vllm": "vllm", "trt-llm": "trt-llm"}, device, rows)
    assert fit.value == pytest.approx(0.8, rel=5e-3)
    assert np.abs(fit.rows.predicted_after_s / fit.rows.ttft_s - 1).max() < 5e-3
    assert fit.sd_log < 5e-3 and fit.interval90[0] <= fit.value <= fit.interval90[1]
    assert "trt-llm (1 run), vllm (2 runs)" in fit.describe()
    shipped = get_hardware(device, stack="vllm").params.natural()["compute_efficiency"]
    if abs(shipped - 0.8) > 0.02:  # the runs are informative: the start missed them
        assert np.abs(fit.rows.predicted_before_s / fit.rows.ttft_s - 1).max() > 5e-3
    applied = fit.apply("vllm")
    assert applied.devices[device]["compute_efficiency"] == fit.value
    assert "fitted to time to first token" in applied.provenance[device]["compute_efficiency"]
    assert get_hardware(device, stack=applied).params.natural()["compute_efficiency"] == pytest.approx(fit.value)
    with pytest.raises(ConfigError, match="runs of trt-llm on h100-sxm: no profile given"):
        fit_gemm_ceiling({"vllm": "vllm"}, device, rows)
    with pytest.raises(ConfigError, match="no time-to-first-token runs on a100-40gb"):
        fit_gemm_ceiling("vllm", "a100-40gb", rows)


def test_shipped_stacks_predict_first_token_runs_they_never_saw():
    """Fig. 21's runs on NVIDIA devices (16 prompts of 1,024 tokens): an engine's own runs never
    enter its fit (its GEMM ceiling comes from the other engines' runs: calibration/fit_stacks.py),
    yet each is predicted within 10%. DeepSpeed-MII, whose SplitFuse chunks prompts, is not held to it."""
    from hermes_jax.calibrate.prefill import first_token_seconds
    rows = read_static_batch(DATA / "Fig_21_all_results_TTFT.csv").rows
    rows = rows[rows.hardware.isin(["a100-40gb", "h100-sxm", "gh200"]) & rows["stack"].isin(["vllm", "trt-llm"])]
    assert len(rows) == 14
    for (stack, device), runs in rows.groupby(["stack", "hardware"]):
        ratio = first_token_seconds(stack, device, runs) / runs.ttft_s.to_numpy()
        assert np.abs(ratio - 1).max() < 0.10, (stack, device, ratio.round(3))


def test_device_and_stack_transfer_tables_label_every_source():
    """The tables behind calibration/device_transfer.py on one model's runs on GH200: each source
    labelled by kind, the own fit best and the catalog's values worst, another stack's fit between."""
    from hermes_jax.calibrate.transfer import device_transfer, stack_transfer
    rows = read_static_batch(DATA / "All_results.csv").rows
    rows = rows[(rows.hardware == "gh200") & (rows.model == "llama-3-8b") & (rows.tp == 1)]
    table = device_transfer(rows, "trt-llm").set_index("values_from")
    assert dict(table.kind) == {"h100-sxm": "same die", "a100-40gb": "other die, same platform", "gh200": "own fit",
                                "catalog": "catalog values"}
    assert not table.fallback.any()   # gh200's own die has a fit: the platform fallback is not what it takes
    assert table.mape_pct.idxmin() == "gh200" and table.mape_pct.idxmax() == "catalog"
    cross = stack_transfer(rows, ["trt-llm", "vllm"]).set_index(["stack", "values_from"])
    assert set(cross.index) == {("trt-llm", "vllm on gh200"), ("vllm", "trt-llm on gh200")}
    assert table.mape_pct["gh200"] < cross.mape_pct[("trt-llm", "vllm on gh200")] < table.mape_pct["catalog"]
