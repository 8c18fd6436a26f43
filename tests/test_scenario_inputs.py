"""Bad scenarios and traces fail with the file, line and field; nothing is dropped silently."""

import numpy as np
import pytest

from hermes_jax.errors import ConfigError
from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario, simulate
from hermes_jax.sim.workload import build_workload, read_trace

GOOD_CSV = "arrival_s,input_tokens,output_tokens\n0.0,10,5\n0.5,20,6\n1.0,30,7\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,where,what", [
    ("arrival_s,input_tokens\n0.0,10\n", ":1:", "missing column"),
    ("arrival_s,input_tokens,output_tokens\n0.0,10,5\n0.5,abc,6\n", ":3:", "input_tokens"),
    ("arrival_s,input_tokens,output_tokens\n0.0,10,5\n0.5,20,-6\n", ":3:", "output_tokens"),
    ("arrival_s,input_tokens,output_tokens\n0.0,10,5\nnan,20,6\n", ":3:", "arrival_s"),
    ("arrival_s,input_tokens,output_tokens\n0.0,10,5\n2.0,20,6\n1.0,30,7\n", ":4:", "non-decreasing"),
])
def test_bad_csv_trace_names_file_and_line(tmp_path, text, where, what):
    path = write(tmp_path, "t.csv", text)
    with pytest.raises(ConfigError, match=what) as err:
        read_trace(path, "csv")
    assert f"{path}{where}" in str(err.value)


def test_bad_mooncake_and_azure_rows(tmp_path):
    moon = write(tmp_path, "m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 2}\n{"timestamp": 1,\n')
    with pytest.raises(ConfigError, match=r"m\.jsonl:2: invalid JSON"):
        read_trace(moon, "mooncake")
    moon = write(tmp_path, "m2.jsonl", '{"timestamp": 0, "input_length": 5}\n')
    with pytest.raises(ConfigError, match=r"m2\.jsonl:1: missing field 'output_length'"):
        read_trace(moon, "mooncake")
    azure = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\nyesterday,3,4\n")
    with pytest.raises(ConfigError, match=r"a\.csv:3: TIMESTAMP"):
        read_trace(azure, "azure")


def test_scenario_errors_name_file_line_field_and_allowed_values(tmp_path):
    text = DEFAULT_SCENARIO.read_text().replace('scheduler = "continuous"', 'scheduler = "fifo"')
    path = write(tmp_path, "s.toml", text)
    line = 1 + text.splitlines().index(next(l for l in text.splitlines() if l.startswith("scheduler")))
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    message = str(err.value)
    assert f"s.toml:{line}" in message and "scheduler" in message and "static, continuous, chunked" in message
    with pytest.raises(ConfigError, match="unknown field; allowed"):
        load_scenario(DEFAULT_SCENARIO, ["engine.e0.batchsize=3"])
    with pytest.raises(ConfigError, match="no client named 'nope'"):
        load_scenario(DEFAULT_SCENARIO, ["client.nope.arrival.rate_per_s=3"])
    with pytest.raises(ConfigError, match=r"--set"):
        load_scenario(DEFAULT_SCENARIO, ["engine.e0.tp=0"])


def test_trace_replay_scaling_window_and_synthetic_arrivals(tmp_path):
    path = write(tmp_path, "t.csv", GOOD_CSV)
    scenario = load_scenario(DEFAULT_SCENARIO, [f'client.chat.trace={{path="{path}",format="csv",rate_scale=2.0,start_s=0.5}}'])
    w = build_workload(scenario)
    np.testing.assert_allclose(w.arrival_s, [0.0, 0.25])          # window from 0.5 s, gaps halved
    np.testing.assert_array_equal(w.input_tokens, [20, 30])
    scenario = load_scenario(DEFAULT_SCENARIO, [f'client.chat.trace={{path="{path}",format="csv",'
                                                'arrival={process="poisson",rate_per_s=50.0}}', "client.chat.max_requests=7"])
    w = build_workload(scenario)
    assert len(w) == 7 and list(w.input_tokens) == [10, 20, 30, 10, 20, 30, 10]   # lengths in order, cycled


def test_too_long_requests_are_rejected_and_running_ones_reported_unfinished():
    scenario = load_scenario(DEFAULT_SCENARIO, ["simulation.horizon_s=4", "engine.e0.max_batch_tokens=300000",
                                                'client.chat.input_tokens={dist="uniform",low=100,high=200000}'])
    df = simulate(scenario).requests
    too_long = df.input_tokens + df.output_tokens > 131072
    assert too_long.any() and (df.status[too_long] == "rejected").all()
    assert set(df.reject_reason[too_long]) == {"longer than the model context"}
    assert (df.status[~too_long] != "rejected").all()
    assert (df.status == "unfinished").any()          # still running at the horizon, listed
    assert len(df) == len(build_workload(scenario))


def test_progress_reaches_the_end_without_carriage_returns_in_a_log(capfd):
    simulate(load_scenario(DEFAULT_SCENARIO, ["simulation.horizon_s=2"]), progress=True)
    captured = capfd.readouterr()
    assert "plan: " in captured.out and "steps" in captured.out
    err = captured.err     # not a terminal: one line per quarter
    assert "\r" not in err and err.count("\n") == 4 and "e0: 100% of" in err


def test_progress_bar_on_a_terminal():
    import io

    from hermes_jax.sim.progress import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = ProgressBar("e0", stream)
    for done in (10, 50, 100):
        bar(done, 100)
    assert stream.getvalue().count("\r") == 3 and stream.getvalue().endswith("100.0%\n")


def test_closed_loop_client_from_toml(tmp_path):
    text = DEFAULT_SCENARIO.read_text().replace('arrival = { process = "poisson", rate_per_s = 5.0 }',
                                                "users = 4\nthink_time_s = 2.0")
    scenario = load_scenario(write(tmp_path, "c.toml", text))
    assert scenario.clients[0].users == 4 and scenario.clients[0].think_time_s == 2.0
    w = build_workload(scenario)
    assert w.closed_loop and np.isfinite(w.arrival_s).sum() == 4          # one first request per user
    both = text.replace("users = 4", 'users = 4\narrival = { process = "poisson", rate_per_s = 5.0 }')
    with pytest.raises(ConfigError, match="not both"):
        load_scenario(write(tmp_path, "d.toml", both))


def test_every_shipped_scenario_loads():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    paths = sorted((root / "hermes_jax" / "scenarios").glob("*.toml")) + sorted((root / "benchmarks" / "scenarios").glob("*.toml"))
    assert len(paths) >= 5
    for path in paths:
        scenario = load_scenario(path)
        assert scenario.engines and scenario.clients, path


def test_closed_loop_refuses_max_requests(tmp_path):
    text = DEFAULT_SCENARIO.read_text().replace('arrival = { process = "poisson", rate_per_s = 5.0 }',
                                                "users = 3\nthink_time_s = 1.0\nmax_requests = 5")
    with pytest.raises(ConfigError, match="max_requests: not allowed with users"):
        load_scenario(write(tmp_path, "m.toml", text))


def test_a_trace_too_large_for_the_memory_budget_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """The size check runs on the file's size alone (nothing parsed: the reader is never called), names
    the file and the setting; the per-format bounds stay above the parse peaks of real traces."""
    import tracemalloc
    from pathlib import Path

    from hermes_jax.sim import workload

    path = write(tmp_path, "t.csv", GOOD_CSV * 1)
    calls = []
    monkeypatch.setattr(workload, "_read_trace", lambda *a: calls.append(a))
    with pytest.raises(ConfigError, match=r"t.csv: a 0.00 GB csv trace needs .* memory_budget_gb = 1e-07"):
        load_scenario(DEFAULT_SCENARIO, [f'client.chat.trace={{path="{path}",format="csv"}}',
                                         "simulation.memory_budget_gb=1e-7"])
    assert not calls
    monkeypatch.undo()
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    for fmt, trace in (("azure", shared / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"),
                       ("mooncake", shared / "mooncake_fast25" / "conversation_trace.jsonl")):
        size = trace.stat().st_size
        tracemalloc.start()
        try:
            workload._read_trace.__wrapped__(str(trace), fmt, 0, size)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < workload.PARSE_BYTES_PER_FILE_BYTE[fmt] * size, (fmt, peak / size)
