"""design.trust_region_search on an analytic problem with a cliff (a queue that saturates below a
capacity), where the optimum sits on the cliff's edge: it ends feasible and close to the optimum,
and counts evaluations as the other searches do. No simulator: each evaluation is a formula."""

import numpy as np
import pytest

from hermes_jax.design import Constraint, trust_region_search
from hermes_jax.design.problem import ObjectiveAndConstraints

EDGE = 0.9    # below this capacity the "queue" saturates: latency jumps by 5


class Cliff(ObjectiveAndConstraints):
    """cost = 3 e^x0 + e^x1, latency = e^-x0 + e^-x1 (+ 5 below the edge) <= 2.5; the optimum
    e^x0 = 0.9 (the edge), e^x1 = 1 / (2.5 - 1 / 0.9): cost 3.42. Jacobians: central differences
    at a log-shift of 0.1, as the smoothed estimator takes them (they see the jump as a slope)."""

    objective = "usd_per_mtok"
    constraints = (Constraint("ttft_p99_s", upper=2.5),)
    lower, upper = np.log([0.25, 0.25]), np.log([4.0, 4.0])
    names = ("capacity", "other")
    lanes_per_gradient = 5
    penalty = 30.0

    def __init__(self):
        self.runs = 0

    def _metrics(self, x):
        self.runs += 1
        cost = 3 * np.exp(x[0]) + np.exp(x[1])
        latency = np.exp(-x[0]) + np.exp(-x[1]) + (5.0 if np.exp(x[0]) < EDGE else 0.0)
        return np.array([cost, latency])

    def evaluate(self, x, keys):
        return self._metrics(np.asarray(x, float))

    def jacobian(self, x, keys):
        x = np.asarray(x, float)
        cols = [(self._metrics(x + 0.1 * e) - self._metrics(x - 0.1 * e)) / 0.2 for e in np.eye(2)]
        return np.stack(cols, axis=1)


OPTIMUM = 3 * EDGE + 1 / (2.5 - 1 / EDGE)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trust_region_ends_feasible_at_the_cliff_edge(seed):
    problem = Cliff()
    result = trust_region_search(problem, budget=120, seed=seed)
    assert result.evaluations == sorted(result.evaluations) and result.evaluations[-1] <= 120
    value, x, _ = result.best()
    # the slopes are smoothed over a log-shift of 0.1: the search stops within about that of the
    # edge (measured 2-9% above the optimum over these seeds); a start at x = 0 costs 4.0
    assert OPTIMUM <= value <= 1.1 * OPTIMUM
    assert np.exp(x[0]) >= EDGE          # feasible: on the right side of the cliff
    # every recorded design's feasibility is its constraint's, evaluated once
    for point, ok, m in zip(result.points, result.feasible, result.metrics):
        assert ok == (m["ttft_p99_s"] <= 2.5)
