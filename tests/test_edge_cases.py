"""Every run's edge cases: bad input is refused before any work with the file, line and field; a run
that produces nothing still gives a valid result; no answer is silently wrong (issue 15)."""

import dataclasses
import json
import math

import numpy as np
import pytest

from hermes_jax import cli
from hermes_jax.errors import ConfigError
from hermes_jax.hardware import get_hardware
from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario, simulate
from hermes_jax.sim.budget import check_budget, plan_run
from hermes_jax.sim.report import summary_json
from hermes_jax.sim.scenario import Simulation, binary_step
from hermes_jax.sim.simulate import busy_within_steps, simulate_engines

SCENARIO = """
[simulation]
horizon_s = 5
[[engine]]
name = "e0"
model = "llama-3.1-8b"
hardware = "h100-sxm"
[[client]]
name = "c"
engine = "e0"
trace = {{ path = "{trace}", format = "csv" }}
"""


def write_trace(tmp_path, rows: str):
    (tmp_path / "trace.csv").write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO.format(trace="trace.csv"))
    return path


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_empty_trace_gives_a_valid_empty_result(tmp_path):
    results = simulate(load_scenario(write_trace(tmp_path, "")))
    assert len(results.requests) == 0 and results.summary["requests"] == 0
    engine = results.summary["engines"]["e0"]     # the idle engine is still there: it costs rent and idle power
    assert engine["busy_fraction"] == 0.0
    assert results.summary["resources"]["e0"]["energy_j"] > 0
    body = strict_json(summary_json(results))
    assert body["energy"]["j_per_token"] is None
    assert "no output tokens" in body["undefined"]["energy.j_per_token"]


def test_empty_trace_through_the_cli_writes_every_output(tmp_path, capsys):
    path = write_trace(tmp_path, "")
    assert cli.main(["simulate", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "no request finished" in capsys.readouterr().out
    strict_json((tmp_path / "out" / "summary.json").read_text())
    assert (tmp_path / "out" / "timeseries.png").exists()


def test_fractional_tokens_name_file_and_line(tmp_path):
    path = write_trace(tmp_path, "0.1,100,10\n0.2,100.5,10\n")
    with pytest.raises(ConfigError, match=r"trace.csv:3: column 'input_tokens' must be a positive whole number"):
        simulate(load_scenario(path))


def test_out_naming_a_file_fails_before_the_run(tmp_path, monkeypatch, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    monkeypatch.setattr("hermes_jax.sim.report.simulate", lambda *a, **k: pytest.fail("ran before checking --out"))
    assert cli.main(["simulate", "--out", str(target)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("field", ["hbm_bandwidth", "peak_flops", "memory_efficiency"])
def test_zero_rate_or_efficiency_is_refused_with_its_line(field):
    with pytest.raises(ConfigError, match=rf"default.toml:\d+ \[\[engine\]\] 'e0' hardware_overrides.{field}: must be > 0"):
        load_scenario(DEFAULT_SCENARIO, [f"engine.e0.hardware_overrides={{{field}=0}}"])
    with pytest.raises(ConfigError, match=f"{field} must be > 0"):
        get_hardware("h100-sxm", **{field: 0.0})
    get_hardware("h100-sxm", host_overhead_s=0.0)    # an overhead may be 0


def test_dt_longer_than_the_horizon_is_refused():
    with pytest.raises(ConfigError, match=r"default.toml:\d+ \[simulation\] dt_s: 500 s is longer than horizon_s"):
        load_scenario(DEFAULT_SCENARIO, ["simulation.dt_s=500"])
    with pytest.raises(ConfigError, match="longer than horizon_s"):
        Simulation(dt_s=2.0, horizon_s=1.0)


def test_a_given_dt_is_a_binary_fraction_so_float32_clocks_do_not_drift():
    for asked in (0.005, 0.01, 0.1, 0.3, 1.0, 7.0):
        dt = binary_step(asked)
        assert asked * (1 - 1 / 128) < dt <= asked
        clock, exact = np.float32(30.0), 30.0
        for _ in range(20_000):   # a replica busy through many steps: its clock is shifted by dt each step
            clock = np.float32(clock - np.float32(dt)) if clock > dt else np.float32(clock + np.float32(3.0))
            exact = exact - dt if exact > dt else exact + 3.0
        assert float(clock) == exact
    # the drift binary steps remove: 0.005 itself loses precision in the same loop
    clock = np.float32(30.0)
    for _ in range(5000):
        clock = np.float32(clock - np.float32(0.005))
    assert float(clock) != pytest.approx(30.0 - 5000 * 0.005, abs=1e-6)


def test_automatic_dt_follows_the_load_not_a_constant():
    light = load_scenario(DEFAULT_SCENARIO)
    heavy = load_scenario(DEFAULT_SCENARIO, ["client.chat.arrival.rate_per_s=400"])
    long = load_scenario(DEFAULT_SCENARIO, ["simulation.horizon_s=86400"])
    assert light.simulation.dt_s is None        # what was asked for stays as asked
    assert light.dt_reason.startswith("automatic") and math.log2(light.dt_s).is_integer()
    assert heavy.dt_s < light.dt_s and heavy.dt_s <= 8 / 400
    assert long.steps <= 50_000 and long.dt_s <= 8
    given = load_scenario(DEFAULT_SCENARIO, ["simulation.dt_s=0.25"])
    assert given.dt_s == 0.25 and given.dt_reason == "given"
    # closed-loop users: 1/256 of the mean think time (a power of two), kept over the step-count cap
    # on a long horizon (an hour at 1 s think time would otherwise take 0.125 s steps, and a
    # request whose think time ends inside one waits up to 0.125 s to be routed); validated in test_simulator
    users = DEFAULT_SCENARIO.with_name("chat_users_two_models.toml")    # 64 users, 5 s think time
    assert load_scenario(users, ["client.chat.think_time_s=8"]).dt_s == 2.0**-5
    hour = load_scenario(users, ["client.chat.think_time_s=1", "simulation.horizon_s=3600"])
    assert hour.dt_s == 2.0**-8 and "think time 1 s" in hour.dt_reason and hour.steps > 50_000


def test_the_step_is_derived_again_for_a_copy_with_other_settings():
    """A step is never stale: a copy with another dt, rate or client derives its own."""
    automatic = load_scenario(DEFAULT_SCENARIO)
    asked = dataclasses.replace(automatic, simulation=dataclasses.replace(automatic.simulation, dt_s=0.005))
    assert asked.dt_s == binary_step(0.005) and asked.dt_reason.startswith("given 0.005 s")
    busier = dataclasses.replace(automatic.clients[0], arrival={"process": "poisson", "rate_per_s": 400.0})
    assert dataclasses.replace(automatic, clients=(busier,)).dt_s < automatic.dt_s
    back = dataclasses.replace(asked, simulation=dataclasses.replace(asked.simulation, dt_s=None))
    assert back.dt_s == automatic.dt_s


def test_budget_refuses_with_the_setting_to_change():
    scenario = load_scenario(DEFAULT_SCENARIO, ["simulation.dt_s=1e-5"])
    with pytest.raises(ConfigError, match="exceed max_steps .* use a larger dt_s"):
        check_budget(plan_run(scenario, {"e0": 600}), scenario)
    scenario = load_scenario(DEFAULT_SCENARIO, ["simulation.memory_budget_gb=1e-5"])
    with pytest.raises(ConfigError, match="more than memory_budget_gb"):
        simulate(scenario)
    with pytest.raises(ConfigError, match=r"\[\[client\]\] 'chat': about 1.2e\+10|12,000,000,000 requests"):
        simulate(load_scenario(DEFAULT_SCENARIO, ["client.chat.arrival.rate_per_s=1e8"]))


def test_busy_time_spills_into_the_next_steps_and_is_bounded():
    started = np.zeros((10, 2))
    started[1, 0] = 0.35          # a 0.35 s prefill starting in step 1 of 0.1 s steps
    started[2, 1] = 0.05
    inside = busy_within_steps(started, 0.1)
    assert inside.max() <= 0.1
    np.testing.assert_allclose(inside[:, 0], [0, 0.1, 0.1, 0.1, 0.05, 0, 0, 0, 0, 0])
    assert inside[:, 1].sum() == pytest.approx(0.05)
    started[9, 0] = 0.5           # work running past the horizon is outside the run
    assert busy_within_steps(started, 0.1)[:, 0].sum() == pytest.approx(0.45)


def test_pipeline_scenarios_run_their_stages_through_the_one_simulate():
    path = DEFAULT_SCENARIO.parent / "rag_kv.toml"
    scenario = load_scenario(path, ["simulation.horizon_s=6"])
    results = simulate(scenario)
    stages = {label.split(":", 1)[1] for label in results.extra["stages"].stage}
    assert {"embed", "generate"} <= stages and len(stages) > 2
    with pytest.raises(ConfigError, match="use simulate"):
        simulate_engines(scenario)
    busy = results.timeseries.busy
    assert busy.max() <= 1.0 and all(e["busy_fraction"] <= 1.0 for e in results.summary["engines"].values())


def test_help_and_version_start_without_jax():
    import subprocess
    import sys

    code = ("import sys\nfrom hermes_jax import cli\n"
            "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
            "cli.build_parser().format_help()\n"
            "print('jax' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False" and "hermes-jax 0.1.0" in done.stdout


def test_the_console_entry_keeps_exit_codes_and_complete_output():
    """entry() ends the process without the interpreter's teardown: the exit code, every printed
    line and a reader that stops early (a closed pipe) behave as with a normal exit."""
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "hermes_jax.cli", "catalog", "--nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr
    done = subprocess.run([sys.executable, "-m", "hermes_jax.cli", "catalog"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.rstrip().splitlines()[-1] == _catalog_text().rstrip().splitlines()[-1]
    piped = subprocess.run(f"{sys.executable} -m hermes_jax.cli catalog | head -n 1", shell=True, capture_output=True,
                           text=True)
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 1 and "Traceback" not in piped.stderr


def _catalog_text() -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main(["catalog"]) == 0
    return buffer.getvalue()


def test_catalog_lists_models_hardware_and_stacks(capsys):
    assert cli.main(["catalog"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b" in out and "h100-sxm" in out and "vllm" in out
    # each stack with the devices it is fitted on and its kernel rules
    vllm = next(line for line in out.splitlines() if line.strip().startswith("vllm "))
    assert "h100-sxm" in vllm and "mi250-gcd" in vllm and "rocm: paged" in vllm


def test_quiet_seed_and_compare_two_runs(tmp_path, capsys):
    short = ["--set", "simulation.horizon_s=3"]
    for seed in (1, 2):
        assert cli.main(["simulate", "--quiet", "--seed", str(seed), *short, "--out", str(tmp_path / f"s{seed}")]) == 0
    out = capsys.readouterr().out
    assert "plan:" not in out and "simulating" not in out
    assert sum(line.startswith("requests ") for line in out.splitlines()) == 2
    one, two = (json.loads((tmp_path / f"s{k}" / "summary.json").read_text()) for k in (1, 2))
    assert one["latency"]["e2e_s"]["p50"] != two["latency"]["e2e_s"]["p50"]    # the seed reached the workload
    assert cli.main(["compare", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "TTFT p99 (ms)" in table and "s1" in table and "s2" in table
    assert (tmp_path / "cmp" / "compare.png").exists()
    assert cli.main(["compare", str(tmp_path / "s1")]) == 2     # one run is nothing to compare


def test_a_second_process_reuses_the_compiled_programs(tmp_path):
    """The CLI's persistent compilation cache: the first run of a scenario writes its programs (the
    small ones in JAX's cache, the run's scan whole in hermes_jax.sim.programs'); a second process finds them all and gives the same
    answer to the byte, and one of another seed (the same shape class) reuses the stored scan."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = dict(os.environ, HERMES_JAX_CACHE=str(cache))

    def run(seed, name):
        done = subprocess.run([sys.executable, "-m", "hermes_jax.cli", "simulate", "--quiet", "--seed", str(seed),
                               "--set", "simulation.horizon_s=2", "--out", str(tmp_path / name)], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return {p.name for p in cache.rglob("*") if p.is_file()}

    def scans(files):
        return {name for name in files if name.startswith("jit__segment")}

    def stored(files):
        return {name for name in files if name.endswith(".program")}

    first = run(1, "a")
    assert len(stored(first)) == 2          # the run's first state and its segment of the scan
    assert not scans(first)                 # kept whole here, not also in JAX's cache (see programs)
    assert run(1, "b") == first             # the same run again: every program found, none written
    for table in ("requests.csv", "timeseries.csv", "summary.json"):
        assert (tmp_path / "a" / table).read_bytes() == (tmp_path / "b" / table).read_bytes(), table
    files = run(2, "c")
    assert scans(files) == scans(first) and stored(files) == stored(first)   # same shape class: nothing new
    # an upgrade changes this store's keys, not JAX's: its programs are compiled again while JAX's
    # cache holds theirs; what is stored then must load and run in the next process (an executable
    # JAX had loaded from its cache, serialized again, failed there with NOT_FOUND)
    for name in stored(files):
        next(cache.rglob(name)).unlink()
    again = run(1, "d")
    assert stored(again) == stored(first)
    assert run(1, "e") == again
    for table in ("requests.csv", "timeseries.csv", "summary.json"):
        assert (tmp_path / "e" / table).read_bytes() == (tmp_path / "a" / table).read_bytes(), table


def _scaled(n, x):
    return x * n + 1.0


def test_a_stored_program_answers_as_the_function_and_a_damaged_one_is_compiled_again(tmp_path):
    import jax
    import jax.numpy as jnp

    from hermes_jax.sim import programs

    fn = jax.jit(_scaled, static_argnums=0)
    x = jnp.arange(4.0)
    before = dict(programs.stats)
    programs.keep_in(tmp_path)
    try:
        assert jnp.array_equal(programs.call(fn, (0,), 3, x), fn(3, x))
        assert programs.stats["stored"] == before["stored"] + 1
        programs.forget()
        assert jnp.array_equal(programs.call(fn, (0,), 3, x), fn(3, x))       # read back from disk
        assert programs.stats["loaded"] == before["loaded"] + 1
        assert jnp.array_equal(programs.call(fn, (0,), 5, x), fn(5, x))       # another static value: its own
        assert jnp.array_equal(programs.call(fn, (0,), 3, x[:3]), fn(3, x[:3]))   # another shape: its own
        assert len(list(tmp_path.glob("*.program"))) == 3
        for path in tmp_path.glob("*.program"):
            path.write_bytes(b"not a program")
        programs.forget()
        assert jnp.array_equal(programs.call(fn, (0,), 3, x), fn(3, x))       # compiled again, not trusted
        assert programs.stats["rejected"] == before["rejected"] + 1
        # inside a trace the function itself runs (its derivative included)
        grad = jax.grad(lambda v: programs.call(fn, (0,), 3, v).sum())(x)
        assert jnp.allclose(grad, 3.0)
    finally:
        programs.keep_in(None)
        programs.forget()
