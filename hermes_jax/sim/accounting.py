"""Utilization, energy and cost of a run.

Power model (an assumption, not a measurement): a device draws P_idle + (P_max - P_idle) x u, u its
busy fraction over the horizon (the share of time it runs iterations or batches). A CPU pool draws
its cores' share of the socket's TDP times its utilization; idle host power is not counted (the
host runs anyway). Links and memory tiers are not counted. Cost: every accelerator of every engine
replica and accelerator pool at its catalog price per device-hour over the horizon; CPU pools,
tiers and links come with their nodes and are not charged separately.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..hardware.catalog import default_catalog, get_hardware


def device_energy_j(devices, idle_w, max_w, horizon_s, busy_s, replicas=1):
    """J drawn by ``replicas`` engine replicas of ``devices`` devices each over the horizon: idle
    power throughout plus the rest of peak power while busy (``busy_s``: busy seconds summed over
    the replicas). Floats or JAX arrays (the differentiable simulator and the design use it)."""
    return devices * (replicas * idle_w * horizon_s + (max_w - idle_w) * busy_s)


def device_cost_usd(devices, price_per_hour, horizon_s, replicas=1):
    """$ of ``replicas`` x ``devices`` devices at ``price_per_hour`` each over the horizon."""
    return devices * replicas * price_per_hour * horizon_s / 3600.0


def engine_usage(scenario, ts: pd.DataFrame) -> dict:
    """Per engine: devices, busy fraction, energy (J) and cost ($) over the horizon."""
    horizon = scenario.simulation.horizon_s
    dt = scenario.dt_s
    out = {}
    for engine in scenario.engines:
        part = ts[ts.engine == engine.name] if len(ts) else ts
        if not len(part):
            continue
        names = engine.hardware if isinstance(engine.hardware, tuple) else (engine.hardware,) * engine.replicas
        devices = engine.tp * engine.pp
        energy = cost = busy_total = 0.0
        for replica, name in enumerate(names):
            busy_s = float(part[part.replica == replica].busy.sum() * dt)
            p = get_hardware(name, **engine.hardware_kwargs()).params   # as the engine runs
            energy += device_energy_j(devices, float(p.power_idle_w), float(p.power_max_w), horizon, busy_s)
            cost += device_cost_usd(devices, float(p.price_per_hour), horizon)
            busy_total += busy_s
        out[engine.name] = {"kind": "engine", "devices": devices * len(names),
                            "utilization": busy_total / (len(names) * horizon), "energy_j": energy, "cost_usd": cost}
    return out


def pool_usage(resource, params, servers: int, busy_s: float, moved_s: float, horizon: float) -> dict:
    """A shared resource (``params``: its own, a CPU pool's cores included): utilization (busy
    server-seconds / capacity, or for a tier or link the share of time its bandwidth is in use) and,
    for pools, energy and cost."""
    p = params
    if resource.kind in ("tier", "link"):
        return {"kind": resource.kind, "utilization": moved_s / horizon, "energy_j": 0.0, "cost_usd": 0.0}
    utilization = busy_s / (servers * horizon)
    if resource.kind == "accelerator":
        energy = resource.devices * float(p.power_idle_w) * horizon + float(p.power_max_w - p.power_idle_w) * busy_s
        return {"kind": "accelerator", "devices": resource.devices, "utilization": utilization, "energy_j": energy,
                "cost_usd": resource.devices * float(p.price_per_hour) * horizon / 3600.0}
    cpu = default_catalog().get("cpu", get_hardware(resource.hardware).spec.host_cpu, f"resource {resource.name}")
    cores = float(round(float(p.cpu_cores)))   # whole cores, as the pool's servers are counted
    # the catalog's price per core-hour where it has one (a CPU entry of a user's file may not: 0)
    price = float(cpu.get("price_per_core_hour", 0.0))
    return {"kind": "cpu", "cores": cores, "utilization": utilization, "cost_usd": cores * price * horizon / 3600.0,
            "energy_j": cpu["power_max_w"] * cores / cpu["cores"] * utilization * horizon}


def totals(usage: dict, generated_tokens: float) -> dict:
    energy = sum(u["energy_j"] for u in usage.values())
    cost = sum(u["cost_usd"] for u in usage.values())
    tokens = max(float(generated_tokens), 0.0)
    return {"energy_j": energy, "cost_usd": cost,
            "j_per_token": energy / tokens if tokens else float("nan"),
            "usd_per_mtok": cost / tokens * 1e6 if tokens else float("nan"),
            "tokens_per_usd": tokens / cost if cost else float("nan")}


def batch_busy_seconds(start: np.ndarray, finish: np.ndarray, batch: int, horizon: float) -> float:
    """Server-seconds a batching pool is busy within [0, horizon]: jobs of one batch share their start
    and finish, so m jobs with the same (start, finish) are ceil(m / batch) batches."""
    ok = np.isfinite(start) & np.isfinite(finish)
    if not ok.any():
        return 0.0
    pairs, counts = np.unique(np.stack([start[ok], finish[ok]], 1), axis=0, return_counts=True)
    span = np.clip(pairs[:, 1], 0, horizon) - np.clip(pairs[:, 0], 0, horizon)
    return float((np.ceil(counts / batch) * span).sum())


__all__ = ["device_energy_j", "device_cost_usd", "engine_usage", "pool_usage", "totals", "batch_busy_seconds"]
