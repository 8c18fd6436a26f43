"""A client's pipeline as hops: each hop is one stage placed on one node (a resource, or an engine
as ``engine:NAME``) for the requests that take it. Most stages are one hop; ``generate`` may be
several: one per engine a ``route`` can pick, a cascade's escalations (each after the previous),
or a disaggregated prefill, KV transfer and decode.

The hop templates depend only on the scenario, so the load-time checks (cycles between nodes) and
the run use the same graph; which requests take a hop is decided when the run draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .retrieval import Route
from .stages import Generate, Reasoning, Stage


@dataclass(frozen=True)
class HopTemplate:
    label: str                # "k:kind" (k: the stage's position), "k:generate@ENGINE", "k:prefill", ...
    stage: Stage
    node: str                 # resource name or "engine:NAME"
    after: tuple = ()         # indices of earlier hops whose finish is this hop's ready time (none: arrival)
    role: str = ""            # engine hops: "whole", "prefill", "decode"; "transfer": the disaggregated KV
    engine: str = ""          # engine hops: the engine
    choice: int = -1          # routed hops: the index in the route's ``to`` (-1: every request)
    attempt: int = 0          # cascade: 0 first answer, 1 first escalation, ...


def pipeline_of(client) -> tuple:
    return client.pipeline or (Generate(engine=client.engine),)


def reasoning_of(pipeline) -> Reasoning | None:
    found = [s for s in pipeline if isinstance(s, Reasoning)]
    return found[-1] if found else None


def route_of(pipeline) -> Route | None:
    found = [s for s in pipeline if isinstance(s, Route)]
    return found[-1] if found else None


def hop_templates(client) -> list[HopTemplate]:
    hops: list[HopTemplate] = []
    frontier: tuple = ()
    for k, stage in enumerate(pipeline_of(client)):
        if isinstance(stage, Generate):
            route = route_of(pipeline_of(client))
            if stage.disaggregated:
                p = len(hops)
                hops += [HopTemplate(f"{k}:prefill", stage, f"engine:{stage.prefill_engine}", frontier, "prefill",
                                     stage.prefill_engine),
                         HopTemplate(f"{k}:kv_transfer", stage, stage.kv_link, (p,), "transfer"),
                         HopTemplate(f"{k}:decode", stage, f"engine:{stage.decode_engine}", (p + 1,), "decode",
                                     stage.decode_engine)]
            elif stage.engine:
                hops.append(HopTemplate(f"{k}:generate", stage, f"engine:{stage.engine}", frontier, "whole",
                                        stage.engine))
            elif route is not None and route.policy == "cascade":
                for level, name in enumerate(route.to):
                    after = frontier if level == 0 else (len(hops) - 1,)
                    hops.append(HopTemplate(f"{k}:generate@{name}", stage, f"engine:{name}", after, "whole", name,
                                            attempt=level))
            elif route is not None:
                for i, name in enumerate(route.to):
                    hops.append(HopTemplate(f"{k}:generate@{name}", stage, f"engine:{name}", frontier, "whole", name,
                                            choice=i))
            frontier = ()
        elif stage.node:
            hops.append(HopTemplate(f"{k}:{stage.kind}", stage, stage.node, frontier))
            frontier = (len(hops) - 1,)
    return hops


def node_edges(clients) -> dict[str, set[str]]:
    """Node -> nodes it feeds, over every client's hops."""
    edges: dict[str, set[str]] = {}
    for client in clients:
        hops = hop_templates(client)
        for hop in hops:
            for a in hop.after:
                if hops[a].node != hop.node:
                    edges.setdefault(hops[a].node, set()).add(hop.node)
                else:   # a node feeding itself cannot be simulated once
                    edges.setdefault(hop.node, set()).add(hop.node)
    return edges


__all__ = ["HopTemplate", "hop_templates", "node_edges", "pipeline_of", "reasoning_of", "route_of"]
