"""Pipeline description: shared resources (``[[resource]]``) and each client's stages (``pipeline``).

A resource is one pool of something requests compete for:
- ``cpu``: ``cores`` cores of a node's host CPU (``hardware`` names the node type);
- ``accelerator``: ``devices`` devices of a node type, each running one batch at a time;
- ``tier``: a node's memory tier (``host_dram``, ``cxl``, ``local_ssd``, ``remote_store``), whose
  bandwidth concurrent fetches share;
- ``link``: a network link (catalog name, optionally ``bandwidth_gbps`` in Gb/s), shared likewise.

A client's ``pipeline`` is a list of stages run in order, each placed ``on`` a resource (RAG and KV
stages) or naming an engine (``generate``). Stages are validated when the scenario is built; stage
kinds live in ``pipeline.stages``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError

RESOURCE_KINDS = ("cpu", "accelerator", "tier", "link")
TIER_NAMES = ("host_dram", "cxl", "local_ssd", "remote_store")


@dataclass(frozen=True)
class Resource:
    name: str
    kind: str
    hardware: str              # node type from the catalog (its CPU, tiers or devices)
    cores: int = 0             # cpu: cores in the pool (0: the node's CPU cores)
    devices: int = 1           # accelerator: devices in the pool
    tier: str = ""             # tier: which of TIER_NAMES
    link: str = ""             # link: catalog link name
    bandwidth_gbps: float = 0.0   # link: Gb/s override (0: the catalog's)
    latency_s: float = -1.0    # link: per-transfer latency override (-1: the catalog's)
    hardware_overrides: tuple = ()   # (parameter, value) pairs over the node's catalog values (sorted)

    @staticmethod
    def parse(data: dict, index: int, where) -> "Resource":
        from ..schema import check_keys as _check_keys, choice as _choice, hardware_overrides
        name = data.get("name", "")
        if not isinstance(name, str) or not name:
            raise where.error("resource", index, "", "name", "required (a non-empty string)")
        kind = _choice(where, "resource", index, name, data, "kind", RESOURCE_KINDS)
        allowed = {"name", "kind", "hardware", "hardware_overrides"} | {
            "cpu": {"cores"}, "accelerator": {"devices"}, "tier": {"tier"},
            "link": {"link", "bandwidth_gbps", "latency_s"}}[kind]
        _check_keys(where, "resource", index, name, data, allowed)
        hardware = data.get("hardware", "h100-sxm")
        if not isinstance(hardware, str):
            raise where.error("resource", index, name, "hardware", "must be a catalog node name, e.g. \"h100-sxm\"")
        overrides = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                 for k, v in hardware_overrides(where, "resource", index, name, data).items()))
        return dataclasses.replace(Resource._parse_kind(data, index, where, name, kind, hardware),
                                   hardware_overrides=overrides)

    @staticmethod
    def _parse_kind(data: dict, index: int, where, name: str, kind: str, hardware: str) -> "Resource":
        from ..schema import choice as _choice, positive as _positive
        if kind == "cpu":
            return Resource(name, kind, hardware, cores=_positive(where, "resource", index, name, data, "cores", 0,
                                                                    integer=True, allow_zero=True))
        if kind == "accelerator":
            return Resource(name, kind, hardware,
                            devices=_positive(where, "resource", index, name, data, "devices", 1, integer=True))
        if kind == "tier":
            return Resource(name, kind, hardware, tier=_choice(where, "resource", index, name, data, "tier", TIER_NAMES))
        if not isinstance(data.get("link"), str):
            raise where.error("resource", index, name, "link", "required (a catalog link name, e.g. \"roce-400g\")")
        return Resource(name, kind, hardware, link=data["link"],
                        bandwidth_gbps=_positive(where, "resource", index, name, data, "bandwidth_gbps", 0.0,
                                                 allow_zero=True),
                        latency_s=_positive(where, "resource", index, name, data, "latency_s", -1.0, allow_zero=True)
                        if "latency_s" in data else -1.0)


def check_pipelines(scenario) -> None:
    """Cross-references: every stage's resource, engine and model exist and fit; routed and
    disaggregated generation is consistent; the order in which nodes (resources and engines) feed
    each other has no cycle (each is simulated once, after all its inputs)."""
    from .plan import node_edges
    resources = {r.name: r for r in scenario.resources}
    if len(resources) != len(scenario.resources):
        raise ConfigError(f"{scenario.source}: resource names must be unique, got {[r.name for r in scenario.resources]}")
    engines = {e.name for e in scenario.engines}
    for client in scenario.clients:
        if client.pipeline:
            _check_client(scenario, client, resources, engines)
    _check_sharing(scenario)
    cycle = _find_cycle(node_edges(scenario.clients))
    if cycle:
        raise ConfigError(f"{scenario.source}: pipelines feed resources in a cycle: {' -> '.join(cycle)}. Each "
                          "resource is simulated once, after every resource that feeds it; give the stages on "
                          "the cycle separate resources")


def _check_sharing(scenario) -> None:
    """Different stages may share a cpu or accelerator pool only as single jobs on the same number of
    cores (one FCFS queue over identical servers; each job keeps its own service time)."""
    from .plan import hop_templates
    placed: dict[str, set] = {}
    for client in scenario.clients:
        for hop in hop_templates(client):
            if hop.role == "" and hop.stage.resource_kinds != ("tier", "link"):
                placed.setdefault(hop.node, set()).add(hop.stage)
    for node, stages in placed.items():
        if len(stages) > 1 and (any(s.batch > 1 for s in stages) or len({s.threads for s in stages}) > 1):
            detail = ", ".join(sorted(f"{s.kind} (batch {s.batch}, threads {s.threads})" for s in stages))
            raise ConfigError(f"{scenario.source}: resource {node!r} is shared by different stages: {detail}; "
                              "stages sharing a pool must all have batch = 1 and the same threads (or be identical)")


def _check_client(scenario, client, resources, engines) -> None:
    from ..models.config import get_model
    from .retrieval import Route
    from .stages import Generate, KVFetch, Reasoning
    where = f"{scenario.source}: [[client]] {client.name!r} pipeline"
    pipeline = client.pipeline
    for k, stage in enumerate(pipeline):
        stage.check(f"{where}[{k}] ({stage.kind})", resources, engines)
    if not isinstance(pipeline[-1], Generate):
        raise ConfigError(f"{where}: the last stage must be \"generate\" (the request's reply)")
    generate, k = pipeline[-1], len(pipeline) - 1
    routes = [j for j, s in enumerate(pipeline) if isinstance(s, Route)]
    if len(routes) > 1:
        raise ConfigError(f"{where}: at most one route stage, got {len(routes)}")
    if routes and (generate.engine or generate.disaggregated):
        raise ConfigError(f"{where}[{k}] (generate): after a route stage, generate names no engine (the route picks)")
    if not routes and not generate.engines():
        raise ConfigError(f"{where}[{k}] (generate) engine: required (or a route stage before it)")
    if sum(isinstance(s, Reasoning) for s in pipeline) > 1:
        raise ConfigError(f"{where}: at most one reasoning stage")
    reasoning = [s for s in pipeline if isinstance(s, Reasoning)]
    if reasoning and reasoning[0].rounds > 1 and generate.disaggregated:
        raise ConfigError(f"{where}: multi-round reasoning (rounds > 1) needs one engine, not disaggregated "
                          "prefill/decode")
    targets = pipeline[routes[0]].to if routes else generate.engines()
    models = {scenario.engine(e).model for e in targets}
    if generate.disaggregated and len(models) > 1:
        raise ConfigError(f"{where}[{k}] (generate): prefill_engine and decode_engine serve different models "
                          f"({', '.join(sorted(models))}); the KV cache moves between them")
    fetch = [j for j, s in enumerate(pipeline) if isinstance(s, KVFetch)]
    if fetch and routes and fetch[0] < routes[0] and len(models) > 1:
        raise ConfigError(f"{where}[{fetch[0]}] (kv_fetch): the KV cache is per model and the route's engines serve "
                          f"{', '.join(sorted(models))}; place kv_fetch after the route")
    for name in models:
        get_model(name)


def _find_cycle(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}   # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def resource_order(scenario) -> list[str]:
    """Resources and engines (``engine:NAME``) in an order where every feeder comes first."""
    from .plan import hop_templates, node_edges
    edges = node_edges(scenario.clients)
    nodes: list[str] = []
    for client in scenario.clients:
        nodes += [h.node for h in hop_templates(client) if h.node not in nodes]
    order, seen = [], set()

    def visit(node):
        if node in seen:
            return
        seen.add(node)
        for other in nodes:   # feeders of node first
            if node in edges.get(other, ()) and other != node:
                visit(other)
        order.append(node)

    for node in nodes:
        visit(node)
    return order
