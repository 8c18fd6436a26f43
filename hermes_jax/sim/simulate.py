"""Run a scenario with the time-stepped JAX simulator and collect its results.

``simulate(scenario)`` is the one entry point for every scenario: single-stage scenarios run every
engine group's scan here (``simulate_engines``), pipelines (stages, shared resources) go to
``hermes_jax.pipeline.run``. It returns a ``Results`` with a per-request DataFrame (every request
appears: finished, unfinished at the horizon, or rejected with its reason), per-replica time
series and a summary. No requests is a valid, empty result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import numpy as np
import pandas as pd

from . import engine as engine_sim
from .accounting import engine_usage, totals
from ..errors import ConfigError
from .budget import check_budget, plan_run
from .build import REJECT_REASONS, EngineGroup, build_group, device_requests, group_config, reject_reasons
from .metrics import summarize
from .progress import ProgressBar
from .scenario import Scenario
from .shapes import bucket, pad_requests, pad_steps, request_bucket
from .state import StepTrace
from .workload import Workload, build_workload


@dataclass
class Results:
    requests: pd.DataFrame
    timeseries: pd.DataFrame
    summary: dict
    extra: dict = field(default_factory=dict)


def request_frame(workload: Workload, scenario: Scenario) -> pd.DataFrame:
    """Columns every simulator fills; times in s from the start of the run."""
    n = len(workload)
    clients = scenario.clients
    names = np.array(workload.client_names, dtype=object)
    user = workload.user if workload.user is not None else np.full(n, -1)
    return pd.DataFrame({
        "request": np.arange(n), "client": names[workload.client],
        "engine": np.array([c.engine for c in clients], dtype=object)[workload.client], "arrival_s": workload.arrival_s,
        "input_tokens": workload.input_tokens, "output_tokens": workload.output_tokens,
        "replica": -1, "admit_s": np.nan, "first_token_s": np.nan, "finish_s": np.nan, "itl_max_s": np.nan,
        "generated": 0,
        "preemptions": 0, "status": "unfinished", "reject_reason": "",
        "slo_ttft_s": np.array([c.slo_ttft_s for c in clients])[workload.client],
        "slo_tpot_s": np.array([c.slo_tpot_s for c in clients])[workload.client], "user": user})


def issued(df: pd.DataFrame, scenario: Scenario) -> pd.DataFrame:
    """Drop closed-loop rounds whose user never sent them before the horizon."""
    return df[df.arrival_s < scenario.simulation.horizon_s].reset_index(drop=True)


def derived_columns(df: pd.DataFrame) -> pd.DataFrame:
    df["queueing_s"] = df.admit_s - df.arrival_s
    df["ttft_s"] = df.first_token_s - df.arrival_s
    df["e2e_s"] = df.finish_s - df.arrival_s
    # Mean time per output token after the first (the mean inter-token latency of the request);
    # itl_max_s is the longest gap between consecutive tokens (stalls behind prefills, preemptions).
    df["tpot_s"] = np.where(df.output_tokens > 1, (df.finish_s - df.first_token_s) / np.maximum(df.output_tokens - 1, 1), 0.0)
    df.loc[df.status != "finished", "tpot_s"] = np.nan
    df["meets_slo"] = (df.status == "finished") & (df.ttft_s <= df.slo_ttft_s) & (df.tpot_s <= df.slo_tpot_s)
    return df


def _group_rows(scenario, workload, entry_name):
    names = [c.name for c in scenario.clients if c.engine == entry_name]
    idx = [workload.client_names.index(n) for n in names]
    return np.flatnonzero(np.isin(workload.client, idx))


def prepare(group: EngineGroup, scenario: Scenario, workload: Workload, rows: np.ndarray, padded: bool = False):
    """Static config and device inputs of one engine group; also the up-front reject reasons.
    ``padded``: requests, steps, queue and arrivals per step rounded up to shape classes (``shapes``),
    so runs of similar size share one compiled program."""
    sim = scenario.simulation
    reasons = reject_reasons(group, workload, np.ones(len(workload), bool))[rows]
    priority = np.array([c.priority for c in scenario.clients])[workload.client[rows]]
    closed, users = {}, 0
    if workload.closed_loop:   # closed-loop links and user ids, renumbered within this group
        local = np.full(len(workload), -1)
        local[rows] = np.arange(len(rows))
        nxt = workload.next_request[rows]
        user = workload.user[rows]
        ids, user_local = np.unique(np.where(user >= 0, user, -1), return_inverse=True)
        user_local = np.where(user >= 0, user_local - int((ids < 0).any()), -1)
        users = int((ids >= 0).sum())
        closed = dict(next_request=np.where(nxt >= 0, local[np.maximum(nxt, 0)], -1), think_s=workload.think_s[rows],
                      user=user_local)
    req, steps = device_requests(workload.arrival_s[rows], workload.input_tokens[rows], workload.output_tokens[rows],
                                 reasons == 0, scenario.dt_s, sim.horizon_s, priority, **closed,
                                 cached=None if workload.cached_tokens is None else workload.cached_tokens[rows])
    per_step = np.diff(np.asarray(req.step_first))
    arrivals, queue = max(int(per_step.max(initial=0)), 1), max(len(rows), 1)
    if padded:
        # at least 8: a pipeline's engine sees arrivals bunched differently by each design upstream
        arrivals, queue = max(1 << (arrivals - 1).bit_length(), 8), request_bucket(queue)
        req = pad_steps(pad_requests(req, queue), bucket(steps))
    cfg = group_config(group, scenario, arrivals, queue=queue, users=users, padded=padded)
    return cfg, req, reasons, steps


def is_pipeline(scenario: Scenario) -> bool:
    """Whether the scenario needs the pipeline runner (stages or shared resources)."""
    return bool(scenario.resources) or any(c.pipeline for c in scenario.clients)


def simulate(scenario: Scenario, workload: Workload | None = None, progress: bool = False,
             reference: bool = False) -> Results:
    """Simulate any scenario; ``reference=True`` uses the exact event-driven reference instead of the
    time-stepped JAX simulator (same Results). The run's size is checked against the scenario's
    budget first (``budget.check_budget``); ``progress`` prints it and draws progress bars."""
    workload = workload if workload is not None else build_workload(scenario)
    plan = plan_run(scenario, requests_per_engine(scenario, workload))
    if progress:
        print(f"plan: {plan.describe()}", flush=True)
    check_budget(plan, scenario)
    if is_pipeline(scenario):
        from ..pipeline.run import simulate_pipeline
        return simulate_pipeline(scenario, workload, reference=reference, progress=progress)
    if reference:
        from .reference import simulate_reference
        return simulate_reference(scenario, workload)
    return simulate_engines(scenario, workload, progress)


def requests_per_engine(scenario: Scenario, workload: Workload) -> dict[str, int]:
    """Requests each engine receives (a pipeline client's counted at the first engine it may use)."""
    counts = np.bincount(workload.client, minlength=len(workload.client_names)) if len(workload) else \
        np.zeros(len(workload.client_names), int)
    out: dict[str, int] = {}
    for c in scenario.clients:
        out[c.engine] = out.get(c.engine, 0) + int(counts[workload.client_names.index(c.name)])
    return out


def simulate_engines(scenario: Scenario, workload: Workload | None = None, progress: bool = False) -> Results:
    """Single-stage scenarios: each client's requests go straight to its engine."""
    if is_pipeline(scenario):
        raise ConfigError(f"{scenario.source}: has pipeline stages or shared resources; use simulate(), which "
                          "runs them")
    workload = workload if workload is not None else build_workload(scenario)
    df = request_frame(workload, scenario)
    series, extra = [], {"deferred_steps": {}, "iterations_per_step": {}, "kv_blocks": {}}
    capability = {}
    dt = scenario.dt_s
    for entry in scenario.engines:
        rows = _group_rows(scenario, workload, entry.name)
        group = build_group(entry)
        capability[entry.name] = (float(group.params.peak(group.spec.compute_dtype)), float(group.params.hbm_bandwidth))
        extra["kv_blocks"][entry.name] = list(group.replica_kv)
        if rows.size == 0:   # an idle engine still draws idle power and costs its rent over the horizon
            series.append(idle_timeseries(entry.name, scenario, group))
            continue
        cfg, req, reasons, steps = prepare(group, scenario, workload, rows, padded=True)
        kv = group.kv_array()
        state, trace = engine_sim.run_segments(cfg, group.replica_params(), req, kv, steps,
                                               progress=ProgressBar(entry.name) if progress else None)
        fill_records(df, rows, state, reasons, dt)
        extra["deferred_steps"][entry.name] = int(state.deferred)
        extra["iterations_per_step"][entry.name] = cfg.iterations
        series.append(timeseries_frame(entry.name, trace, dt, group))
    df = derived_columns(issued(df, scenario))
    ts = pd.concat(series, ignore_index=True) if series else pd.DataFrame()
    extra["capability"] = capability
    summary = summarize(df, ts, scenario, capability)
    summary["resources"] = engine_usage(scenario, ts)
    summary["energy"] = totals(summary["resources"], df.generated.sum())
    return Results(df, ts, summary, extra)


def fill_records(df: pd.DataFrame, rows: np.ndarray, state, reasons: np.ndarray, dt: float) -> None:
    n = len(rows)   # the records may be padded (shapes.pad_requests): keep the real requests
    rec = state.records
    rec = rec._replace(**{k: np.asarray(v)[:n] for k, v in rec._asdict().items() if k != "pending"})

    def when(step, off):
        return np.where(step >= 0, step.astype(np.float64) * dt + off.astype(np.float64), np.nan)

    df.loc[rows, "replica"] = rec.replica
    # closed-loop requests get their arrival when the previous reply comes (never sent: inf)
    df.loc[rows, "arrival_s"] = np.where(rec.arr_step < 2**30 - 1, rec.arr_step * dt + rec.arr_off.astype(np.float64), np.inf)
    df.loc[rows, "admit_s"] = when(rec.admit_step, rec.admit_off)
    df.loc[rows, "first_token_s"] = when(rec.first_step, rec.first_off)
    df.loc[rows, "finish_s"] = when(rec.finish_step, rec.finish_off)
    df.loc[rows, "preemptions"] = rec.preemptions
    df.loc[rows, "itl_max_s"] = np.where(rec.finish_step >= 0, rec.max_itl.astype(np.float64), np.nan)
    generated = rec.generated.copy()
    slots = jax.tree_util.tree_map(np.asarray, state.slots)
    live = slots.req >= 0
    generated[slots.req[live]] = slots.generated[live]
    finished = rec.finish_step >= 0
    generated[finished] = df.output_tokens.to_numpy()[rows][finished]
    df.loc[rows, "generated"] = generated
    status = np.where(finished, "finished", "unfinished").astype(object)
    rejected = rec.rejected | (reasons > 0)
    status[rejected] = "rejected"
    df.loc[rows, "status"] = status
    reason = np.array(REJECT_REASONS, dtype=object)[reasons]
    reason[rec.rejected & (reasons == 0)] = "queue full"
    df.loc[rows, "reject_reason"] = reason


def busy_within_steps(started_s: np.ndarray, dt: float) -> np.ndarray:
    """Busy seconds inside each step (S, R) from the seconds of the iterations *started* in it.

    A replica runs its iterations back to back from its own clock, so work that starts in a step
    and runs past its end occupies the start of the next steps: spill it forward, step by step.
    Each step then holds at most ``dt``; work still running at the horizon is not counted (it is
    outside the run), so utilisation is bounded by 1."""
    started = np.asarray(started_s, np.float64)
    # carry_s = max(carry_{s-1} + started_s - dt, 0) is Lindley's recursion: carry = S - min(0, running min S)
    walk = np.cumsum(started - dt, axis=0)
    carry = walk - np.minimum(np.minimum.accumulate(walk, axis=0), 0.0)
    before = np.concatenate([np.zeros_like(carry[:1]), carry[:-1]])
    return np.clip(before + started - carry, 0.0, dt)


def timeseries_frame(name: str, trace, dt: float, group: EngineGroup) -> pd.DataFrame:
    """One row per step and replica; ``busy`` is the share of the step the replica computes (0-1)."""
    t = jax.tree_util.tree_map(np.asarray, trace)
    steps, replicas = t.batch.shape
    time = np.repeat(np.arange(steps) * dt, replicas)
    busy = busy_within_steps(t.busy_s, dt) / dt
    return pd.DataFrame({"engine": name, "replica": np.tile(np.arange(replicas), steps), "time_s": time,
                         "batch": t.batch.reshape(-1), "kv_used": (t.kv_blocks / np.asarray(group.replica_kv)).reshape(-1),
                         "busy": busy.reshape(-1), "queued": t.queued.reshape(-1),
                         "flop": t.flop.reshape(-1), "bytes": t.bytes.reshape(-1)})


def idle_timeseries(name: str, scenario: Scenario, group: EngineGroup) -> pd.DataFrame:
    """The time series of an engine no request reaches: every step idle."""
    zeros = np.zeros((scenario.steps, group.engine.replicas))
    trace = StepTrace(batch=zeros.astype(np.int32), kv_blocks=zeros.astype(np.int32), busy_s=zeros,
                      queued=zeros.astype(np.int32), flop=zeros, bytes=zeros)
    return timeseries_frame(name, trace, scenario.dt_s, group)
