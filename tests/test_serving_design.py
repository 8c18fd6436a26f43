"""Serving knobs as design variables (hermes_jax.design.serving): the relaxation interpolates the
configurations' own simulations, its slope in a knob is the neighbours' difference, relaxed designs
cost what they blend and are never reported as designs, and the rounded search ends on a runnable
configuration at least as good as the start."""

import json

import numpy as np
import pytest

from hermes_jax.cli import main
from hermes_jax.design import Constraint, Variable, cmaes_search, gradient_search
from hermes_jax.design.serving import ServingDesignProblem, ServingKnob, serving_search
from hermes_jax.errors import ConfigError
from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario

SETTINGS = ["simulation.horizon_s=12", "simulation.dt_s=0.05", "client.chat.arrival.rate_per_s=6",
            "client.chat.max_requests=40"]
KEYS = ["usd_per_mtok", "tpot_p99_s"]


@pytest.fixture(scope="module")
def problem():
    sc = load_scenario(str(DEFAULT_SCENARIO), SETTINGS)
    return ServingDesignProblem(sc, [Variable("hbm_bandwidth", 0.25, 4)], [ServingKnob("tp", (1, 2))],
                                "usd_per_mtok", [Constraint("tpot_p99_s", upper=0.03)])


def test_knobs_are_validated_with_the_field_named():
    with pytest.raises(ConfigError, match="unknown"):
        ServingKnob("batch", (1, 2))
    with pytest.raises(ConfigError, match="increase"):
        ServingKnob("tp", (2, 1))
    with pytest.raises(ConfigError, match="at least two"):
        ServingKnob("tp", (1,))
    with pytest.raises(ConfigError, match="whole numbers"):
        ServingKnob.parse("tp=1,2.5")
    assert ServingKnob.parse("max_batch_size=16,32").values == (16, 32)
    sc = load_scenario(str(DEFAULT_SCENARIO), SETTINGS)
    with pytest.raises(ConfigError, match="own value 1 must be among"):
        ServingDesignProblem(sc, [Variable("hbm_bandwidth", 0.5, 2)], [ServingKnob("tp", (2, 4))])
    with pytest.raises(ConfigError, match="tp=3"):   # 32 heads do not split over 3 devices
        ServingDesignProblem(sc, [Variable("hbm_bandwidth", 0.5, 2)], [ServingKnob("tp", (1, 3))])


def test_relaxation_interpolates_the_configurations_and_its_slope_is_their_difference(problem):
    tp1, tp2 = problem.configuration((0,)), problem.configuration((1,))
    x_h = np.array([0.2])
    f1, f2 = tp1.evaluate(x_h, KEYS), tp2.evaluate(x_h, KEYS)
    # two devices cost twice as much for the same tokens
    assert f2[0] == pytest.approx(2 * f1[0], rel=0.02)
    np.testing.assert_allclose(problem.evaluate(np.array([0.2, 0.0]), KEYS), f1, rtol=1e-12)
    np.testing.assert_allclose(problem.evaluate(np.array([0.2, 1.0]), KEYS), f2, rtol=1e-12)
    np.testing.assert_allclose(problem.evaluate(np.array([0.2, 0.25]), KEYS), 0.75 * f1 + 0.25 * f2, rtol=1e-12)
    J = problem.jacobian(np.array([0.2, 0.25]), KEYS)
    np.testing.assert_allclose(J[:, 1], f2 - f1, rtol=1e-9)
    blended = 0.75 * tp1.jacobian(x_h, KEYS) + 0.25 * tp2.jacobian(x_h, KEYS)
    np.testing.assert_allclose(J[:, :1], blended, rtol=1e-9)
    # at a whole value the slope in the knob is the step to the next value (the top: from the one below)
    np.testing.assert_allclose(problem.jacobian(np.array([0.2, 0.0]), KEYS)[:, 1], f2 - f1, rtol=1e-9)
    np.testing.assert_allclose(problem.jacobian(np.array([0.2, 1.0]), KEYS)[:, 1], f2 - f1, rtol=1e-9)
    # cost: every configuration blended; a Jacobian's lanes for those with weight, one run for the other
    lanes = problem.lanes_per_gradient
    assert problem.simulations(np.array([0.2, 0.25]), False, False) == 2
    assert problem.simulations(np.array([0.2, 0.0]), False, False) == 1
    assert problem.simulations(np.array([0.2, 0.0]), True, False) == lanes + 1
    assert problem.simulations(np.array([0.2, 0.25]), True, True) == 2 * lanes - 2
    assert problem.realisable(np.array([0.2, 1.0])) and not problem.realisable(np.array([0.2, 0.25]))
    assert "relaxed" in problem.describe(np.array([0.2, 0.5])) and "tp = 1.5" in problem.describe(np.array([0.2, 0.5]))


def test_rounded_search_ends_on_a_runnable_configuration_and_counts_what_it_blends(problem):
    start = problem.evaluate(np.zeros(2), ["usd_per_mtok"])[0]
    r = serving_search(problem, budget=40, method=gradient_search)
    best = r.best()
    assert best is not None and problem.realisable(best[1]) and best[0] < start
    assert r.evaluations == sorted(r.evaluations) and r.evaluations[-1] <= 40
    # relaxed designs are recorded (they cost evaluations) but never reported as the best
    for x, real in zip(r.points, r.realisable):
        assert real == problem.realisable(x)
    # black-box searches run real configurations: their points are rounded
    c = cmaes_search(problem, 16, popsize=8)
    assert all(problem.realisable(x) for x in c.points)
    again = problem.evaluate(best[1], ["usd_per_mtok"])[0]
    assert again == pytest.approx(best[0], rel=1e-9)


def test_design_cli_takes_serving_knobs(tmp_path, capsys):
    out = tmp_path / "d"
    code = main(["design", *sum((["--set", s] for s in SETTINGS), []), "--vary", "hbm_bandwidth=0.25:4",
                 "--knob", "tp=1,2", "--stack", "catalog", "--slo", "tpot_p99_s<=0.03", "--method", "random",
                 "--budget", "8", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "best:" in text and "tp = " in text
    designs = (out / "designs.csv").read_text().splitlines()
    assert designs[0].startswith("hbm_bandwidth_x,tp,realisable")
    record = json.loads((out / "design.json").read_text())
    assert record["best"]["knobs"]["tp"] in (1, 2)
    assert main(["design", "--knob", "tp=1;2", "--out", str(out)]) == 2
