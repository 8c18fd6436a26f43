"""Smoothed slopes of a pipeline scenario's metrics with respect to hardware parameters of its
engines and resources (CPU pools, accelerators, tiers, links).

A pipeline run composes stations on the host between compiled engine runs, so it has no JAX
derivative; the slope a fit or a design follows is measured the way ``sim.smoothing.Smoothed``
measures it for one engine: forward runs at antithetic log-shifts of the parameters (the estimator's
design: each parameter at each of its ``scales``), the same workload for every run (common random
numbers), and the least-squares slope of the half differences. Cost: 1 + 2 x pairs runs (19 for 3
parameters with the default 3 scales). Metrics are the ``DifferentiableSim`` definitions
(``sim.differentiable.frame_summaries``) over every finished request.

Assumption (as for ``Smoothed``): at the scale of the shifts the metric is linear plus the jitter of
decision flips, which the pairs average; ``benchmarks/pipeline_gradient_check.py`` measures the
slopes against the exact event-driven pipeline reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..hardware.params import FIELDS
from ..sim.differentiable import frame_summaries
from ..sim.smoothing import Smoothed, _lanes


@dataclass(frozen=True)
class Knob:
    """One hardware parameter of one engine or resource of a scenario; ``index`` picks one entry of
    a vector parameter (``tier_bandwidth[1]``: the CXL tier), else the whole parameter scales."""

    table: str          # "engine" or "resource"
    name: str           # the engine's or resource's name in the scenario
    field: str          # a hardware parameter (hardware.params.FIELDS)
    index: int | None = None

    def __post_init__(self):
        if self.table not in ("engine", "resource"):
            raise ConfigError(f"Knob.table: 'engine' or 'resource', got {self.table!r}")
        if self.field not in FIELDS:
            raise ConfigError(f"Knob.field: unknown hardware parameter {self.field!r}; known: {', '.join(FIELDS)}")
        shape = FIELDS[self.field][0]
        if self.index is not None and not (shape and 0 <= self.index < shape[0]):
            raise ConfigError(f"Knob {self.label}: index {self.index} outside {self.field}'s shape {shape}")

    @classmethod
    def parse(cls, label: str) -> "Knob":
        """The knob a label names: ``engine.NAME.FIELD``, ``resource.NAME.FIELD`` or with an entry,
        ``resource.cxl.tier_bandwidth[1]`` (the form ``label`` writes)."""
        table, _, rest = label.partition(".")
        name, _, field = rest.rpartition(".")
        index = None
        if field.endswith("]") and "[" in field:
            field, _, entry = field[:-1].partition("[")
            try:
                index = int(entry)
            except ValueError:
                raise ConfigError(f"knob {label!r}: entry [{entry}] is not an integer") from None
        if table not in ("engine", "resource") or not name or not field:
            raise ConfigError(f"knob {label!r}: expected engine.NAME.FIELD or resource.NAME.FIELD[INDEX], "
                              "e.g. resource.search-cpu.cpu_cores or engine.llm.hbm_bandwidth")
        return cls(table, name, field, index)

    @property
    def label(self) -> str:
        entry = "" if self.index is None else f"[{self.index}]"
        return f"{self.table}.{self.name}.{self.field}{entry}"

    def value(self, scenario) -> np.ndarray:
        """The parameter's natural value in ``scenario`` (catalog, stack and overrides applied)."""
        return np.asarray(_params(scenario, self).natural()[self.field], np.float64)

    def scaled(self, scenario, log_shift: float, base: np.ndarray | None = None):
        """``scenario`` with this parameter multiplied by exp(``log_shift``) (its entry, with ``index``),
        from ``base`` (its value in ``scenario``, looked up when not given)."""
        value = np.array(self.value(scenario) if base is None else base, np.float64)
        if self.index is None:
            value = value * np.exp(log_shift)
        else:
            value[self.index] *= np.exp(log_shift)
        setting = value.tolist() if value.ndim else float(value)
        if self.table == "engine":
            entries = [dataclasses.replace(e, hardware_overrides={**e.hardware_overrides, self.field: setting})
                       if e.name == self.name else e for e in scenario.engines]
            return dataclasses.replace(scenario, engines=tuple(entries))
        stored = tuple(setting) if isinstance(setting, list) else setting
        resources = [dataclasses.replace(r, hardware_overrides=tuple(sorted(
            {**dict(r.hardware_overrides), self.field: stored}.items()))) if r.name == self.name else r
            for r in scenario.resources]
        return dataclasses.replace(scenario, resources=tuple(resources))


def _params(scenario, knob: Knob):
    if knob.table == "engine":
        from ..sim.build import build_group
        entries = [e for e in scenario.engines if e.name == knob.name]
        if not entries:
            raise ConfigError(f"{scenario.source}: no engine {knob.name!r} (knob {knob.label}); engines: "
                              f"{', '.join(e.name for e in scenario.engines)}")
        return build_group(entries[0]).params
    from .run import resource_params
    resources = [r for r in scenario.resources if r.name == knob.name]
    if not resources:
        raise ConfigError(f"{scenario.source}: no resource {knob.name!r} (knob {knob.label}); resources: "
                          f"{', '.join(r.name for r in scenario.resources) or 'none'}")
    return resource_params(resources[0])


@dataclass
class Slopes:
    """Metrics at the scenario's values and d metric / d ln knob (metric -> knob label -> slope)."""

    values: dict[str, float]
    slopes: dict[str, dict[str, float]]
    runs: int                       # forward simulations it took


def smoothed_slopes(scenario, knobs, estimator: Smoothed | None = None, workload=None, reference: bool = False
                    ) -> Slopes:
    """Smoothed slopes of every ``frame_summaries`` metric over ``knobs`` (see the module docstring).
    ``reference=True`` runs the exact event-driven reference instead of the time-stepped simulator."""
    from ..sim.simulate import simulate
    from ..sim.workload import build_workload

    knobs = list(knobs)
    if not knobs:
        raise ConfigError("smoothed_slopes: give at least one Knob")
    estimator = estimator or Smoothed()
    workload = workload if workload is not None else build_workload(scenario)
    shifts = estimator.design(len(knobs))                  # (R, P)
    base = [knob.value(scenario) for knob in knobs]        # looked up once, not per run
    runs = []
    for row in _lanes(shifts):
        moved = scenario
        for knob, value, d in zip(knobs, base, row):
            if d:
                moved = knob.scaled(moved, float(d), value)
        runs.append(frame_summaries(simulate(moved, workload, reference=reference).requests))
    g = lane_slopes(runs, shifts)
    slopes = {metric: {k.label: float(x) for k, x in zip(knobs, row)} for metric, row in g.items()}
    return Slopes(values=runs[0], slopes=slopes, runs=len(runs))


def lane_slopes(runs: list[dict], shifts: np.ndarray) -> dict[str, np.ndarray]:
    """metric -> (P,) least-squares slopes from runs at ``_lanes(shifts)`` (the base, the + sides,
    the - sides): the half differences of each antithetic pair regressed on its shift."""
    R = shifts.shape[0]
    solve = np.linalg.pinv(shifts)                         # (P, R)
    out = {}
    for metric in runs[0]:
        v = np.array([r[metric] for r in runs], np.float64)
        out[metric] = solve @ ((v[1:R + 1] - v[R + 1:]) / 2)
    return out
