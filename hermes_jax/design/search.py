"""Search methods over a DesignProblem (or a PipelineDesignProblem), all counting simulator evaluations the same way (one
configuration simulated once = one evaluation; a smoothed gradient costs its lanes), so they can be
compared at equal budgets: SQP on smoothed Jacobians from several starts (the gradient search),
uniform random search in the log-box, and CMA-ES (the ``cma`` package, optional).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from .problem import MAXIMISE, DesignProblem


@dataclass
class SearchResult:
    method: str
    evaluations: list = field(default_factory=list)   # cumulative simulator evaluations after each point
    points: list = field(default_factory=list)        # x (ln multipliers) of each evaluated design
    objective: list = field(default_factory=list)     # its objective (plain simulation)
    feasible: list = field(default_factory=list)      # its constraints all hold
    metrics: list = field(default_factory=list)       # its objective and constraint metrics {name: value}
    # False for a relaxed design (serving knobs between values: design.serving), which no one can
    # run: never the best design, never counted as reaching a target
    realisable: list = field(default_factory=list)

    def add(self, evals: int, x, value: float, ok: bool, metrics: dict | None = None, realisable: bool = True):
        self.evaluations.append(int(evals))
        self.points.append(np.array(x, float, copy=True))   # optimisers reuse their x buffer
        self.objective.append(float(value))
        self.feasible.append(bool(ok))
        self.metrics.append({k: float(v) for k, v in (metrics or {}).items()})
        self.realisable.append(bool(realisable))

    def best(self, maximise: bool = False):
        """(objective, x, evaluations) of the best feasible realisable design (None if none was)."""
        idx = [i for i, (ok, real) in enumerate(zip(self.feasible, self.realisable)) if ok and real]
        if not idx:
            return None
        i = max(idx, key=lambda i: self.objective[i]) if maximise else min(idx, key=lambda i: self.objective[i])
        return self.objective[i], self.points[i], self.evaluations[i]

    def evaluations_to(self, target: float, maximise: bool = False, rel: float = 0.01):
        """Evaluations until a feasible design within ``rel`` of ``target`` was seen (None: never)."""
        for e, v, ok, real in zip(self.evaluations, self.objective, self.feasible, self.realisable):
            if ok and real and (v >= target * (1 - rel) if maximise else v <= target * (1 + rel)):
                return e
        return None


class _Budget(Exception):
    pass


class CountedEvaluations:
    """A problem's metrics at a design, each design run once and counted against ``budget``: a
    value costs one evaluation, a smoothed Jacobian its lanes (its base lane is the value's, not
    counted again; ``problem.simulations`` says so, and a problem that blends several simulations
    per design, ``design.serving``, says more). Every new design goes
    into ``result``. Calls return (values (K,), Jacobian (K, P) or None) over the objective and then
    each constraint's metric."""

    def __init__(self, problem, budget: int, result: SearchResult):
        self.problem, self.budget, self.result = problem, budget, result
        self.keys = [problem.objective] + [c.metric for c in problem.constraints]
        self.values, self.jacobians, self.spent = {}, {}, 0

    def _spend(self, n):
        if self.spent + n > self.budget:
            raise _Budget
        self.spent += n

    def _record(self, x, v):
        self.result.add(self.spent, x, float(v[0]), _feasible(self.problem, v[1:]), dict(zip(self.keys, v)),
                        self.problem.realisable(x))

    def __call__(self, x, need_jac: bool):
        x = np.array(x, np.float64, copy=True)
        key = tuple(np.round(x, 12))
        if need_jac and key not in self.jacobians:
            self._spend(self.problem.simulations(x, True, key in self.values))
            v = self.values[key] if key in self.values else self.problem.evaluate(x, self.keys)   # the base lane
            self.jacobians[key] = self.problem.jacobian(x, self.keys)
            self.values[key] = v
            self._record(x, v)
        elif key not in self.values:
            self._spend(self.problem.simulations(x, False, False))
            v = self.problem.evaluate(x, self.keys)
            self.values[key] = v
            self._record(x, v)
        return self.values[key], self.jacobians.get(key)


def gradient_search(problem, budget: int = 200, starts: int = 8, seed: int = 0,
                    progress: Callable[[str], None] | None = None, x0=None) -> SearchResult:
    """Sequential quadratic programming (scipy SLSQP) on ln(objective) with the constraints as
    constraints, not penalties, from ``x0`` if given, else the start design (x = 0; with ``seed`` > 0 a random point)
    and then random starts until ``budget`` evaluations. One smoothed Jacobian of every metric (``problem.lanes_per_gradient``
    evaluations) gives the objective's and every constraint's gradient at a point; trial points of
    the line search cost one evaluation each (values only)."""
    from scipy.optimize import minimize
    result = SearchResult("gradient (SQP)")
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(problem.lower, float), np.asarray(problem.upper, float)
    sign = -1.0 if problem.objective in MAXIMISE else 1.0
    at = CountedEvaluations(problem, budget, result)

    def fun(x):
        v, _ = at(x, False)
        return float(sign * np.log(max(float(v[0]), 1e-30)))

    def fun_jac(x):
        v, J = at(x, True)
        return np.asarray(sign * J[0] / max(float(v[0]), 1e-30), np.float64)

    def cons(x):
        v, _ = at(x, False)
        return np.array([_margin(c, float(v[i + 1])) for i, c in enumerate(problem.constraints)], np.float64)

    def cons_jac(x):
        v, J = at(x, True)
        return np.array([_margin_grad(c, J[i + 1]) for i, c in enumerate(problem.constraints)], np.float64)

    try:
        for k in range(starts):
            start = np.clip(np.asarray(x0, float), lo, hi) if k == 0 and x0 is not None else \
                np.zeros(len(lo)) if k == 0 and seed == 0 else rng.uniform(lo, hi)
            minimize(fun, start, jac=fun_jac, bounds=list(zip(lo, hi)), method="SLSQP",
                     constraints=[{"type": "ineq", "fun": cons, "jac": cons_jac}], options={"maxiter": 30, "ftol": 1e-5})
            if progress:
                progress(f"gradient start {k + 1}/{starts}: {at.spent} evaluations")
    except _Budget:
        pass
    return result


def _margin(c, value):
    """>= 0 when the constraint holds (relative)."""
    return 1.0 - value / c.upper if c.upper is not None else value / c.lower - 1.0


def _margin_grad(c, grad):
    return -grad / c.upper if c.upper is not None else grad / c.lower


def _feasible(problem, constraint_values) -> bool:
    return all(_margin(c, v) >= 0 for c, v in zip(problem.constraints, constraint_values))


def random_search(problem: DesignProblem, evaluations: int = 400, seed: int = 0, batch: int = 16) -> SearchResult:
    """Uniform samples of the log-box, evaluated ``batch`` at a time."""
    result = SearchResult("random")
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(problem.lower), np.asarray(problem.upper)
    done = 0
    while done < evaluations:
        k = min(batch, evaluations - done)
        xs = rng.uniform(lo, hi, size=(batch, len(lo)))   # fixed batch shape: one compile
        m = problem.metrics_batch(jnp.asarray(xs))
        ok = np.asarray(problem.feasible(m))
        for i in range(k):
            done += 1
            result.add(done, problem.rounded(xs[i]), float(m[problem.objective][i]), bool(ok[i]), _row(problem, m, i))
    return result


def _row(problem: DesignProblem, m: dict, i: int) -> dict:
    return {k: float(m[k][i]) for k in [problem.objective] + [c.metric for c in problem.constraints]}


def cmaes_search(problem: DesignProblem, evaluations: int = 400, seed: int = 0, popsize: int = 8) -> SearchResult:
    """CMA-ES (pycma) on the penalised objective in the log-box, from the box centre."""
    try:
        import cma
    except ImportError as exc:   # optional: pip install 'hermes_jax[design]'
        raise ConfigError("CMA-ES needs the optional 'cma' package: pip install 'hermes_jax[design]'") from exc
    result = SearchResult("cma-es")
    lo, hi = np.asarray(problem.lower), np.asarray(problem.upper)
    es = cma.CMAEvolutionStrategy(np.zeros(len(lo)), 0.3 * float(np.mean(hi - lo)),
                                  {"bounds": [lo.tolist(), hi.tolist()], "popsize": popsize, "seed": seed + 1,
                                   "verbose": -9})
    done = 0
    while done < evaluations:
        xs = np.asarray(es.ask())
        m = problem.metrics_batch(jnp.asarray(xs))
        pen = np.asarray(jax.vmap(problem.penalised)(m))
        ok = np.asarray(problem.feasible(m))
        es.tell(list(xs), pen.tolist())
        for i in range(len(xs)):
            done += 1
            result.add(done, problem.rounded(xs[i]), float(m[problem.objective][i]), bool(ok[i]), _row(problem, m, i))
    return result
