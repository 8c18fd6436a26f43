"""Design over a pipeline (design.pipeline): CPU cores for retrieval priced against the GPU, knobs
named by labels, smoothed slopes that see both, the searches and the CLI on it."""

from pathlib import Path

import numpy as np
import pytest

from hermes_jax.cli import main
from hermes_jax.design import Constraint, Variable, gradient_search, random_search
from hermes_jax.design.pipeline import PipelineDesignProblem
from hermes_jax.errors import ConfigError
from hermes_jax.hardware.catalog import default_catalog
from hermes_jax.pipeline.slopes import Knob
from hermes_jax.sim import load_scenario

RAG = Path(__file__).resolve().parents[1] / "benchmarks" / "scenarios" / "rag_design.toml"
SETTINGS = ["simulation.horizon_s=15"]
VARIABLES = [Variable("resource.search-cpu.cpu_cores", 0.25, 2), Variable("engine.llm.peak_flops", 0.25, 4)]


@pytest.fixture(scope="module")
def problem():
    return PipelineDesignProblem(load_scenario(RAG, SETTINGS), VARIABLES, "usd_per_mtok",
                                 [Constraint("ttft_p99_s", upper=1.0), Constraint("rag/tpot_p99_s", upper=0.05)])


def test_knob_labels_round_trip_and_bad_ones_say_the_form():
    for label in ("engine.llm.hbm_bandwidth", "resource.search-cpu.cpu_cores", "resource.cxl.tier_bandwidth[1]"):
        assert Knob.parse(label).label == label
    for bad in ("search-cpu.cpu_cores", "engine.llm", "resource.cxl.tier_bandwidth[x]"):
        with pytest.raises(ConfigError, match="knob"):
            Knob.parse(bad)


def test_cost_is_the_sum_of_engines_and_pools_with_whole_cores(problem):
    horizon = 15.0
    price = default_catalog().get("cpu", "xeon-8480", "test")["price_per_core_hour"]
    for mult in (1.0, 0.41):   # 32 cores, then 13.1 -> 13
        x = np.log([mult, 1.0])
        m = problem.metrics_batch(x[None])
        cores = round(32 * mult)
        assert m["cost_usd/search-cpu"][0] == pytest.approx(cores * price * horizon / 3600)
        parts = [k for k in m if k.startswith("cost_usd/")]
        assert set(parts) == {"cost_usd/llm", "cost_usd/embed-cpu", "cost_usd/search-cpu"}
        assert m["cost_usd"][0] == pytest.approx(sum(m[k][0] for k in parts))
        assert m["usd_per_mtok"][0] == pytest.approx(m["cost_usd"][0] / m["finished_tokens"][0] * 1e6)
        assert f"({cores} cores)" in problem.describe(x)
    # the GPU is priced by the cost model of its designed parameters: more compute costs more
    dearer = problem.metrics_batch(np.log([[1.0, 2.0]]))
    assert dearer["cost_usd/llm"][0] > m["cost_usd/llm"][0]


def test_slopes_see_the_trade_between_cores_and_gpu(problem):
    keys = ["cost_usd", "ttft_mean_s"]
    x = np.log([0.5, 1.0])
    J = problem.jacobian(x, keys)
    assert J.shape == (2, 2) and problem.lanes_per_gradient == 5
    # cores cost what they cost (16 cores x 0.1 log-shift: 18 against 14 cores, a smooth line)
    price = default_catalog().get("cpu", "xeon-8480", "test")["price_per_core_hour"]
    assert J[0, 0] == pytest.approx(16 * price * 15 / 3600, rel=0.3)
    # more cores and more compute both shorten the TTFT; compute costs, too
    assert J[1, 0] < 0 and J[1, 1] < 0 and J[0, 1] > 0
    # a design is evaluated once: the Jacobian's base lane is the design's cached run
    assert problem.evaluate(x, keys)[0] == pytest.approx(problem.metrics_batch(x[None])["cost_usd"][0])


def test_searches_run_on_a_pipeline_and_count_runs(problem):
    start = problem.metrics_batch(np.zeros((1, 2)))
    g = gradient_search(problem, budget=25, starts=1)
    r = random_search(problem, 8, batch=8)
    for res in (g, r):
        assert res.evaluations == sorted(res.evaluations) and res.evaluations[-1] <= 25
    best = g.best()
    assert best is not None and best[0] < float(start["usd_per_mtok"][0])
    assert set(np.diff([0] + g.evaluations)) & {4, 5}   # Jacobians cost their lanes


def test_unpriced_knobs_and_unknown_metrics_are_refused():
    scenario = load_scenario(RAG, SETTINGS)
    with pytest.raises(ConfigError, match="no price model"):
        PipelineDesignProblem(scenario, [Variable("resource.search-cpu.cpu_core_flops", 0.5, 2)], "usd_per_mtok")
    with pytest.raises(ConfigError, match="unknown metric"):
        PipelineDesignProblem(scenario, VARIABLES[:1], "usd_per_mtok", [Constraint("ttft_p99.9_s", upper=1.0)])
    with pytest.raises(ConfigError, match="no resource"):
        PipelineDesignProblem(scenario, [Variable("resource.gpu.cpu_cores", 0.5, 2)], "usd_per_mtok")


def test_design_cli_on_a_pipeline(tmp_path, capsys):
    out = tmp_path / "d"
    code = main(["design", str(RAG), "--set", SETTINGS[0], "--vary", "resource.search-cpu.cpu_cores=0.25:2",
                 "--vary", "peak_flops=0.5:2", "--slo", "ttft_p99_s<=1", "--method", "trust-region", "--budget", "12",
                 "--out", str(out)])
    assert code == 0
    text = (out / "design.md").read_text()
    assert "resource.search-cpu.cpu_cores" in text and "engine.llm.peak_flops" in text and "price_per_core_hour" in text
    assert "best:" in capsys.readouterr().out
