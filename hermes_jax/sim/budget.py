"""What a run will cost before it starts: steps, requests and memory, against a budget.

A tiny ``dt_s`` or a huge rate makes a scan of millions of steps or a state of gigabytes; the
simulator says so and refuses, naming the setting to change, instead of running for an hour or
being killed. Sizes are counted from the state's fields (``state.py``): per request 16 int32/float32
records and 11 request fields, per replica a queue of 2 int32 per request, per step and replica
6 trace values on the device and ~10 columns of 8 bytes in the host's time series, and ~30 columns
of 8 bytes per request in the host's request table.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

RECORD_BYTES = 16 * 4     # Records: 16 fields of 4 bytes per request
REQUEST_BYTES = 11 * 4    # Requests: 11 fields of 4 bytes per request
QUEUE_BYTES = 2 * 4       # SimState.queue and queue_done, per replica and request
TRACE_BYTES = 6 * 4       # StepTrace per step and replica (device)
SERIES_BYTES = 10 * 8     # timeseries.csv columns per step and replica (host)
TABLE_BYTES = 30 * 8      # requests table columns per request (host)


@dataclass(frozen=True)
class RunPlan:
    """The size of one run. Bytes are estimates of the largest arrays, not a measurement."""

    steps: int                # scan steps (horizon / dt)
    requests: int             # requests of the workload
    replica_steps: int        # steps x replicas, summed over engines
    device_bytes: int         # B, simulator state and per-step trace
    host_bytes: int           # B, result tables

    @property
    def total_bytes(self) -> int:
        return self.device_bytes + self.host_bytes

    def describe(self) -> str:
        return (f"{self.steps:,} steps, {self.requests:,} requests, memory ~{_size(self.total_bytes)} "
                f"(state and trace {_size(self.device_bytes)}, result tables {_size(self.host_bytes)})")


def _size(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{int(b)} B"


def plan_run(scenario, requests_per_engine: dict[str, int]) -> RunPlan:
    """``requests_per_engine``: engine name -> requests it receives."""
    steps = scenario.steps
    device = host = replica_steps = 0
    for engine in scenario.engines:
        n = requests_per_engine.get(engine.name, 0)
        r = engine.replicas
        replica_steps += steps * r
        device += n * (RECORD_BYTES + REQUEST_BYTES + r * QUEUE_BYTES) + steps * (r * TRACE_BYTES + 4)
        host += steps * r * SERIES_BYTES
    requests = sum(requests_per_engine.values())
    host += requests * TABLE_BYTES
    return RunPlan(steps=steps, requests=requests, replica_steps=replica_steps, device_bytes=int(device),
                   host_bytes=int(host))


def check_budget(plan: RunPlan, scenario) -> None:
    """Refuse a run above the scenario's step or memory budget, saying which setting to change."""
    sim = scenario.simulation
    if plan.steps > sim.max_steps:
        raise ConfigError(f"{scenario.source}: [simulation] {plan.steps:,} steps of dt_s = {scenario.dt_s:g} s over "
                          f"horizon_s = {sim.horizon_s:g} s exceed max_steps = {sim.max_steps:,}; use a larger dt_s "
                          "(or leave it out: automatic), a shorter horizon_s, or raise max_steps")
    budget = sim.memory_budget_gb * 1e9
    if plan.total_bytes > budget:
        raise ConfigError(f"{scenario.source}: [simulation] the run needs {plan.describe()}, more than "
                          f"memory_budget_gb = {sim.memory_budget_gb:g}; use fewer "
                          "requests (max_requests, a lower rate or a shorter horizon_s), a larger dt_s, or raise "
                          "memory_budget_gb")


PER_REQUEST_BYTES = RECORD_BYTES + REQUEST_BYTES + QUEUE_BYTES + TABLE_BYTES + 6 * 8   # + the workload's arrays


def check_expected_requests(scenario, client, expected: float) -> None:
    """Refuse, before drawing them, more requests than the memory budget holds."""
    sim = scenario.simulation
    need = expected * PER_REQUEST_BYTES
    if need > sim.memory_budget_gb * 1e9:
        raise ConfigError(f"{scenario.source}: [[client]] {client.name!r}: about {expected:,.0f} requests over "
                          f"horizon_s = {sim.horizon_s:g} s would need ~{_size(need)}, more than memory_budget_gb = "
                          f"{sim.memory_budget_gb:g}; lower the rate, set max_requests, shorten horizon_s or raise "
                          "memory_budget_gb")
