"""A hardware design problem: which multipliers of an engine's datasheet parameters serve a
workload at the least cost (or energy, or the most throughput) within latency SLOs.

Variables are natural logs of multipliers of the engine's parameters (``peak_flops`` scales every
dtype's rate together), bounded. The simulator's metrics come from ``DifferentiableSim.scaled``
(the smoothed estimator's gradients), the price and power of the designed device from a
``design.cost.CostModel`` of those same parameters (exact gradients). Constraints bound a metric
above or below. The gradient search treats them as constraints (SQP); CMA-ES minimises the
penalised objective

    J(x) = +-ln(objective) + penalty * sum_c max(0, relative violation_c)^2

(ln: scale-free; - for maximised objectives). A design is feasible when every constraint holds on
the plain (unsmoothed) simulation. Unless given, ``finished_share >= 0.99 x`` the start design's
share is among the constraints: latency quantiles are over finished requests, so a design that
leaves requests unfinished would otherwise look fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..sim.accounting import device_cost_usd, device_energy_j
from ..sim.differentiable import DifferentiableSim
from .cost import CostModel, catalog_cost_model

MINIMISE = ("usd_per_mtok", "j_per_token", "cost_usd", "energy_j")
MAXIMISE = ("throughput_tokens_s", "goodput_rps", "tokens_per_usd")


@dataclass(frozen=True)
class Variable:
    """A parameter of the engine scaled by a multiplier in [low, high] (1 = the catalog's value)."""

    name: str
    low: float
    high: float

    def __post_init__(self):
        if not (0 < self.low <= 1 <= self.high):
            raise ConfigError(f"design variable {self.name}: bounds must satisfy 0 < low <= 1 <= high, "
                              f"got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class Constraint:
    """``metric <= upper`` or ``metric >= lower`` (any DifferentiableSim metric, e.g. ttft_p99_s)."""

    metric: str
    upper: float | None = None
    lower: float | None = None

    def __post_init__(self):
        if (self.upper is None) == (self.lower is None):
            raise ConfigError(f"constraint on {self.metric}: give exactly one of upper or lower")
        bound = self.upper if self.upper is not None else self.lower
        if not bound > 0:
            raise ConfigError(f"constraint on {self.metric}: the bound must be > 0, got {bound}")

    def violation(self, value):
        """Relative violation (0 when met)."""
        if self.upper is not None:
            return jnp.maximum(value / self.upper - 1.0, 0.0)
        return jnp.maximum(1.0 - value / self.lower, 0.0)


def check_objective_and_variables(objective: str, variables) -> None:
    if objective not in MINIMISE + MAXIMISE:
        raise ConfigError(f"design objective {objective!r} unknown; choose one of {', '.join(MINIMISE + MAXIMISE)}")
    if not variables:
        raise ConfigError("design: give at least one variable")


class ObjectiveAndConstraints:
    """What every design problem shares: the penalised objective (CMA-ES), feasibility, the box, and
    how a design is counted and shown. Subclasses set names, objective, constraints, penalty, lower,
    upper and lanes_per_gradient; one whose designs are not all runnable (``design.serving``:
    serving knobs between values) overrides the last four methods."""

    def penalised(self, m: dict):
        value = m[self.objective]
        sign = -1.0 if self.objective in MAXIMISE else 1.0
        violation = sum(c.violation(m[c.metric]) ** 2 for c in self.constraints)
        return sign * jnp.log(jnp.maximum(value, 1e-30)) + self.penalty * violation

    def feasible(self, m: dict):
        ok = True
        for c in self.constraints:
            ok = ok & (c.violation(m[c.metric]) <= 0)
        return ok

    def clip(self, x):
        return jnp.clip(x, self.lower, self.upper)

    def simulations(self, x, jacobian: bool, value_known: bool) -> int:
        """Simulator evaluations a value at x costs (one), or a smoothed Jacobian (its lanes; the
        base lane is the value's, not counted again when known)."""
        return self.lanes_per_gradient - value_known if jacobian else 1

    def realisable(self, x) -> bool:
        """Whether design x is one that can run (every design here)."""
        return True

    def rounded(self, x):
        """The design a batch evaluation runs for x (x itself here)."""
        return x

    def table(self, points) -> pd.DataFrame:
        """One row per design (rows of ``points``): its multipliers, ``NAME_x``."""
        points = np.asarray(points, float).reshape(-1, len(self.names))
        return pd.DataFrame(np.exp(points), columns=[f"{n}_x" for n in self.names])


class DesignProblem(ObjectiveAndConstraints):
    def __init__(self, model: DifferentiableSim, variables: Sequence[Variable], objective: str = "usd_per_mtok",
                 constraints: Sequence[Constraint] = (), cost_model: CostModel | None = None, penalty: float = 30.0):
        check_objective_and_variables(objective, variables)
        self.model, self.variables, self.objective = model, tuple(variables), objective
        self.names = tuple(v.name for v in self.variables)
        self.cost_model = cost_model or catalog_cost_model()
        self.penalty = penalty
        self.lower = jnp.log(jnp.asarray([v.low for v in self.variables]))
        self.upper = jnp.log(jnp.asarray([v.high for v in self.variables]))
        self._sim = model.scaled(self.names)
        self._batch = model.scaled_batch(self.names)
        constraints = list(constraints)
        if not any(c.metric == "finished_share" for c in constraints):
            # requests arriving just before the horizon cannot finish on any design: the floor is the
            # start design's share, less 1%
            start = float(self._batch(jnp.zeros((1, len(self.names))))["finished_share"][0])
            constraints.append(Constraint("finished_share", lower=max(0.99 * start, 1e-3)))
        self.constraints = tuple(constraints)
        design = getattr(model.estimator, "design", None)
        self.lanes_per_gradient = 1 + 2 * (design(len(self.names)).shape[0] if design else len(self.names))
        self._jacobians: dict = {}

    # --- metrics of a design -------------------------------------------------------------------
    def _log(self, x):
        base = self.model.params.log
        log = dict(base)
        for i, k in enumerate(self.names):
            log[k] = base[k] + x[i]
        return log

    def _with_cost(self, x, m: dict) -> dict:
        """Replace price- and power-dependent metrics by the cost model's for the designed device."""
        log = self._log(x)
        sim = self.model
        R, d, H = sim.group.engine.replicas, sim.devices, sim.horizon_s
        price = self.cost_model.price_per_hour(log)
        busy = m["utilization"] * R * H
        m = dict(m)
        m["price_per_hour"] = price
        m["cost_usd"] = device_cost_usd(d, price, H, R)
        m["energy_j"] = device_energy_j(d, self.cost_model.power_idle_w(log), self.cost_model.power_max_w(log), H, busy, R)
        tokens = jnp.maximum(m["finished_tokens"], 1.0)
        m["usd_per_mtok"] = m["cost_usd"] / tokens * 1e6
        m["tokens_per_usd"] = tokens / m["cost_usd"]
        m["j_per_token"] = m["energy_j"] / tokens
        return m

    def metrics(self, x) -> dict:
        """Every metric of design x (differentiable: smoothed through the simulator)."""
        return self._with_cost(x, self._sim(x))

    def metrics_batch(self, xs) -> dict:
        """Metrics of many designs (rows of xs) in one forward call; no derivatives."""
        m = self._batch(xs)
        return jax.vmap(self._with_cost)(xs, m)

    def evaluate(self, x, keys) -> np.ndarray:
        """The plain simulation's ``keys`` metrics at design x."""
        m = self.metrics_batch(jnp.asarray(x)[None])
        return np.array([float(m[k][0]) for k in keys])

    def jacobian(self, x, keys) -> np.ndarray:
        """(K, P) smoothed derivatives of ``keys`` at x (``lanes_per_gradient`` evaluations)."""
        keys = tuple(keys)
        if keys not in self._jacobians:
            # no outer jit: the simulator's compiled functions are cached by configuration, so every
            # problem on the same model (another SLO, another start) reuses them
            self._jacobians[keys] = jax.jacfwd(lambda x: jnp.stack([self.metrics(x)[k] for k in keys]))
        return np.asarray(self._jacobians[keys](jnp.asarray(x)))

    def describe(self, x) -> str:
        mult = np.exp(np.asarray(x))
        return ", ".join(f"{k} x{v:.3g}" for k, v in zip(self.names, mult))
