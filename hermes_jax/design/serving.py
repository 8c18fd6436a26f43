"""Serving knobs as design variables: tensor-parallel degree, max batch, chunk size (tokens per
iteration) and replicas, searched together with hardware parameters.

A knob takes one of an ordered list of whole values, and each value is another compiled engine
configuration, so no derivative exists. The search sees a continuous relaxation instead: knob k has
a coordinate z_k (its index in the list, 0 = the scenario's own value), and a design with fractional
coordinates has the multilinear interpolation of the metrics of the 2^K configurations around it

    f(x, z) = sum_c w_c(z) f_c(x),    w_c = prod_k (t_k if c_k is the upper neighbour else 1 - t_k)

with t_k = z_k - lo_k in [0, 1] (lo_k = floor(z_k), or the second-to-last index at the top). Its
derivative in x blends the smoothed Jacobians of the configurations with weight; in z_k it is the
difference of the neighbours (exact for the interpolant; the slope of the metric over one step of
the knob). A relaxed design is not a configuration anyone can run: it is never reported as a
design (``SearchResult.realisable``) and costs one simulator evaluation per configuration it
blends. ``serving_search`` then rounds: the relaxed optimum's neighbouring configurations, nearest
first, each with its hardware variables re-optimised from the relaxed values by the same gradient
method, all within one evaluation budget.

Assumption: between neighbouring values a metric moves about linearly in the index (so list values
about evenly in the scale that matters, e.g. powers of two for TP and max batch). A knob whose
metrics jump between neighbours still gets the right sign of the slope, not its size.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..errors import ConfigError
from .problem import MAXIMISE, Constraint, DesignProblem, ObjectiveAndConstraints, Variable, \
    check_objective_and_variables
from .search import SearchResult, _feasible, gradient_search

SERVING_KNOBS = ("tp", "max_batch_size", "max_batch_tokens", "replicas")
"""Engine fields a design may choose (``max_batch_tokens`` is the chunk size under the chunked
scheduler and the per-iteration token budget otherwise)."""


@dataclass(frozen=True)
class ServingKnob:
    """An engine field chosen from ``values`` (whole numbers, increasing; the scenario's own value
    among them)."""

    name: str
    values: tuple[int, ...]

    def __post_init__(self):
        if self.name not in SERVING_KNOBS:
            raise ConfigError(f"serving knob {self.name!r} unknown; choose one of {', '.join(SERVING_KNOBS)}")
        values = tuple(self.values)
        if len(values) < 2:
            raise ConfigError(f"serving knob {self.name}: give at least two values, got {list(values)}")
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
            raise ConfigError(f"serving knob {self.name}: values must be whole numbers >= 1, got {list(values)}")
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ConfigError(f"serving knob {self.name}: values must increase, got {list(values)}")
        object.__setattr__(self, "values", tuple(int(v) for v in values))

    @classmethod
    def parse(cls, text: str) -> "ServingKnob":
        """``NAME=V1,V2,...`` (the command line's ``--knob``)."""
        if "=" not in text:
            raise ConfigError(f"--knob {text!r}: expected NAME=V1,V2,..., e.g. tp=1,2,4")
        name, raw = text.split("=", 1)
        try:
            values = tuple(int(v) for v in raw.split(","))
        except ValueError:
            raise ConfigError(f"--knob {text!r}: values must be whole numbers separated by commas") from None
        return cls(name.strip(), values)


class ServingDesignProblem(ObjectiveAndConstraints):
    """Hardware multipliers (``Variable``) and serving knobs (``ServingKnob``) of one engine of a
    single-stage scenario. A design x (P + K,) is P natural logs of multipliers (differentiable:
    smoothed Jacobians) then K knob coordinates (index in the knob's values minus ``base``; not
    differentiable, relaxed as the module doc says); x = 0 is the scenario as given. Each
    configuration of the knobs is a ``DesignProblem`` of its own, built when first needed (one
    compile each), with the same objective, constraints and price model.

    base: (K,) int, each knob's index of the scenario's own value. lower, upper: (P + K,) bounds of x.
    """

    def __init__(self, scenario, variables: Sequence[Variable], knobs: Sequence[ServingKnob],
                 objective: str = "usd_per_mtok", constraints: Sequence[Constraint] = (), engine: str | None = None,
                 estimator=None, cost_model=None, penalty: float = 30.0):
        from ..sim.smoothing import Smoothed
        check_objective_and_variables(objective, list(variables) + list(knobs))
        if not knobs:
            raise ConfigError("serving design: give at least one serving knob (else use DesignProblem)")
        if len({k.name for k in knobs}) != len(knobs):
            raise ConfigError(f"serving design: each knob once, got {[k.name for k in knobs]}")
        if engine is None and len(scenario.engines) > 1:
            raise ConfigError(f"{scenario.source}: several engines; name the one to design "
                              f"({', '.join(e.name for e in scenario.engines)})")
        self.entry = scenario.engine(engine) if engine else scenario.engines[0]
        self.scenario, self.variables, self.knobs, self.objective = scenario, tuple(variables), tuple(knobs), objective
        for k in self.knobs:
            own = getattr(self.entry, k.name)
            if own not in k.values:
                raise ConfigError(f"serving knob {k.name}: the scenario's own value {own} must be among the values "
                                  f"{list(k.values)} (the search starts there)")
        self.base = np.array([k.values.index(getattr(self.entry, k.name)) for k in self.knobs])
        self.hardware_names = tuple(v.name for v in self.variables)
        self.names = self.hardware_names + tuple(k.name for k in self.knobs)
        self.estimator = estimator if estimator is not None else Smoothed(scales=(0.1,))
        self.penalty = penalty
        self._check_layouts()
        self._configs: dict[tuple, DesignProblem] = {}
        self._last: tuple = (None, {})   # (hardware x, keys) and {configuration: its values there}
        self._cost_model, self._user_constraints = cost_model, tuple(constraints)
        start = self.configuration(tuple(self.base))
        self.cost_model = start.cost_model
        # with the start's finished-share floor (unless given), which then holds for every configuration
        self.constraints = start.constraints
        # per configuration blended: a smoothed Jacobian's lanes (one run when no hardware variable)
        self.lanes_per_gradient = start.lanes_per_gradient if self.variables else 1
        P = len(self.variables)
        top = np.array([len(k.values) - 1 for k in self.knobs], float)
        self.lower = jnp.concatenate([start.lower[:P], jnp.asarray(-self.base, float)])
        self.upper = jnp.concatenate([start.upper[:P], jnp.asarray(top - self.base, float)])

    # --- configurations ------------------------------------------------------------------------
    def _check_layouts(self):
        """Every value of every knob must make an engine that can be built (TP must divide the heads)."""
        from ..sim.build import build_group
        for k in self.knobs:
            if k.name != "tp":
                continue
            for v in k.values:
                try:
                    build_group(dataclasses.replace(self.entry, tp=v))
                except ConfigError as exc:
                    raise ConfigError(f"serving knob tp={v}: {exc}") from None

    def configuration(self, index: Sequence[int]) -> DesignProblem:
        """The hardware design problem of one knob configuration (``index``: each knob's value index)."""
        from ..sim.differentiable import DifferentiableSim
        index = tuple(int(i) for i in index)
        if index not in self._configs:
            changes = {k.name: k.values[i] for k, i in zip(self.knobs, index)}
            entry = dataclasses.replace(self.entry, **changes)
            sc = dataclasses.replace(self.scenario, engines=tuple(entry if e.name == self.entry.name else e
                                                                  for e in self.scenario.engines))
            model = DifferentiableSim(sc, engine=self.entry.name if len(sc.engines) > 1 else None,
                                      estimator=self.estimator)
            constraints = getattr(self, "constraints", self._user_constraints)
            self._configs[index] = DesignProblem(model, self.variables or [Variable("peak_flops", 1.0, 1.0)],
                                                 self.objective, constraints, self._cost_model, self.penalty)
        return self._configs[index]

    def values(self, x) -> dict[str, float]:
        """Each knob's value at x (fractional coordinates interpolate between neighbouring values)."""
        z = np.asarray(x, float)[len(self.variables):] + self.base
        out = {}
        for k, zk in zip(self.knobs, z):
            lo = min(int(np.floor(zk)), len(k.values) - 2)
            out[k.name] = k.values[lo] + (zk - lo) * (k.values[lo + 1] - k.values[lo])
        return out

    def realisable(self, x) -> bool:
        """Whole knob coordinates: a configuration that can run (a relaxed design cannot)."""
        z = np.asarray(x, float)[len(self.variables):]
        return bool(np.all(np.abs(z - np.round(z)) < 1e-9))

    def _corners(self, x, need_jac: bool):
        """([(configuration index, weight, upper flags)], (K,) fractions t) of the configurations
        blended at x. Without ``need_jac`` corners of zero weight are left out."""
        z = np.asarray(x, float)[len(self.variables):] + self.base
        sizes = np.array([len(k.values) for k in self.knobs])
        z = np.clip(z, 0, sizes - 1)
        lo = np.minimum(np.floor(z + 1e-9).astype(int), sizes - 2)
        t = np.clip(z - lo, 0.0, 1.0)
        t[np.abs(t) < 1e-9] = 0.0
        t[np.abs(t - 1) < 1e-9] = 1.0
        out = []
        for upper in itertools.product((0, 1), repeat=len(self.knobs)):
            w = float(np.prod([tk if u else 1 - tk for tk, u in zip(t, upper)]))
            if w > 0 or need_jac:
                out.append((tuple(int(l + u) for l, u in zip(lo, upper)), w, upper))
        return out, t

    def simulations(self, x, jacobian: bool, value_known: bool) -> int:
        """Simulator evaluations a value (or a Jacobian) at x costs: every configuration blended,
        a smoothed Jacobian's lanes for each of weight > 0, one run for each of weight 0."""
        corners, _ = self._corners(x, jacobian)
        if not jacobian:
            return len(corners)
        weighted = sum(w > 0 for _, w, _ in corners)
        cost = weighted * self.lanes_per_gradient + (len(corners) - weighted)
        return cost - (self.simulations(x, False, False) if value_known else 0)

    # --- metrics -------------------------------------------------------------------------------
    def _hw(self, x):
        return jnp.asarray(np.asarray(x, float)[:len(self.variables)] if self.variables else np.zeros(1))

    def _value(self, index, xh, keys) -> np.ndarray:
        """A configuration's plain ``keys`` metrics at hardware xh, kept for the last xh (a Jacobian
        right after the value at the same design does not simulate its corners again)."""
        at = (tuple(np.asarray(xh).tolist()), tuple(keys))
        if self._last[0] != at:
            self._last = (at, {})
        if index not in self._last[1]:
            self._last[1][index] = self.configuration(index).evaluate(xh, keys)
        return self._last[1][index]

    def evaluate(self, x, keys) -> np.ndarray:
        """The blended plain simulations' ``keys`` metrics at x."""
        corners, _ = self._corners(x, False)
        xh = self._hw(x)
        return sum(w * self._value(i, xh, keys) for i, w, _ in corners)

    def jacobian(self, x, keys) -> np.ndarray:
        """(K, P + knobs): blended smoothed Jacobians in the hardware variables, neighbour
        differences of the interpolant in the knob coordinates."""
        corners, t = self._corners(x, True)
        xh = self._hw(x)
        P = len(self.variables)
        J = np.zeros((len(keys), P + len(self.knobs)))
        for index, w, upper in corners:
            value = self._value(index, xh, keys)
            if w > 0 and P:
                J[:, :P] += w * self.configuration(index).jacobian(xh, keys)
            for k, (tk, u) in enumerate(zip(t, upper)):
                others = np.prod([tj if uj else 1 - tj for j, (tj, uj) in enumerate(zip(t, upper)) if j != k])
                J[:, P + k] += (1.0 if u else -1.0) * others * value
        return J

    def metrics_batch(self, xs) -> dict:
        """Metrics of many designs, each at its nearest configuration (black-box searches run real
        configurations, one evaluation each)."""
        xs = np.asarray(xs, float)
        P = len(self.variables)
        z = np.round(xs[:, P:]) + self.base
        sizes = np.array([len(k.values) for k in self.knobs])
        z = np.clip(z, 0, sizes - 1).astype(int)
        out: dict = {}
        for index in sorted({tuple(r) for r in z}):
            rows = np.where(np.all(z == np.array(index), axis=1))[0]
            # padded to a power of two: a configuration compiles a few batch shapes, not one per count
            padded = np.concatenate([rows, np.full((1 << int(np.ceil(np.log2(len(rows))))) - len(rows), rows[0])])
            xh = jnp.asarray(xs[padded, :P]) if P else jnp.zeros((len(padded), 1))
            m = self.configuration(index).metrics_batch(xh)
            for key, v in m.items():
                out.setdefault(key, np.zeros(len(xs)))[rows] = np.asarray(v)[:len(rows)]
        return {k: jnp.asarray(v) for k, v in out.items()}

    def rounded(self, x) -> np.ndarray:
        """x with each knob coordinate at its nearest whole value (what ``metrics_batch`` runs)."""
        x = np.array(x, float, copy=True)
        P = len(self.variables)
        lo, hi = np.asarray(self.lower)[P:], np.asarray(self.upper)[P:]
        x[P:] = np.clip(np.round(x[P:]), lo, hi)
        return x

    def describe(self, x) -> str:
        mult = np.exp(np.asarray(x, float)[:len(self.variables)])
        parts = [f"{k} x{v:.3g}" for k, v in zip(self.hardware_names, mult)]
        parts += [f"{k} = {v:.6g}" for k, v in self.values(x).items()]
        return ", ".join(parts) + ("" if self.realisable(x) else " (relaxed)")

    def table(self, points) -> pd.DataFrame:
        """One row per design: hardware multipliers (``NAME_x``), knob values, realisable."""
        points = np.asarray(points, float).reshape(-1, len(self.names))
        P = len(self.variables)
        df = pd.DataFrame(np.exp(points[:, :P]), columns=[f"{n}_x" for n in self.hardware_names])
        for k in self.knobs:
            df[k.name] = [self.values(p)[k.name] for p in points]
        df["realisable"] = [self.realisable(p) for p in points]
        return df


def serving_search(problem: ServingDesignProblem, budget: int = 200, seed: int = 0, method: Callable = gradient_search,
                   relaxed_share: float = 0.5, neighbours: int = 4,
                   progress: Callable[[str], None] | None = None) -> SearchResult:
    """Relax, then round and re-optimise (module doc). ``method`` is a gradient search of
    ``design.search`` / ``design.trust_region`` (it takes ``x0``); ``relaxed_share`` of the budget
    goes to the relaxed search, the rest to at most ``neighbours`` configurations around its best
    design, nearest first, each searched over the hardware variables from the relaxed values."""
    if not 0 < relaxed_share < 1:
        raise ConfigError(f"serving_search: relaxed_share must be in (0, 1), got {relaxed_share}")
    maximise = problem.objective in MAXIMISE
    relaxed = method(problem, budget=int(budget * relaxed_share), seed=seed, progress=progress)
    result = SearchResult(f"{relaxed.method}, relaxed knobs then rounded")
    for i in range(len(relaxed.points)):
        result.add(relaxed.evaluations[i], relaxed.points[i], relaxed.objective[i], relaxed.feasible[i],
                   relaxed.metrics[i], relaxed.realisable[i])
    spent = relaxed.evaluations[-1] if relaxed.evaluations else 0
    # the best relaxed design: feasible first, then by objective (relaxed or not)
    order = sorted(range(len(relaxed.points)), key=lambda i: (not relaxed.feasible[i],
                                                               -relaxed.objective[i] if maximise else relaxed.objective[i]))
    if not order:
        return result
    x_star = relaxed.points[order[0]]
    corners, _ = problem._corners(x_star, True)
    corners = sorted(corners, key=lambda c: -c[1])[:neighbours]
    P = len(problem.variables)
    for n, (index, weight, _) in enumerate(corners):
        share = (budget - spent) // (len(corners) - n)
        if share < 2:
            break
        sub = problem.configuration(index)
        z = np.asarray(index, float) - problem.base
        if P:
            found = method(sub, budget=share, seed=seed, x0=np.asarray(x_star[:P]), progress=progress)
            for i in range(len(found.points)):
                result.add(spent + found.evaluations[i], np.concatenate([found.points[i], z]), found.objective[i],
                           found.feasible[i], found.metrics[i])
            spent += found.evaluations[-1] if found.evaluations else 0
        else:
            keys = [problem.objective] + [c.metric for c in problem.constraints]
            v = sub.evaluate(jnp.zeros(1), keys)
            spent += 1
            result.add(spent, z, float(v[0]), _feasible(problem, v[1:]), dict(zip(keys, v)))
        if progress:
            progress(f"rounded to {problem.describe(np.concatenate([np.asarray(x_star[:P]), z]))}: {spent} evaluations")
    return result
