"""Per-request trace readers: every format to one frame, failures kept with their reason, bad input
named by file and record."""

import json
from pathlib import Path

import numpy as np
import pytest

from hermes_jax import ConfigError
from hermes_jax.calibrate.traces import read_request_trace

LLMPERF = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmperf_leaderboard" / "raw_data" / "individual"


def test_llmperf_records_all_accounted_for():
    trace = read_request_trace(LLMPERF / "lepton_70b.json")
    assert len(trace.rows) + len(trace.skipped) == 150
    assert (trace.skipped.reason.str.startswith("error 429")).all()
    assert trace.rows.input.eq(550).all() and (trace.rows.ttft_s < trace.rows.e2e_s).all()
    assert "skipped 130: 130 error #" in trace.summary()


def test_vllm_benchmark_serving_and_aiperf_agree_on_the_same_requests(tmp_path):
    ttft, gaps = [0.1, 0.2], [[0.01, 0.02, 0.03], [0.02, 0.02]]
    vllm = tmp_path / "vllm.json"
    vllm.write_text(json.dumps({"input_lens": [100, 200], "output_lens": [4, 3], "ttfts": ttft, "itls": gaps,
                                "errors": ["", ""], "request_rate": 2.0}))
    aiperf = tmp_path / "profile_export.jsonl"
    lines = []
    for i in range(2):
        e2e = ttft[i] + sum(gaps[i])
        lines.append(json.dumps({"metadata": {"request_start_ns": int((5 + i * 0.5) * 1e9)},
                                 "metrics": {"input_sequence_length": {"value": [100, 200][i], "unit": "tokens"},
                                             "output_sequence_length": {"value": [4, 3][i], "unit": "tokens"},
                                             "time_to_first_token": {"value": ttft[i] * 1e3, "unit": "ms"},
                                             "request_latency": {"value": e2e * 1e3, "unit": "ms"},
                                             "inter_token_latency": {"value": np.mean(gaps[i]) * 1e3, "unit": "ms"}},
                                 "error": None}))
    lines.append(json.dumps({"metadata": {"request_start_ns": int(7e9)}, "metrics": {"error_isl": {"value": 5}},
                             "error": {"code": 500, "type": "InternalServerError", "message": "boom"}}))
    aiperf.write_text("\n".join(lines) + "\n")
    a, b = read_request_trace(vllm), read_request_trace(aiperf)
    assert (a.format, b.format) == ("vllm-benchmark-serving", "aiperf")
    for col in ("input", "output", "ttft_s", "e2e_s", "itl_s"):
        np.testing.assert_allclose(a.rows[col], b.rows[col], rtol=1e-9)
    np.testing.assert_allclose(b.rows.arrival_s, [0.0, 0.5])
    assert b.skipped.reason.tolist() == ["InternalServerError 500: boom"] and b.skipped.record.tolist() == [3]


def test_generic_csv_and_errors_name_file_and_record(tmp_path):
    good = tmp_path / "t.csv"
    good.write_text("arrival_s,input,output,ttft_s,e2e_s\n0.0,10,5,0.1,0.5\n1.5,20,5,0.2,0.7\n")
    trace = read_request_trace(good)
    assert trace.rows.arrival_s.tolist() == [0.0, 1.5] and np.isnan(trace.rows.itl_s).all()
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,input,output,ttft_s,e2e_s\n0.0,10,5,0.1,0.5\n1.5,20,5,0.9,0.7\n")
    with pytest.raises(ConfigError, match=r"bad.csv:3: ttft 0.9 s after the end 0.7 s"):
        read_request_trace(bad)
    text = tmp_path / "x.csv"
    text.write_text("arrival_s,input,output,ttft_s,e2e_s\n0.0,ten,5,0.1,0.5\n")
    with pytest.raises(ConfigError, match=r"x.csv:2 column 'input'"):
        read_request_trace(text)
    with pytest.raises(ConfigError, match=r"missing column\(s\) e2e_s"):
        (tmp_path / "m.csv").write_text("arrival_s,input,output,ttft_s\n0,1,1,0.1\n")
        read_request_trace(tmp_path / "m.csv")


def test_trace_fit_needs_arrivals_and_summarises_like_the_simulator():
    from hermes_jax.calibrate.trace_fit import TRACE_METRICS, calibrate_trace, measured_summaries

    trace = read_request_trace(LLMPERF / "groq_70b.json")
    with pytest.raises(ConfigError, match=r"groq_70b.json: the trace has no arrival times"):
        calibrate_trace(trace, {"model": "llama-2-70b", "hardware": "h100-sxm", "tp": 8}, ["host_overhead_s"])
    s = dict(zip(TRACE_METRICS, measured_summaries(trace)))
    assert s["ttft_mean_s"] == pytest.approx(trace.rows.ttft_s.mean())
    assert s["e2e_p50_s"] == pytest.approx(trace.rows.e2e_s.median(), rel=0.05)
    assert s["ttft_p50_s"] < s["ttft_p90_s"]


def test_op_table_reader_and_kernel_fit_recover_the_generating_parameters(tmp_path):
    """A kernel timing CSV made from known parameters: read, predicted with the iteration model's
    per-operator terms, and fitted back within 2%; bad kinds name file, line and column."""
    import jax.numpy as jnp

    from hermes_jax import get_hardware
    from hermes_jax.calibrate.fit import LogSquared, fit_parameters
    from hermes_jax.calibrate.ops import OpTable, read_op_table

    hw = get_hardware("a100-80gb", dtype=jnp.float64)
    truth = hw.params.replace(compute_efficiency=0.7, memory_efficiency=0.8, kernel_overhead_s=4e-6)
    flop = np.geomspace(1e8, 1e13, 12)
    lines = ["hardware,kind,flop,bytes,time_s"]
    lines += [f"a100-80gb,gemm,{f:.6g},{f / 200:.6g},1" for f in flop]
    lines += [f"a100-80gb,elementwise:residual_add,{b / 2:.6g},{b:.6g},1" for b in np.geomspace(1e5, 1e9, 6)]
    path = tmp_path / "ops.csv"
    path.write_text("\n".join(lines) + "\n")
    table = OpTable(read_op_table(path), "a100-80gb")
    clean = np.asarray(table.predict(truth))
    res = fit_parameters(lambda p: (table.predict(p), clean), hw.params,
                         ["compute_efficiency", "memory_efficiency", "kernel_overhead_s"], loss=LogSquared(), steps=150)
    for name in ("compute_efficiency", "kernel_overhead_s"):
        assert float(res.value(name)) == pytest.approx(float(getattr(truth, name)), rel=0.02), name
    bad = tmp_path / "bad.csv"
    bad.write_text("hardware,kind,flop,bytes,time_s\na100-80gb,softmax,1,1,1\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2 column 'kind': 'softmax' unknown"):
        read_op_table(bad)


def test_calibrate_cli_fits_a_trace_through_the_simulator(tmp_path, capsys):
    """hermes-jax calibrate --trace: replays the requests, lowers the summary loss, writes a stack file
    that --stack-file reads back with the fitted value."""
    from hermes_jax.cli import main
    from hermes_jax.stacks import load_stack_file

    path = tmp_path / "trace.csv"
    rows = [f"{0.4 * i:.2f},256,32,0.05,{0.05 + 31 * 0.012:.4f}" for i in range(12)]
    path.write_text("arrival_s,input,output,ttft_s,e2e_s\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    argv = ["calibrate", str(path), "--trace", "--model", "llama-2-7b", "--device", "h100-sxm", "--stack", "vllm",
            "--params", "host_overhead_s", "--dt", "0.1", "--polish", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "12 requests (csv)" in printed
    report = json.loads((out / "vllm-h100-sxm-trace.json").read_text())
    err = {r["metric"]: r for r in report["summaries"]}
    def misfit(key):  # the fit's own objective scale: squared log ratios over every summary
        return sum(np.log1p(r[key] / 100) ** 2 for r in err.values())

    assert misfit("error_after_pct") < 0.5 * misfit("error_before_pct")
    from hermes_jax import get_hardware
    from hermes_jax.stacks.catalog import _USER
    load_stack_file(out / "vllm-h100-sxm-trace.toml")
    try:
        fitted = float(get_hardware("h100-sxm", stack="vllm").params.host_overhead_s)
    finally:
        _USER.pop("vllm")  # the shipped vllm stack again for the other tests
    assert fitted == pytest.approx(report["parameters"]["host_overhead_s"], rel=1e-4)


def test_calibrate_cli_fits_a_kernel_table(tmp_path, capsys):
    from hermes_jax.cli import main
    from hermes_jax.stacks import profiles_from_toml

    rows = ["hardware,kind,flop,bytes,time_s"]
    rows += [f"h100-sxm,gemm,{f:.6g},{f / 300:.6g},{f / 6e14 + 5e-6:.6g}" for f in np.geomspace(1e9, 1e13, 10)]
    path = tmp_path / "k.csv"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    assert main(["calibrate", str(path), "--ops", "--device", "h100-sxm", "--stack", "catalog", "--params",
                 "compute_efficiency,kernel_overhead_s", "--steps", "100", "--out", str(out)]) == 0
    assert "gemm" in capsys.readouterr().out
    profile = profiles_from_toml(out / "kernels-h100-sxm-ops.toml")["kernels-h100-sxm"]
    assert profile.devices["h100-sxm"]["compute_efficiency"] == pytest.approx(6e14 / 989e12, rel=0.05)


VIDUR = LLMPERF.parents[2] / "vidur_profiles" / "compute"


def test_vidur_operator_profile_reads_as_an_op_table_and_the_kernel_stack_reproduces_it():
    """Vidur's mlp.csv through the generic op table (FLOP and bytes from the model's shapes); the
    sarathi-2024 stack, fitted to these kernels, reproduces them (a consistency check: Llama-2-7B was
    in that fit), where the uncalibrated catalog is far off."""
    from hermes_jax import get_hardware
    from hermes_jax.calibrate.ops import OpTable, read_op_table

    rows = read_op_table(VIDUR / "a100" / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv")
    assert set(rows.model) == {"llama-2-7b"} and set(rows.hardware) == {"a100-80gb"}
    assert {"gemm", "elementwise:norm", "elementwise:residual_add"} <= set(rows.kind)
    table = OpTable(rows[rows.tp == 1], "a100-80gb")

    def mape(stack):
        pred = np.asarray(table.predict(get_hardware("a100-80gb", stack=stack).params))
        return float(np.mean(np.abs(pred / table.measured() - 1)))

    assert mape("sarathi-2024") < 0.15 < mape(None)


def test_known_residual_noise_weights_rows_and_bounds_the_intervals():
    """fit_parameters(residual_sd=...): rows count by their inverse noise, and the Laplace sd is at
    least what that noise implies even where the fit lands on a point that matches exactly."""
    import jax.numpy as jnp

    from hermes_jax import get_hardware
    from hermes_jax.calibrate.fit import LogSquared, fit_parameters

    hw = get_hardware("a100-80gb", dtype=jnp.float64)
    x = np.geomspace(0.5, 2.0, 6)

    def predict(p):   # log prediction = ln(memory_efficiency) * x + const: a linear problem in the log
        return jnp.exp(p.log["memory_efficiency"] * jnp.asarray(x)), jnp.exp(np.log(0.7) * x)

    sd = np.full(6, 0.01)
    fits = [fit_parameters(predict, hw.params, ["memory_efficiency"], loss=LogSquared(), steps=0, polish_steps=40,
                           residual_sd=s) for s in (sd, 4 * sd)]
    for fit in fits:
        assert float(fit.value("memory_efficiency")) == pytest.approx(0.7, rel=1e-6)
    expected = 0.01 / np.sqrt((x ** 2).sum())   # exact match: the noise alone sets the sd
    assert float(fits[0].sd_log["memory_efficiency"]) == pytest.approx(expected, rel=1e-3)
    assert float(fits[1].sd_log["memory_efficiency"]) == pytest.approx(4 * expected, rel=1e-3)
    # a row with 100x the noise barely pulls: a wrong measurement there moves the fit < 0.1%
    def skewed(p):
        pred, meas = predict(p)
        return pred, meas.at[0].multiply(1.5)
    noisy = fit_parameters(skewed, hw.params, ["memory_efficiency"], loss=LogSquared(), steps=0, polish_steps=40,
                           residual_sd=np.r_[1.0, sd[1:]])
    assert float(noisy.value("memory_efficiency")) == pytest.approx(0.7, rel=1e-3)
    with pytest.raises(ConfigError, match="residual_sd"):
        fit_parameters(predict, hw.params, ["memory_efficiency"], residual_sd=np.zeros(6))


def test_fits_equally_good_within_the_noise_widen_the_interval_and_are_named():
    """calibrate_trace keeps the best of several starts; others within the chi-square noise band of it
    are as plausible, so the interval spans them and a warning names the parameter."""
    from hermes_jax import get_hardware
    from hermes_jax.calibrate.fit import FitResult
    from hermes_jax.calibrate.trace_fit import _merge_equivalent_fits

    params = get_hardware("h100-sxm").params

    def fit(value, loss, half_width=0.02):
        p = params.replace(host_overhead_s=value)
        iv = {"host_overhead_s": (np.array(value * (1 - half_width)), np.array(value * (1 + half_width)))}
        return FitResult(p, ["host_overhead_s"], {"host_overhead_s": np.log(value)}, {"host_overhead_s": 0.01}, iv,
                         [], [], loss, 0.0, 10)

    best, near, far = fit(5e-4, 0.10), fit(7e-4, 0.15), fit(9e-4, 5.0)   # 10 rows: chi2 2.0, 3.0, 100
    _merge_equivalent_fits(best, [best, near, far], rows=10)
    lo, hi = best.interval90["host_overhead_s"]
    assert float(lo) == pytest.approx(4.9e-4) and float(hi) == pytest.approx(7.14e-4)   # spans near, not far
    assert any("host_overhead_s: fits from 2 starts" in w for w in best.warnings)
    alone = fit(5e-4, 0.10)
    _merge_equivalent_fits(alone, [alone, far], rows=10)
    assert float(alone.interval90["host_overhead_s"][1]) == pytest.approx(5.1e-4) and not alone.warnings
