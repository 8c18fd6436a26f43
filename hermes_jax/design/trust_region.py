"""Trust-region sequential linear programming on smoothed Jacobians: a gradient search that does
not walk off a cliff.

SLSQP trusts its linear models of the constraints as far as its line search goes; a queue that
saturates (a CPU pool one server short, a GPU too slow for the load) is a cliff no local slope
foretells, so SLSQP steps past it and stalls in the infeasible region (measured on the pipeline
problem of ``benchmarks/bench_design.py``). Here each step solves the linear model

    min  g . d + M * sum(s)    s.t.  margin_i + a_i . d + s_i >= 0,  s >= 0,  |d|_inf <= r,  x + d in bounds

(g: gradient of +-ln objective; margin_i, a_i: relative constraint margins and their gradients;
scipy's HiGHS LP), evaluates the trial point (one simulator evaluation) and compares the L1 merit
ln objective + M * sum(max(0, -margin)) with the model's prediction: a step that gains less than
a tenth of what was predicted is refused and the radius halved (no new Jacobian); a good step is
taken, its Jacobian computed, and the radius doubled when the step used all of it. When the
radius falls below ``min_radius`` (or the model promises nothing) the search restarts from a
random design until the budget is spent.

Resolution at a cliff: the Jacobian is smoothed over a log-shift of 0.1, so within about 0.1 of
a cliff's edge the linear model sees the jump as a steep slope and stops there: the design it
ends on can sit up to ~10% (in that variable) inside the feasible side of the edge
(``tests/test_trust_region.py`` measures 2-9% above the optimum of an analytic cliff). A
values-only coordinate polish toward the edge was tried and dropped: it spent evaluations
without closing the gap on the pipeline problem (the optimum moves along the constraint, which
one variable at a time cannot follow). Evaluations are counted as in ``design.search`` (``CountedEvaluations``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .problem import MAXIMISE
from .search import CountedEvaluations, SearchResult, _Budget, _margin, _margin_grad


def trust_region_search(problem, budget: int = 200, seed: int = 0, radius: float = 0.5, min_radius: float = 0.02,
                        penalty: float = 10.0, progress: Callable[[str], None] | None = None, x0=None) -> SearchResult:
    """Trust-region SLP (module docstring) from ``x0`` if given, else the start design (x = 0; with
    ``seed`` > 0 a random point), then random restarts until ``budget`` evaluations."""
    from scipy.optimize import linprog
    result = SearchResult("gradient (trust region)")
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(problem.lower, float), np.asarray(problem.upper, float)
    P, C = len(lo), len(problem.constraints)
    sign = -1.0 if problem.objective in MAXIMISE else 1.0
    at = CountedEvaluations(problem, budget, result)

    def parts(v):
        f = sign * np.log(max(float(v[0]), 1e-30))
        margins = np.array([_margin(c, float(v[i + 1])) for i, c in enumerate(problem.constraints)])
        return f, margins

    def merit(v):
        f, margins = parts(v)
        return f + penalty * np.maximum(-margins, 0.0).sum()

    def linear_step(x, v, J, r):
        f, margins = parts(v)
        g = sign * J[0] / max(float(v[0]), 1e-30)
        A = np.array([_margin_grad(c, J[i + 1]) for i, c in enumerate(problem.constraints)]).reshape(C, P)
        # variables (d, s): -(a_i . d) - s_i <= margin_i
        cost = np.concatenate([g, np.full(C, penalty)])
        a_ub = np.hstack([-A, -np.eye(C)])
        bounds = [(max(lo[j] - x[j], -r), min(hi[j] - x[j], r)) for j in range(P)] + [(0, None)] * C
        lp = linprog(cost, A_ub=a_ub, b_ub=margins, bounds=bounds, method="highs")
        if not lp.success:
            return None, 0.0
        d = lp.x[:P]
        predicted = merit(v) - (f + g @ d + penalty * np.maximum(-(margins + A @ d), 0.0).sum())
        return d, predicted

    starts = 0
    try:
        while True:
            x = np.clip(np.asarray(x0, float), lo, hi) if starts == 0 and x0 is not None else \
                np.zeros(P) if starts == 0 and seed == 0 else rng.uniform(lo, hi)
            starts += 1
            r = radius
            v, J = at(x, True)
            while r >= min_radius:
                d, predicted = linear_step(x, v, J, r)
                if d is None or predicted <= 1e-9:
                    break                                   # no model gain left: a stationary point
                y = np.clip(x + d, lo, hi)
                vy, _ = at(y, False)
                if (merit(v) - merit(vy)) >= 0.1 * predicted:
                    full = np.max(np.abs(d)) >= 0.99 * r
                    x, (v, J) = y, at(y, True)
                    r = min(2 * r, radius * 4) if full else r
                else:
                    r /= 2
            if progress:
                progress(f"trust region start {starts}: {at.spent} evaluations")
    except _Budget:
        pass
    return result
