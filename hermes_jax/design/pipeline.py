"""A design problem over a whole pipeline scenario: which multipliers of its engines' and resources'
hardware parameters (GPU peak FLOP/s and HBM, CPU cores for retrieval, accelerators for reranking,
...) serve every client at the least cost within SLOs.

Variables are ``Variable``s named by ``pipeline.slopes.Knob`` labels (``engine.llm.hbm_bandwidth``,
``resource.search-cpu.cpu_cores``), natural logs of multipliers of the scenario's values. A design is
evaluated by one plain pipeline run (``sim.simulate``) on the same workload and stage draws for every
design (common random numbers); its gradient is the smoothed slope of ``pipeline.slopes`` (one
forward run per lane, ``1 + 2 x pairs`` runs), since a pipeline composes stations and engine runs on
the host and has no JAX derivative. The search methods of ``design.search`` take it as they take a
``DesignProblem``.

Cost over the horizon (an assumption, stated so it can be replaced):
* each engine: replicas x tp x pp devices at ``CostModel.price_per_hour`` of its (designed) parameters;
* each accelerator pool: its devices, priced the same way;
* each CPU pool: its cores, rounded as the simulator rounds them, at the host CPU's catalog
  ``price_per_core_hour`` (``hardware/data/cpus.toml``, each with its source);
* tiers and links: free (no price model; a knob on one is refused for a price objective).
Energy uses the cost model's power for engines and accelerators (idle all along, the rest while
busy) and the simulator's CPU accounting. Metrics per client (``CLIENT/ttft_p99_s``) are there for
per-client SLOs. CPU cores are whole: a design's cores are rounded in the run and in the price, so
its metrics are steps in the multiplier; the smoothed slope (a log-shift of 0.1 spans at least one
core from 5 cores up) follows the trend across the steps.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from ..pipeline.slopes import Knob, lane_slopes
from ..sim.differentiable import frame_summaries
from ..sim.smoothing import Smoothed, _lanes
from .cost import CostModel, catalog_cost_model
from .problem import Constraint, ObjectiveAndConstraints, Variable, check_objective_and_variables

PRICED = ("peak_flops", "hbm_bandwidth", "hbm_capacity")   # the cost model's features
PRICE_OBJECTIVES = ("usd_per_mtok", "cost_usd", "tokens_per_usd")
QUANTILES = (0.5, 0.9, 0.99)


class PipelineDesignProblem(ObjectiveAndConstraints):
    def __init__(self, scenario, variables: Sequence[Variable], objective: str = "usd_per_mtok",
                 constraints: Sequence[Constraint] = (), cost_model: CostModel | None = None, penalty: float = 30.0,
                 estimator: Smoothed | None = None, workload=None):
        from ..sim.workload import build_workload
        check_objective_and_variables(objective, variables)
        self.scenario, self.variables, self.objective = scenario, tuple(variables), objective
        self.names = tuple(v.name for v in self.variables)
        self.knobs = [Knob.parse(v.name) for v in self.variables]
        self.base = [knob.value(scenario) for knob in self.knobs]
        self.cost_model = _PipelineCost(cost_model or catalog_cost_model())
        if objective in PRICE_OBJECTIVES:
            for knob in self.knobs:
                if not self.cost_model.prices(scenario, knob):
                    raise ConfigError(f"design variable {knob.label}: no price model for it, so a price objective "
                                      f"({objective}) would treat it as free; priced: {', '.join(PRICED)} of engines "
                                      "and accelerator pools, cpu_cores of CPU pools")
        self.penalty = penalty
        self.estimator = estimator or Smoothed(scales=(0.1,))
        self.workload = workload if workload is not None else build_workload(scenario)
        self.lower = jnp.log(jnp.asarray([v.low for v in self.variables]))
        self.upper = jnp.log(jnp.asarray([v.high for v in self.variables]))
        self._shifts = self.estimator.design(len(self.names))
        self.lanes_per_gradient = 1 + 2 * self._shifts.shape[0]
        self._cache: dict = {}
        constraints = list(constraints)
        start = self._run(np.zeros(len(self.names)))
        for c in constraints:
            if c.metric not in start:
                raise ConfigError(f"design constraint on {c.metric}: unknown metric; known: {', '.join(sorted(start))}")
        if not any(c.metric == "finished_share" for c in constraints):
            # as DesignProblem: a design that leaves requests unfinished would look fast
            constraints.append(Constraint("finished_share", lower=max(0.99 * start["finished_share"], 1e-3)))
        self.constraints = tuple(constraints)

    # --- one design -----------------------------------------------------------------------------
    def moved(self, x):
        """The scenario of design x (each knob's value times exp(x_i))."""
        scenario = self.scenario
        for knob, base, d in zip(self.knobs, self.base, np.asarray(x, np.float64)):
            if d:
                scenario = knob.scaled(scenario, float(d), base)
        return scenario

    def _run(self, x) -> dict:
        from ..sim.simulate import simulate
        key = tuple(np.round(np.asarray(x, np.float64), 12))
        if key not in self._cache:
            scenario = self.moved(x)
            res = simulate(scenario, self.workload)
            self._cache[key] = self._metrics(scenario, res)
        return self._cache[key]

    def _metrics(self, scenario, res) -> dict:
        df = res.requests
        horizon = scenario.simulation.horizon_s
        m = frame_summaries(df, quantiles=QUANTILES)
        done = (df.status == "finished").to_numpy()
        issued = max(int((df.arrival_s < horizon).sum()), 1)
        m["finished_share"] = float(done.sum()) / issued
        m["finished_tokens"] = float(df.output_tokens.to_numpy()[done].sum())
        m["goodput_rps"] = float(df.meets_slo.sum()) / horizon
        m["slo_attainment"] = float(df.meets_slo.sum()) / issued
        for client in scenario.clients:   # every client's, even a lone one's (its SLO names it)
            for k, v in frame_summaries(df[df.client == client.name], quantiles=QUANTILES).items():
                m[f"{client.name}/{k}"] = v
        usage = res.summary["resources"]
        m.update(self.cost_model.totals(scenario, usage, horizon))
        tokens = max(m["finished_tokens"], 1.0)
        m["usd_per_mtok"] = m["cost_usd"] / tokens * 1e6
        m["tokens_per_usd"] = tokens / m["cost_usd"] if m["cost_usd"] > 0 else float("inf")
        m["j_per_token"] = m["energy_j"] / tokens
        return m

    # --- the interface of design.search ---------------------------------------------------------
    def metrics_batch(self, xs) -> dict:
        """Metrics of many designs (rows of xs), one plain run each (cached by design)."""
        rows = [self._run(x) for x in np.asarray(xs, np.float64)]
        return {k: np.array([r[k] for r in rows]) for k in rows[0]}

    def evaluate(self, x, keys) -> np.ndarray:
        m = self._run(x)
        return np.array([m[k] for k in keys], np.float64)

    def jacobian(self, x, keys) -> np.ndarray:
        """(K, P) smoothed slopes of ``keys`` at x (``lanes_per_gradient`` runs; the base is x's)."""
        x = np.asarray(x, np.float64)
        runs = [self._run(x + row) for row in _lanes(self._shifts)]
        g = lane_slopes([{k: r[k] for k in keys} for r in runs], self._shifts)
        return np.stack([g[k] for k in keys])

    def describe(self, x) -> str:
        parts = []
        for knob, base, d in zip(self.knobs, self.base, np.asarray(x, np.float64)):
            text = f"{knob.label} x{np.exp(d):.3g}"
            if knob.field == "cpu_cores":
                text += f" ({int(round(float(base) * np.exp(d)))} cores)"
            parts.append(text)
        return ", ".join(parts)


class _PipelineCost:
    """Prices and power of every engine and resource of a pipeline scenario (module docstring)."""

    def __init__(self, devices: CostModel):
        self.devices = devices

    def prices(self, scenario, knob: Knob) -> bool:
        """Whether ``knob`` moves a price of this model."""
        if knob.table == "engine":
            return knob.field in PRICED
        resource = next(r for r in scenario.resources if r.name == knob.name)
        if resource.kind == "accelerator":
            return knob.field in PRICED
        if resource.kind == "cpu":
            return knob.field == "cpu_cores" and _core_price(resource) > 0
        return False

    def totals(self, scenario, usage: dict, horizon: float) -> dict:
        """cost_usd and energy_j over the horizon (and each node's $ as cost_usd/NODE)."""
        from ..pipeline.run import resource_params
        from ..sim.build import build_group
        from ..sim.accounting import device_energy_j
        out, cost, energy = {}, 0.0, 0.0
        for entry in scenario.engines:
            log = build_group(entry).params.log
            devices = entry.tp * entry.pp
            c = devices * entry.replicas * float(self.devices.price_per_hour(log)) * horizon / 3600.0
            busy = usage[entry.name]["utilization"] * entry.replicas * horizon
            energy += float(device_energy_j(devices, float(self.devices.power_idle_w(log)),
                                            float(self.devices.power_max_w(log)), horizon, busy, entry.replicas))
            out[f"cost_usd/{entry.name}"], cost = c, cost + c
        for resource in scenario.resources:
            u = usage[resource.name]
            if resource.kind == "accelerator":
                log = resource_params(resource).log
                c = resource.devices * float(self.devices.price_per_hour(log)) * horizon / 3600.0
                idle, peak = float(self.devices.power_idle_w(log)), float(self.devices.power_max_w(log))
                energy += resource.devices * idle * horizon + (peak - idle) * u["utilization"] * resource.devices * horizon
            elif resource.kind == "cpu":   # the simulator's accounting: whole cores at the catalog price
                c = u["cost_usd"]
                energy += u["energy_j"]
            else:
                continue
            out[f"cost_usd/{resource.name}"], cost = c, cost + c
        out["cost_usd"], out["energy_j"] = cost, energy
        return out

    def describe(self) -> list[str]:
        return self.devices.describe() + [
            "CPU pools: cores x the host CPU's price_per_core_hour (hardware/data/cpus.toml, with sources); "
            "tiers and links: not priced"]


def _core_price(resource) -> float:
    from ..hardware.catalog import default_catalog, get_hardware
    cpu = default_catalog().get("cpu", get_hardware(resource.hardware).spec.host_cpu, f"resource {resource.name}")
    return float(cpu.get("price_per_core_hour", 0.0))
