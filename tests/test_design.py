"""hermes_jax.design: a price model traceable to the catalog, design problems whose metrics are the
simulator's, and searches that count simulator evaluations honestly and find cheaper feasible
designs than the start."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax.cli import main
from hermes_jax.design import (Constraint, DesignProblem, Variable, catalog_cost_model, cmaes_search, gradient_search,
                               random_search)
from hermes_jax.design.report import designs_frame, pareto_front
from hermes_jax.errors import ConfigError
from hermes_jax.hardware.catalog import get_hardware
from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario
from hermes_jax.sim.differentiable import DifferentiableSim
from hermes_jax.sim.smoothing import Smoothed

SETTINGS = ["simulation.horizon_s=12", "simulation.dt_s=0.05", "client.chat.arrival.rate_per_s=6",
            "client.chat.max_requests=40"]


@pytest.fixture(scope="module")
def problem():
    sc = load_scenario(str(DEFAULT_SCENARIO), SETTINGS)
    model = DifferentiableSim(sc, estimator=Smoothed(scales=(0.05,)))
    return DesignProblem(model, [Variable("peak_flops", 0.25, 4), Variable("hbm_bandwidth", 0.25, 4)],
                         "usd_per_mtok", [Constraint("tpot_p99_s", upper=0.03)])


def test_price_model_is_fitted_to_the_catalog_and_grows_with_every_feature():
    m = catalog_cost_model()
    assert all(c > 0 for c in m.price_coef) and all(c >= 0 for c in m.power_coef)
    h100 = get_hardware("h100-sxm").params
    price = float(m.price_per_hour(h100.log))
    # the one fitted scale: the catalog's prices are matched on average (log-mean error under 25%)
    errors = np.array([p for p, _ in m.residuals.values()]) / 100
    assert abs(np.mean(np.log1p(errors))) < 0.25
    assert price == pytest.approx(float(h100.price_per_hour) * (1 + m.residuals["h100-sxm"][0] / 100), rel=1e-6)


def test_bad_variables_and_constraints_are_refused(problem):
    with pytest.raises(ConfigError, match="low <= 1 <= high"):
        Variable("hbm_bandwidth", 2.0, 4.0)
    with pytest.raises(ConfigError, match="exactly one"):
        Constraint("ttft_p99_s")
    with pytest.raises(ConfigError, match="objective"):
        DesignProblem(problem.model, problem.variables, "speed")


def test_metrics_are_the_simulators_and_the_price_models(problem):
    x = jnp.zeros(2)
    m = problem.metrics_batch(x[None])
    sim = problem.model.metrics(problem.model.params)
    for k in ("e2e_mean_s", "tpot_p99_s", "finished_tokens"):
        assert float(m[k][0]) == pytest.approx(float(sim[k]), rel=1e-5), k
    price = float(problem.cost_model.price_per_hour(problem.model.params.log))
    assert float(m["cost_usd"][0]) == pytest.approx(price * problem.model.horizon_s / 3600, rel=1e-5)
    assert any(c.metric == "finished_share" for c in problem.constraints)
    # more bandwidth costs more per token while every request finishes either way
    grad = jax.grad(lambda x: problem.metrics(x)["usd_per_mtok"])(x)
    assert float(grad[1]) > 0


def test_searches_find_cheaper_feasible_designs_and_count_evaluations(problem):
    start = problem.metrics_batch(jnp.zeros((1, 2)))
    assert bool(problem.feasible(start)[0])
    g = gradient_search(problem, budget=40, starts=1)
    r = random_search(problem, 32, batch=16)
    c = cmaes_search(problem, 32, popsize=16)
    for res in (g, r, c):
        assert res.evaluations == sorted(res.evaluations) and res.evaluations[-1] <= 40
        best = res.best()
        assert best is not None and best[0] < float(start["usd_per_mtok"][0])
    # every evaluated design is kept as it was (optimisers reuse their x buffer)
    assert len({tuple(np.round(p, 9)) for p in g.points}) > 1
    best = g.best()
    again = problem.metrics_batch(jnp.asarray(best[1])[None])
    assert float(again["usd_per_mtok"][0]) == pytest.approx(best[0], rel=1e-5)
    # a value costs one run, a smoothed Jacobian its lanes: 1 + 2 * 2 variables * 1 scale
    assert problem.lanes_per_gradient == 5
    assert set(np.diff([0] + g.evaluations)) <= {1, 4, 5} and set(np.diff([0] + g.evaluations)) & {4, 5}
    front = pareto_front(designs_frame(problem, r), "usd_per_mtok", "tpot_p99_s")
    assert len(front) >= 1 and np.all(np.diff(front.usd_per_mtok.to_numpy()) <= 1e-12)


def test_design_cli_writes_the_report(tmp_path, capsys):
    out = tmp_path / "d"
    code = main(["design", *sum((["--set", s] for s in SETTINGS), []), "--stack", "catalog",
                 "--slo", "tpot_p99_s<=0.03", "--method", "random", "--budget", "16", "--out", str(out)])
    assert code == 0
    for name in ("design.md", "designs.csv", "design.json", "pareto.png"):
        assert (out / name).exists(), name
    assert "best:" in capsys.readouterr().out
    assert main(["design", "--slo", "tpot_p99_s=3", "--out", str(out)]) == 2
