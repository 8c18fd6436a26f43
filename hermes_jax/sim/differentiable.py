"""Differentiable summaries of a simulation: smooth surrogates of latency means, quantiles and
throughput as pure functions of one engine group's hardware parameters, ready for ``jax.grad``.

    model = DifferentiableSim(scenario, estimator=StraightThrough(1e-3))
    value, grads = jax.value_and_grad(lambda p: model.metrics(p)["e2e_mean_s"])(model.params)

The workload is drawn once (common random numbers): every call replays the same requests, so a
change in the result comes from the parameters alone. Which requests finish is a discrete outcome
held fixed along the path; latencies are continuous in the parameters. Surrogates:

- means over finished requests (exact, differentiable along the path);
- quantiles as a Gaussian-kernel average of the order statistics around rank q (bandwidth
  ``quantile_bandwidth`` in rank share), smooth where the plain order statistic has kinks;
- throughput as finished output tokens over a smooth maximum (log-sum-exp, ``temperature_s``) of the
  finish times.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import ConfigError
from ..hardware.params import HardwareParams, stack
from .build import build_group
from .engine import run
from .estimators import Pathwise
from .scenario import Scenario
from .simulate import _group_rows, prepare
from .workload import Workload, build_workload

QUANTILES = (0.5, 0.9, 0.99)


def soft_quantile(values, mask, q: float, bandwidth: float = 0.02):
    """Kernel-smoothed q-quantile of ``values[mask]`` (1-D). Differentiable in ``values``."""
    n = mask.sum()
    ordered = jnp.sort(jnp.where(mask, values, jnp.inf))
    rank = (jnp.arange(values.shape[0]) + 0.5) / jnp.maximum(n, 1)
    weight = jnp.where(jnp.arange(values.shape[0]) < n, jnp.exp(-0.5 * ((rank - q) / bandwidth) ** 2), 0.0)
    return jnp.sum(jnp.where(weight > 0, ordered, 0.0) * weight) / jnp.maximum(weight.sum(), 1e-30)


class DifferentiableSim:
    """One engine group of a scenario as a function of its hardware parameters (shared by replicas)."""

    def __init__(self, scenario: Scenario, engine: str | None = None, estimator=Pathwise(), checkpoint: bool = True,
                 workload: Workload | None = None, quantile_bandwidth: float = 0.02, temperature_s: float = 0.1):
        entry = scenario.engine(engine) if engine else scenario.engines[0]
        if engine is None and len(scenario.engines) > 1:
            raise ConfigError(f"{scenario.source}: several engines; name the one to differentiate "
                              f"({', '.join(e.name for e in scenario.engines)})")
        workload = workload or build_workload(scenario)
        rows = _group_rows(scenario, workload, entry.name)
        if rows.size == 0:
            raise ConfigError(f"{scenario.source}: no client sends requests to engine {entry.name!r}")
        self.group = build_group(entry)
        cfg, self.requests, reasons, _ = prepare(self.group, scenario, workload, rows)
        # routing at step starts keeps the scan reverse-differentiable (no loop over arrivals)
        self.cfg = type(cfg)(**{**cfg.__dict__, "estimator": estimator, "route_each_arrival": False})
        self.kv = self.group.kv_array()
        self.params: HardwareParams = self.group.params
        self.dt = scenario.simulation.dt_s
        self.checkpoint = checkpoint
        self.arrival = jnp.asarray(workload.arrival_s[rows])
        self.output_tokens = jnp.asarray(workload.output_tokens[rows])
        self.quantile_bandwidth, self.temperature_s = quantile_bandwidth, temperature_s

    def times(self, params: HardwareParams) -> dict:
        """Per-request event times (s from the start; NaN-free: unset events are 0) and masks."""
        hw = stack([params] * self.group.engine.replicas)
        state, _ = run(self.cfg, hw, self.requests, self.kv, self.checkpoint)
        rec = state.records

        def when(step, off):
            return jnp.where(step >= 0, step.astype(off.dtype) * self.dt + off, 0.0)

        return {"admit": when(rec.admit_step, rec.admit_off), "first": when(rec.first_step, rec.first_off),
                "finish": when(rec.finish_step, rec.finish_off), "finished": rec.finish_step >= 0,
                "started": rec.first_step >= 0}

    def metrics(self, params: HardwareParams) -> dict:
        t = self.times(params)
        done = t["finished"]
        arrival = self.arrival.astype(t["finish"].dtype)
        ttft = t["first"] - arrival
        e2e = t["finish"] - arrival
        steps = jnp.maximum(self.output_tokens - 1, 1).astype(e2e.dtype)
        tpot = jnp.where(self.output_tokens > 1, (t["finish"] - t["first"]) / steps, 0.0)
        n = jnp.maximum(done.sum(), 1)
        out = {}
        for name, value in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
            out[f"{name}_mean_s"] = jnp.where(done, value, 0.0).sum() / n
            for q in QUANTILES:
                out[f"{name}_p{round(q * 100)}_s"] = soft_quantile(value, done, q, self.quantile_bandwidth)
        T = self.temperature_s
        finish = jnp.where(done, t["finish"], -jnp.inf)
        makespan = T * jax.nn.logsumexp(finish / T)
        tokens = jnp.where(done, self.output_tokens, 0).sum()
        out["throughput_tokens_s"] = tokens / makespan
        out["finished"] = done.sum()
        return out
