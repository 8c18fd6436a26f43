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

    @staticmethod
    def parse(data: dict, index: int, where) -> "Resource":
        from ..sim.scenario import _check_keys, _choice, _positive
        name = data.get("name", "")
        if not isinstance(name, str) or not name:
            raise where.error("resource", index, "", "name", "required (a non-empty string)")
        kind = _choice(where, "resource", index, name, data, "kind", RESOURCE_KINDS)
        allowed = {"name", "kind", "hardware"} | {
            "cpu": {"cores"}, "accelerator": {"devices"}, "tier": {"tier"},
            "link": {"link", "bandwidth_gbps", "latency_s"}}[kind]
        _check_keys(where, "resource", index, name, data, allowed)
        hardware = data.get("hardware", "h100-sxm")
        if not isinstance(hardware, str):
            raise where.error("resource", index, name, "hardware", "must be a catalog node name, e.g. \"h100-sxm\"")
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
    """Cross-references: every stage's resource, engine and model exist and fit; the order in which
    resources feed each other has no cycle (each resource is simulated once, after all its inputs)."""
    from .stages import Generate
    resources = {r.name: r for r in scenario.resources}
    if len(resources) != len(scenario.resources):
        raise ConfigError(f"{scenario.source}: resource names must be unique, got {[r.name for r in scenario.resources]}")
    engines = {e.name for e in scenario.engines}
    edges: dict[str, set[str]] = {}
    for client in scenario.clients:
        previous = None
        for k, stage in enumerate(client.pipeline):
            place = f"{scenario.source}: [[client]] {client.name!r} pipeline[{k}] ({stage.kind})"
            node = stage.check(place, resources, engines)
            if previous is not None and previous != node:
                edges.setdefault(previous, set()).add(node)
            previous = node
        if client.pipeline and not isinstance(client.pipeline[-1], Generate):
            raise ConfigError(f"{scenario.source}: [[client]] {client.name!r} pipeline: the last stage must be "
                              "\"generate\" (the request's reply)")
    cycle = _find_cycle(edges)
    if cycle:
        raise ConfigError(f"{scenario.source}: pipelines feed resources in a cycle: {' -> '.join(cycle)}. Each "
                          "resource is simulated once, after every resource that feeds it; give the stages on "
                          "the cycle separate resources")


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
    edges: dict[str, set[str]] = {}
    nodes: list[str] = []
    for client in scenario.clients:
        chain = [s.node for s in client.pipeline] if client.pipeline else [f"engine:{client.engine}"]
        for a, b in zip(chain, chain[1:]):
            if a != b:
                edges.setdefault(a, set()).add(b)
        nodes += [n for n in chain if n not in nodes]
    order, seen = [], set()

    def visit(node):
        if node in seen:
            return
        seen.add(node)
        for other in nodes:   # feeders of node first
            if node in edges.get(other, ()):
                visit(other)
        order.append(node)

    for node in nodes:
        visit(node)
    return order
