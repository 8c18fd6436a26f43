"""Run a scenario whose clients have pipelines: the shared resources first (each once, in an order
where every feeder comes first), then the engines on the requests the stages produced.

Each resource sees the merged stream of every stage placed on it, from every client, so clients
contend. A cpu or accelerator pool is ``stations.batch_servers`` (C // threads servers, or one per
device, batching up to ``batch`` queries); a tier or link is ``stations.shared`` (fetches split its
bandwidth), plus the first-byte latency. ``reference=True`` runs the same composition on the
event-driven references (``pipeline.reference`` and ``sim.reference``) to measure the error.
In this version the generate stage is last: nothing runs after the engine.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..engine import KV_DTYPES
from ..errors import ConfigError
from ..hardware.catalog import default_catalog, get_hardware
from ..models.config import get_model
from ..sim.metrics import summarize
from ..sim.scenario import Scenario
from ..sim.simulate import Results, simulate
from ..sim.workload import Workload, build_workload, lengths
from . import reference as events
from .spec import Resource, resource_order
from .stages import Generate, KVFetch, Reasoning, Stage, added_prompt_tokens, prefix_hits
from .stations import batch_servers, shared


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


def station_times(resource: Resource, stage: Stage, params, release, nbytes=None, reference=False):
    """(start, finish) of the stage's jobs on the resource; jobs of every client that use it at once."""
    release = jnp.asarray(release) if not reference else np.asarray(release, float)
    if resource.kind in ("tier", "link"):
        bandwidth, latency = transfer_bandwidth_latency(resource, params)
        work = nbytes / bandwidth
        if reference:
            finish = events.shared_events(release, np.asarray(work, float), 1.0)
            return release, np.where(np.asarray(nbytes) > 0, finish + float(latency), release)
        finish = shared(release, work, 1.0)
        return release, jnp.where(nbytes > 0, finish + latency, release)
    table = stage.batch_seconds(resource, params)
    c = servers(resource, stage, params)
    if reference:
        table = np.asarray(table, float)
        return events.batch_servers_events(release, np.ones(len(release)), lambda k, _: table[k - 1], c, stage.batch)
    return batch_servers(release, jnp.ones_like(release), lambda k, _: table[k - 1], c, stage.batch)


@dataclasses.dataclass
class _Client:
    rows: np.ndarray                 # indices into the workload
    pipeline: tuple
    done: dict                       # stage index -> (start, finish) arrays over rows


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
    n = len(workload)
    cached = np.zeros(n, np.int64)
    thinking = np.zeros(n, np.int64)
    retrieved = np.zeros(n, np.int64)
    clients: dict[str, _Client] = {}
    for client in scenario.clients:
        rows = np.flatnonzero(workload.client == workload.client_names.index(client.name))
        pipeline = client.pipeline or (Generate(engine=client.engine),)
        clients[client.name] = _Client(rows, pipeline, {})
        retrieved[rows] = added_prompt_tokens(pipeline)
        for stage in pipeline:
            if isinstance(stage, KVFetch):
                hashes = None if workload.hash_ids is None else [workload.hash_ids[i] for i in rows]
                cached[rows] = prefix_hits(stage, workload.input_tokens[rows], hashes, rng)
            if isinstance(stage, Reasoning):
                thinking[rows] = lengths(stage.thinking, len(rows), rng)

    def ready(c: _Client, k: int):
        """When a request reaches stage k: the previous resource stage's finish (or its arrival)."""
        for j in range(k - 1, -1, -1):
            if c.pipeline[j].node:
                return c.done[j][1]
        return workload.arrival_s[c.rows]

    records: list[pd.DataFrame] = []
    with jax.enable_x64(True):
        _run_resources(scenario, resources, params, clients, ready, cached, reference, records)

    engine_arrival = np.zeros(n)
    for c in clients.values():
        k = next(k for k, s in enumerate(c.pipeline) if isinstance(s, Generate))
        engine_arrival[c.rows] = ready(c, k)
    order = np.argsort(engine_arrival, kind="stable")
    staged = Workload(arrival_s=engine_arrival[order], input_tokens=(workload.input_tokens + retrieved)[order],
                      output_tokens=(workload.output_tokens + thinking)[order], client=workload.client[order],
                      client_names=workload.client_names, cached_tokens=cached[order])
    if reference:
        from ..sim.reference import simulate_reference
        result = simulate_reference(scenario, staged)
    else:
        result = simulate(scenario, staged, progress=progress)
    df = result.requests.copy()
    df["request"] = order
    df = df.sort_values("request").reset_index(drop=True)
    df["engine_arrival_s"] = engine_arrival   # float64 (the engine's record keeps a float32 offset)
    df["arrival_s"] = workload.arrival_s
    df["retrieved_tokens"], df["cached_tokens"], df["thinking_tokens"] = retrieved, cached, thinking
    # user-visible latencies count every stage from the client's arrival
    df["queueing_s"] = df.admit_s - df.engine_arrival_s
    df["ttft_s"] = df.first_token_s - df.arrival_s
    df["e2e_s"] = df.finish_s - df.arrival_s
    df["meets_slo"] = (df.status == "finished") & (df.ttft_s <= df.slo_ttft_s) & (df.tpot_s <= df.slo_tpot_s)
    summary = summarize(df, result.timeseries, scenario, result.extra.get("capability"))
    for c in clients.values():
        k = next(k for k, s in enumerate(c.pipeline) if isinstance(s, Generate))
        records.append(pd.DataFrame({"request": c.rows, "stage": f"{k}:generate", "resource": f"engine:{c.pipeline[k].engine}",
                                     "ready_s": engine_arrival[c.rows], "start_s": df.admit_s.to_numpy()[c.rows],
                                     "finish_s": df.finish_s.to_numpy()[c.rows]}))
    stages = pd.concat(records, ignore_index=True).sort_values(["request", "stage"], kind="stable").reset_index(drop=True)
    result.extra["stages"] = stages
    return Results(df, result.timeseries, summary, result.extra)


def _run_resources(scenario, resources, params, clients, ready, cached, reference, records):
    """Every shared resource once, feeders first; fills each client's ``done`` and ``records``."""
    for node in resource_order(scenario):
        if node.startswith("engine:") or not node:
            continue
        users = [(c, k) for c in clients.values() for k, s in enumerate(c.pipeline) if s.node == node]
        stages = {c.pipeline[k] for c, k in users}
        if len(stages) > 1 and any(s.batch > 1 or s.threads != next(iter(stages)).threads for s in stages):
            raise ConfigError(f"resource {node!r}: stages that batch or use several threads must be identical to share "
                              f"it; got {sorted(s.kind for s in stages)}")
        release = np.concatenate([ready(c, k) for c, k in users])
        nbytes = None
        if resources[node].kind in ("tier", "link"):
            nbytes = np.concatenate([_kv_bytes(scenario, c.pipeline, cached[c.rows], c.pipeline[k]) for c, k in users])
        if len(stages) == 1 or resources[node].kind in ("tier", "link"):
            start, finish = station_times(resources[node], users[0][0].pipeline[users[0][1]], params[node], release,
                                          nbytes, reference)
        else:   # different FCFS stages on one pool: each job's own service time
            per_job = np.concatenate([np.full(len(c.rows), float(c.pipeline[k].batch_seconds(resources[node],
                                                                                             params[node])[0]))
                                      for c, k in users])
            c0 = servers(resources[node], users[0][0].pipeline[users[0][1]], params[node])
            fn = events.batch_servers_events if reference else batch_servers
            start, finish = fn(release, per_job, lambda _, total: total, c0, 1)
        start, finish = np.asarray(start, float), np.asarray(finish, float)
        offset = 0
        for c, k in users:
            m = len(c.rows)
            c.done[k] = (start[offset:offset + m], finish[offset:offset + m])
            records.append(pd.DataFrame({"request": c.rows, "stage": f"{k}:{c.pipeline[k].kind}", "resource": node,
                                         "ready_s": release[offset:offset + m], "start_s": c.done[k][0],
                                         "finish_s": c.done[k][1]}))
            offset += m


def _kv_bytes(scenario: Scenario, pipeline, hits: np.ndarray, stage: KVFetch) -> np.ndarray:
    engine = scenario.engine(next(s.engine for s in pipeline if isinstance(s, Generate)))
    model = get_model(engine.model)
    kv_dtype = engine.kv_dtype or (engine.dtype if engine.dtype in KV_DTYPES else "bf16")   # EngineSpec's default
    return hits * model.kv_bytes_per_token(kv_dtype) / stage.compression


__all__ = ["simulate_pipeline", "station_times", "resource_params"]
