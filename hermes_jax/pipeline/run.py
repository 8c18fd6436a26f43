"""Run a scenario whose clients have pipelines: every node (shared resource or engine) once, in an
order where every feeder comes first, on the merged hops of every client placed on it.

Each resource sees the merged stream of every stage placed on it, from every client, so clients
contend. A cpu or accelerator pool is ``stations.batch_servers`` (C // threads servers, or one per
device, batching up to ``batch`` queries); a tier or link is ``stations.shared`` (transfers split
its bandwidth), plus the first-byte latency. An engine runs the time-stepped simulator (or the
event-driven reference) on the jobs of every hop placed on it (``pipeline.engines``).
``reference=True`` runs the same composition on the event-driven references (``pipeline.reference``
and ``sim.reference``) to measure the error.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..engine import default_kv_dtype
from ..errors import ConfigError
from ..hardware.catalog import default_catalog, get_hardware
from ..models.config import get_model
from ..sim.accounting import batch_busy_seconds, engine_usage, pool_usage, totals
from ..sim.metrics import summarize
from ..sim.scenario import Scenario
from ..sim.simulate import Results
from ..sim.workload import Workload, build_workload, lengths
from . import reference as events
from .engines import hop_jobs, replies, run_engine
from .parse import added_prompt_tokens
from .plan import HopTemplate, hop_templates, pipeline_of, reasoning_of, route_of
from .spec import Resource, resource_order
from .stages import KVFetch, Stage, prefix_hits
from .stations import table_servers, shared_padded


def resource_params(resource: Resource, dtype=None):
    """Differentiable parameters of a resource's node type; a link's bandwidth and latency go into
    the node's inter-node link fields."""
    overrides = {}
    if resource.kind == "cpu" and resource.cores:
        overrides["cpu_cores"] = float(resource.cores)
    if resource.kind == "link":
        entry = default_catalog().get("link", resource.link, f"resource {resource.name}")
        overrides["inter_link_bandwidth"] = resource.bandwidth_gbps * 1e9 / 8 if resource.bandwidth_gbps else entry["bandwidth"]
        overrides["inter_link_latency"] = resource.latency_s if resource.latency_s >= 0 else entry["latency"]
    overrides.update({k: list(v) if isinstance(v, tuple) else v for k, v in resource.hardware_overrides})
    return get_hardware(resource.hardware, dtype=dtype, **overrides).params


def servers(resource: Resource, stage: Stage, params) -> int:
    if resource.kind == "accelerator":
        return resource.devices
    cores = int(round(float(params.cpu_cores)))
    if stage.threads > cores:
        raise ConfigError(f"stage {stage.kind} on {resource.name!r}: threads = {stage.threads} exceeds the pool's "
                          f"{cores} cores")
    return cores // stage.threads


def transfer_bandwidth_latency(resource: Resource, params):
    if resource.kind == "link":
        return params.inter_link_bandwidth, params.inter_link_latency
    from ..kernels.transfer import tier_index
    i = tier_index(resource.tier)
    return params.tier_bandwidth[i], params.tier_latency[i]


@partial(jax.jit, static_argnums=(0, 1))
def batch_table(stage: Stage, resource: Resource, params):
    """(batch,) seconds of a batch of 1..batch jobs of ``stage`` on ``resource``: one compiled
    program per (stage, resource), not the dozens of small eager ones its roofline terms would
    each lower in every process (0.8 s of a one-shot rag_kv run)."""
    return stage.batch_seconds(resource, params)


def station_times(resource: Resource, stage: Stage, params, release, nbytes=None, reference=False):
    """(start, finish) of the stage's jobs on the resource; jobs of every client that use it at once."""
    release = jnp.asarray(release) if not reference else np.asarray(release, float)
    if resource.kind in ("tier", "link"):
        bandwidth, latency = transfer_bandwidth_latency(resource, params)
        work = nbytes / bandwidth
        if reference:
            finish = events.shared_events(release, np.asarray(work, float), 1.0)
            return release, np.where(np.asarray(nbytes) > 0, finish + float(latency), release)
        finish = shared_padded(release, work, 1.0)
        return release, jnp.where(nbytes > 0, finish + latency, release)
    table = batch_table(stage, resource, params)
    c = servers(resource, stage, params)
    if reference:
        table = np.asarray(table, float)
        return events.batch_servers_events(release, np.ones(len(release)), lambda k, _: table[k - 1], c, stage.batch)
    return table_servers(release, 0.0, table, c, stage.batch)


@dataclasses.dataclass
class _Hop:
    template: HopTemplate
    client: int                       # index into scenario.clients
    rows: np.ndarray                  # requests (workload indices) that take the hop
    ready: np.ndarray | None = None   # s, when each row reaches the hop (NaN: an earlier hop never finished)
    start: np.ndarray | None = None
    finish: np.ndarray | None = None


def simulate_pipeline(scenario: Scenario, workload: Workload | None = None, reference: bool = False,
                      progress: bool = False) -> Results:
    workload = workload or build_workload(scenario)
    if workload.closed_loop:
        raise ConfigError(f"{scenario.source}: closed-loop clients (users) cannot yet share a run with pipelines")
    rng = np.random.default_rng(scenario.simulation.seed + 7919)
    resources = {r.name: r for r in scenario.resources}
    # Stations run in float64: absolute times over hours need it, and they cost little next to engines
    with jax.enable_x64(True):
        params = {name: resource_params(r, jnp.float64) for name, r in resources.items()}
    draws = _draw(scenario, workload, rng)
    hops = [hop for index in range(len(scenario.clients)) for hop in _hops(scenario, workload, index, draws)]
    job_frames, engine_results, usage = [], {}, {}
    for node in resource_order(scenario):
        here = [h for h in hops if h.template.node == node]
        for h in here:
            h.ready = _ready(h, workload.arrival_s)
        if node.startswith("engine:"):
            jobs = _engine_node(scenario, node[len("engine:"):], here, draws, reference, progress)
            job_frames.append(jobs[0])
            engine_results[node[len("engine:"):]] = jobs[1]
        else:
            with jax.enable_x64(True):
                usage[node] = _station_node(scenario, resources[node], params[node], here, draws, reference)
    jobs = pd.concat(job_frames, ignore_index=True)
    df = _requests(scenario, workload, draws, hops, jobs)
    series = [r.timeseries for r in engine_results.values() if len(r.timeseries)]
    ts = pd.concat(series, ignore_index=True) if series else pd.DataFrame()
    capability = {k: v for r in engine_results.values() for k, v in r.extra.get("capability", {}).items()}
    summary = summarize(df, ts, scenario, capability)
    usage = {**engine_usage(scenario, ts), **usage}
    summary["resources"], summary["energy"] = usage, totals(usage, df.generated.sum())
    extra = {"capability": capability, "stages": _stage_records(hops), "jobs": jobs,
             "deferred_steps": {k: v for r in engine_results.values() for k, v in r.extra.get("deferred_steps", {}).items()}}
    return Results(df, ts, summary, extra)


@dataclasses.dataclass
class _Draws:
    """Per-request quantities drawn once per run. Arrays (N,) unless noted."""
    prompt: np.ndarray        # tokens the engine sees: the client's prompt plus retrieved passages
    answer: np.ndarray        # tokens of the answer (the client's output length)
    retrieved: np.ndarray     # tokens added by RAG
    cached: np.ndarray        # prompt tokens whose KV was fetched (kv_fetch)
    thinking: dict            # client index -> (client's rows, samples, rounds) thinking tokens
    local: np.ndarray         # each request's position among its client's rows
    engine: np.ndarray        # (N,) object: the engine of each request's first answer (its KV's model)
    choice: np.ndarray        # index into its route's ``to`` (0 without a route)
    escalations: np.ndarray   # cascade: times the answer is escalated


def _draw(scenario, workload, rng) -> _Draws:
    n = len(workload)
    cached, retrieved, local = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    choice, escalations = np.zeros(n, np.int64), np.zeros(n, np.int64)
    engine = np.empty(n, dtype=object)
    thinking = {}
    for index, client in enumerate(scenario.clients):
        rows = np.flatnonzero(workload.client == workload.client_names.index(client.name))
        local[rows] = np.arange(len(rows))
        pipeline = pipeline_of(client)
        retrieved[rows] = added_prompt_tokens(pipeline)
        route = route_of(pipeline)
        if route:
            choice[rows] = route.choose(workload.input_tokens[rows] + retrieved[rows], rng)
            escalations[rows] = route.escalations(len(rows), rng)
            engine[rows] = np.array(route.to, dtype=object)[choice[rows]]
        else:
            engine[rows] = pipeline[-1].engines()[0]
        for stage in pipeline:
            if isinstance(stage, KVFetch):
                hashes = None if workload.hash_ids is None else [workload.hash_ids[i] for i in rows]
                cached[rows] = prefix_hits(stage, workload.input_tokens[rows], hashes, rng)
        reasoning = reasoning_of(pipeline)
        samples = pipeline[-1].samples
        shape = (len(rows), samples, reasoning.rounds if reasoning else 1)
        thinking[index] = (lengths(reasoning.thinking, int(np.prod(shape)), rng).reshape(shape) if reasoning
                           else np.zeros(shape, np.int64))
    return _Draws(workload.input_tokens + retrieved, workload.output_tokens.copy(), retrieved, cached, thinking,
                  local, engine, choice, escalations)


def _hops(scenario, workload, index, draws) -> list[_Hop]:
    client = scenario.clients[index]
    rows = np.flatnonzero(workload.client == workload.client_names.index(client.name))
    chosen, escalations = draws.choice[rows], draws.escalations[rows]
    more = draws.answer[rows] + draws.thinking[index].sum(axis=(1, 2)) > 1
    hops = []
    for t in hop_templates(client):
        take = np.ones(len(rows), bool)
        if t.choice >= 0:
            take = chosen == t.choice
        if t.attempt > 0:
            take = escalations >= t.attempt
        if t.role in ("transfer", "decode"):
            take = more
        hops.append(_Hop(t, index, rows[take]))
    for h in hops:   # templates name earlier hops by index within the client; point at the hops themselves
        h.template = dataclasses.replace(h.template, after=tuple(hops[a] for a in h.template.after))
    return hops


def _ready(hop: _Hop, arrival) -> np.ndarray:
    """s per row: the finish of the row's previous hop (one of ``after``), or its arrival."""
    if not hop.template.after:
        return arrival[hop.rows].astype(float)
    when = np.full(len(arrival), np.nan)
    for a in hop.template.after:
        when[a.rows] = a.finish
    return when[hop.rows]


def _engine_node(scenario, name, here, draws, reference, progress):
    frames = []
    for k, h in enumerate(here):
        client = scenario.clients[h.client]
        jobs = hop_jobs(h.template, h.rows, h.ready, draws.prompt, draws.answer, draws.cached,
                        draws.thinking[h.client][draws.local[h.rows]], reasoning_of(pipeline_of(client)))
        jobs["hop_id"] = k
        frames.append(jobs.assign(attempt=h.template.attempt, role=h.template.role, engine=name))
    jobs = pd.concat(frames, ignore_index=True)
    chained = jobs.chain >= 0   # chains are numbered within a hop; make them unique on the engine
    jobs.loc[chained, "chain"] = jobs[chained].groupby(["hop_id", "chain"]).ngroup()
    client_of = np.zeros(len(draws.prompt), np.int64)
    for h in here:
        client_of[h.rows] = h.client
    jobs, result = run_engine(scenario, name, jobs, client_of, reference, progress)
    for k, h in enumerate(here):   # a hop's span per request: its first admission to its last finish
        part = jobs[jobs.hop_id == k]
        start = part.groupby("request").admit_s.min()
        finish = part.groupby("request").finish_s.max().where(~part.finish_s.isna().groupby(part.request).any())
        h.start = start.reindex(h.rows).to_numpy(float)
        h.finish = finish.reindex(h.rows).to_numpy(float)
    return jobs.drop(columns="hop_id"), result
def _station_node(scenario, resource, params, here, draws, reference) -> dict:
    """Every hop placed on one shared resource, simulated together (clients contend); fills each
    hop's start and finish and returns the resource's usage. Rows whose ready time is NaN (an
    unfinished earlier hop) do not come."""
    live = [np.isfinite(h.ready) for h in here]
    release = np.concatenate([h.ready[m] for h, m in zip(here, live)])
    stages = {h.template.stage for h in here}
    first = here[0].template.stage
    nbytes = None
    if resource.kind in ("tier", "link"):
        nbytes = np.concatenate([_transfer_bytes(scenario, h, draws)[m] for h, m in zip(here, live)])
        start, finish = station_times(resource, first, params, release, nbytes, reference)
    elif len(stages) == 1:
        start, finish = station_times(resource, first, params, release, None, reference)
    else:   # different single-job stages on one pool (checked at load): each job its own service time
        per_job = np.concatenate([np.full(int(m.sum()), float(batch_table(h.template.stage, resource, params)[0]))
                                  for h, m in zip(here, live)])
        if reference:
            start, finish = events.batch_servers_events(release, per_job, lambda _, total: total,
                                                        servers(resource, first, params), 1)
        else:
            start, finish = table_servers(release, per_job, np.zeros(1), servers(resource, first, params), 1)
    start, finish = np.asarray(start, float), np.asarray(finish, float)
    offset = 0
    for h, m in zip(here, live):
        k = int(m.sum())
        h.start, h.finish = np.full(len(h.rows), np.nan), np.full(len(h.rows), np.nan)
        h.start[m], h.finish[m] = start[offset:offset + k], finish[offset:offset + k]
        offset += k
    horizon = scenario.simulation.horizon_s
    if nbytes is not None:
        bandwidth = float(transfer_bandwidth_latency(resource, params)[0])
        moved = float(np.sum(np.where(start < horizon, nbytes, 0.0)) / bandwidth)
        return pool_usage(resource, params, 1, 0.0, moved, horizon)
    count = servers(resource, first, params)
    return pool_usage(resource, params, count, batch_busy_seconds(start, finish, first.batch, horizon), 0.0, horizon)


def _transfer_bytes(scenario, hop, draws) -> np.ndarray:
    """Bytes a tier or link hop moves per row: a fetched prefix, or a disaggregated prompt's KV."""
    def kv_bytes(name):   # the serving engine's model and KV dtype
        engine = scenario.engine(name)
        return get_model(engine.model).kv_bytes_per_token(engine.kv_dtype or default_kv_dtype(engine.dtype))
    per_engine = {name: kv_bytes(name) for name in set(draws.engine[hop.rows])}
    per_token = np.array([per_engine[name] for name in draws.engine[hop.rows]], float)
    if hop.template.role == "transfer":
        return draws.prompt[hop.rows] * per_token
    return draws.cached[hop.rows] * per_token / hop.template.stage.compression


def _requests(scenario, workload, draws, hops, jobs) -> pd.DataFrame:
    n = len(workload)
    reply = replies(jobs, n)
    clients = scenario.clients
    engine_arrival = np.full(n, np.nan)
    engine_name = np.array([c.engine for c in clients], dtype=object)[workload.client]
    for h in hops:   # hop order is pipeline order: later hops (escalations) overwrite
        if h.template.role in ("whole", "prefill"):
            if h.template.attempt == 0:
                engine_arrival[h.rows] = h.ready
            engine_name[h.rows] = h.template.engine
        if h.template.role == "decode":
            engine_name[h.rows] = f"{h.template.stage.prefill_engine}>{h.template.engine}"
    thinking = np.zeros(n, np.int64)
    for index, t in draws.thinking.items():
        rows = np.flatnonzero(workload.client == workload.client_names.index(clients[index].name))
        thinking[rows] = t.sum(axis=(1, 2))
    df = pd.DataFrame({
        "request": np.arange(n), "client": np.array(workload.client_names, dtype=object)[workload.client],
        "engine": engine_name, "arrival_s": workload.arrival_s, "engine_arrival_s": engine_arrival,
        "input_tokens": draws.prompt, "output_tokens": reply.job_output_tokens.fillna(0).astype(np.int64),
        "answer_tokens": draws.answer, "retrieved_tokens": draws.retrieved, "cached_tokens": draws.cached,
        "thinking_tokens": thinking})
    for col in ("replica", "admit_s", "first_token_s", "finish_s", "itl_max_s", "generated", "preemptions", "status",
                "reject_reason", "tpot_s"):
        df[col] = reply[col].to_numpy()
    df["status"] = df.status.fillna("unfinished")
    df["reject_reason"] = df.reject_reason.fillna("")
    df["generated"] = df.generated.fillna(0).astype(np.int64)
    df["preemptions"] = df.preemptions.fillna(0).astype(np.int64)
    df["replica"] = df.replica.fillna(-1).astype(np.int64)
    df["slo_ttft_s"] = np.array([c.slo_ttft_s for c in clients])[workload.client]
    df["slo_tpot_s"] = np.array([c.slo_tpot_s for c in clients])[workload.client]
    df["user"] = -1
    # user-visible latencies count every stage from the client's arrival
    df["queueing_s"] = df.admit_s - df.engine_arrival_s
    df["ttft_s"] = df.first_token_s - df.arrival_s
    df["e2e_s"] = df.finish_s - df.arrival_s
    df.loc[df.status != "finished", "tpot_s"] = np.nan
    df["meets_slo"] = (df.status == "finished") & (df.ttft_s <= df.slo_ttft_s) & (df.tpot_s <= df.slo_tpot_s)
    return df


def _stage_records(hops) -> pd.DataFrame:
    """One row per request and hop: when it was ready, started and finished (s)."""
    frames = []
    for index, h in enumerate(hops):
        frames.append(pd.DataFrame({"request": h.rows, "hop": index, "stage": h.template.label,
                                    "resource": h.template.node, "ready_s": h.ready, "start_s": h.start,
                                    "finish_s": h.finish}))
    stages = pd.concat(frames, ignore_index=True)
    return stages.sort_values(["request", "hop"], kind="stable").reset_index(drop=True)


__all__ = ["simulate_pipeline", "station_times", "resource_params"]
