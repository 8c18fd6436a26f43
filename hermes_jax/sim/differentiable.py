"""Differentiable summaries of a simulation: latency means and quantiles, throughput, goodput, KV
capacity, energy and cost as pure functions of one engine group's hardware parameters, ready for
``jax.grad``, ``jax.jacfwd`` and the fitters.

    model = DifferentiableSim(scenario)                     # estimator: Smoothed() (the default)
    value, grads = jax.value_and_grad(lambda p: model.metrics(p)["e2e_mean_s"])(model.params)
    f = model.function(["hbm_bandwidth", "host_overhead_s"])   # x = ln values -> metrics

The workload is drawn once (common random numbers): every call replays the same requests, so a
change in the result comes from the parameters alone. How derivatives are taken is the estimator's
choice (``sim.smoothing.Smoothed``: the slope over small log-shifts from forward runs, which sees
every decision the parameters move; ``sim.estimators``: path derivatives through the scan, which
hold the decisions fixed). docs/gradients.md measures each against the exact reference.

Forward values are the plain simulation's except for two surrogates, kept smooth for the path
estimators: quantiles as a Gaussian-kernel average of the order statistics around rank q
(``quantile_bandwidth`` in rank share) and the makespan of ``throughput_tokens_s`` as a log-sum-exp
(``temperature_s``) of the finish times. Counts (finished requests, tokens, KV blocks) are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from ..hardware.params import HardwareParams, stack
from .accounting import device_cost_usd, device_energy_j
from .build import build_group, group_config, kv_blocks_of, kv_rule
from .engine import run
from .estimators import Pathwise
from .scenario import Scenario
from .shapes import pad_requests, request_bucket
from .simulate import _group_rows, prepare
from .smoothing import Smoothed, smoothing_gap
from .state import Requests
from .workload import Workload, build_workload

QUANTILES = (0.1, 0.5, 0.9, 0.99)


def soft_quantile(values, mask, q: float, bandwidth: float = 0.02):
    """Kernel-smoothed q-quantile of ``values[mask]`` (1-D). Differentiable in ``values``."""
    n = mask.sum()
    ordered = jnp.sort(jnp.where(mask, values, jnp.inf))
    rank = (jnp.arange(values.shape[0]) + 0.5) / jnp.maximum(n, 1)
    weight = jnp.where(jnp.arange(values.shape[0]) < n, jnp.exp(-0.5 * ((rank - q) / bandwidth) ** 2), 0.0)
    return jnp.sum(jnp.where(weight > 0, ordered, 0.0) * weight) / jnp.maximum(weight.sum(), 1e-30)


@dataclass(frozen=True)
class _Static:
    """What the compiled summaries depend on besides arrays (hashable: the jit cache key)."""

    cfg: object                          # GroupConfig of the engine group
    kv_rule: tuple[float, float, float]  # (share of HBM, reserved B per device, KV B per block): build.kv_rule
    dt: float                            # s, step
    horizon_s: float                     # s
    devices: int                         # devices per replica (tp * pp)
    estimator: object                    # Smoothed or a path estimator
    checkpoint: bool                     # rematerialise scan segments in reverse mode (path estimators)
    quantile_bandwidth: float            # rank share of the soft quantiles
    temperature_s: float                 # s, log-sum-exp temperature of the makespan


class _Data(NamedTuple):
    """Per-request inputs (padded to the bucket; padding never arrives)."""

    requests: Requests
    arrival_s: jax.Array      # (N,) s
    output_tokens: jax.Array  # (N,) tokens
    slo_ttft_s: jax.Array     # (N,) s (inf: none)
    slo_tpot_s: jax.Array     # (N,) s
    issued: jax.Array         # (N,) bool, arrives before the horizon (padding: False)


def _guarded(st: _Static) -> _Static:
    """The same configuration for vmapped runs: a batched cond runs its branch only when a lane needs it."""
    return replace(st, cfg=replace(st.cfg, vmap_guard=True))


def _simulate(st: _Static, params: HardwareParams, data: _Data):
    R = st.cfg.replicas
    hw = stack([params] * R)
    kv = jnp.broadcast_to(kv_blocks_of(st.kv_rule, params.log["hbm_capacity"]), (R,))
    return run(st.cfg, hw, data.requests, kv, st.checkpoint), kv


def _summaries(st: _Static, log: dict, data: _Data) -> dict:
    params = HardwareParams(log)
    (state, trace), kv = _simulate(st, params, data)
    rec = state.records
    f = params.log["hbm_bandwidth"].dtype

    def when(step, off):
        return jnp.where(step >= 0, step.astype(f) * st.dt + off.astype(f), 0.0)

    done = rec.finish_step >= 0
    arrival = data.arrival_s.astype(f)
    first, finish = when(rec.first_step, rec.first_off), when(rec.finish_step, rec.finish_off)
    ttft, e2e = first - arrival, finish - arrival
    out_tokens = data.output_tokens
    tpot = jnp.where(out_tokens > 1, (finish - first) / jnp.maximum(out_tokens - 1, 1).astype(f), 0.0)
    n = jnp.maximum(done.sum(), 1)
    out = {}
    for name, value in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
        out[f"{name}_mean_s"] = jnp.where(done, value, 0.0).sum() / n
        for q in QUANTILES:
            out[f"{name}_p{round(q * 100)}_s"] = soft_quantile(value, done, q, st.quantile_bandwidth)
    T = st.temperature_s
    makespan = T * jax.nn.logsumexp(jnp.where(done, finish, -jnp.inf) / T)
    tokens = jnp.where(done, out_tokens, 0).sum().astype(f)
    horizon = jnp.asarray(st.horizon_s, f)
    out["throughput_tokens_s"] = tokens / makespan
    out["finished"] = done.sum().astype(f)
    out["finished_share"] = done.sum().astype(f) / jnp.maximum(data.issued.sum(), 1)
    out["finished_tokens"] = tokens
    meets = done & (ttft <= data.slo_ttft_s) & (tpot <= data.slo_tpot_s)
    out["goodput_rps"] = meets.sum().astype(f) / horizon
    out["slo_attainment"] = meets.sum().astype(f) / jnp.maximum(data.issued.sum(), 1)
    out["kv_blocks"] = kv.astype(f).mean()
    R, d = st.cfg.replicas, st.devices
    busy = jnp.minimum(trace.busy_s.astype(f).sum(), R * horizon)
    out["utilization"] = busy / (R * horizon)
    idle_w, max_w = jnp.exp(params.log["power_idle_w"]), jnp.exp(params.log["power_max_w"])
    out["energy_j"] = device_energy_j(d, idle_w, max_w, horizon, busy, R)
    out["cost_usd"] = device_cost_usd(d, jnp.exp(params.log["price_per_hour"]), horizon, R)
    out["j_per_token"] = out["energy_j"] / jnp.maximum(tokens, 1.0)
    out["usd_per_mtok"] = out["cost_usd"] / jnp.maximum(tokens, 1.0) * 1e6
    return out


@partial(jax.jit, static_argnums=0)
def _metrics(st: _Static, log: dict, data: _Data) -> dict:
    """One compile per static configuration and request bucket; workload and parameters are arguments.
    The plain value always: a smoothed value (``Smoothed(value="smoothed")``) is defined over the
    variables only, which ``scaled`` has as its whole input and this function does not."""
    estimator = st.estimator
    if isinstance(estimator, Smoothed) and estimator.value != "plain":
        estimator = replace(estimator, value="plain")
    return estimator.differentiate(partial(_summaries, st), partial(_summaries, _guarded(st)))(log, data)


def _scaled_summaries(st: _Static, names: tuple, shift: dict, base: dict, data: _Data) -> dict:
    log = dict(base)
    for i, k in enumerate(names):
        log[k] = base[k] + shift["x"][i].astype(base[k].dtype)
    return _summaries(st, log, data)


@partial(jax.jit, static_argnums=(0, 1))
def _scaled_metrics(st: _Static, names: tuple, x, base: dict, data: _Data) -> dict:
    fwd = st.estimator.differentiate(partial(_scaled_summaries, st, names),
                                     partial(_scaled_summaries, _guarded(st), names))
    return fwd({"x": x}, base, data)


@partial(jax.jit, static_argnums=(0, 1))
def _scaled_batch(st: _Static, names: tuple, xs, base: dict, data: _Data) -> dict:
    """Forward only, one vmapped call over rows of ``xs`` (guarded conditionals)."""
    lanes = _guarded(st)
    return jax.vmap(lambda x: _scaled_summaries(lanes, names, {"x": x}, base, data))(xs)


def frame_summaries(df, bandwidth: float = 0.02, temperature_s: float = 0.1,
                    quantiles: Sequence[float] = (0.5, 0.9)) -> dict[str, float]:
    """The latency and throughput summaries of ``DifferentiableSim`` (same definitions: means and
    kernel-smoothed quantiles over finished requests, output tokens over a log-sum-exp makespan) on a
    ``Results.requests`` frame, so runs of any simulator (the exact reference, pipelines) compare."""
    done = (df.status == "finished").to_numpy()
    out = {}
    for name in ("ttft", "tpot", "e2e"):
        v = np.nan_to_num(df[f"{name}_s"].to_numpy(float))
        out[f"{name}_mean_s"] = float(v[done].mean()) if done.any() else 0.0
        for q in quantiles:
            out[f"{name}_p{round(q * 100)}_s"] = float(soft_quantile(jnp.asarray(v), jnp.asarray(done), q, bandwidth))
    finish = df.finish_s.to_numpy(float)[done]
    makespan = temperature_s * np.logaddexp.reduce(finish / temperature_s) if done.any() else 1.0
    out["throughput_tokens_s"] = float(df.output_tokens.to_numpy()[done].sum() / makespan)
    out["finished"] = float(done.sum())
    return out


class DifferentiableSim:
    """One engine group of a scenario as a function of its hardware parameters (shared by replicas).

    Compile once, run many: the workload and the parameters are arguments of one compiled function
    per (engine configuration, horizon / dt, estimator, request bucket), so models built for other
    seeds or traces of similar size reuse it."""

    def __init__(self, scenario: Scenario, engine: str | None = None, estimator=None, checkpoint: bool = True,
                 workload: Workload | None = None, quantile_bandwidth: float = 0.02, temperature_s: float = 0.1):
        entry = scenario.engine(engine) if engine else scenario.engines[0]
        if engine is None and len(scenario.engines) > 1:
            raise ConfigError(f"{scenario.source}: several engines; name the one to differentiate "
                              f"({', '.join(e.name for e in scenario.engines)})")
        workload = workload or build_workload(scenario)
        rows = _group_rows(scenario, workload, entry.name)
        if rows.size == 0:
            raise ConfigError(f"{scenario.source}: no client sends requests to engine {entry.name!r}")
        estimator = Smoothed() if estimator is None else estimator
        self.estimator = estimator
        self.group = build_group(entry)
        _, req, reasons, _ = prepare(self.group, scenario, workload, rows)
        n, size = len(rows), request_bucket(len(rows))
        per_step = np.diff(np.asarray(req.step_first))
        arrivals = 1 << int(np.ceil(np.log2(max(int(per_step.max(initial=0)), 1))))
        cfg = group_config(self.group, scenario, arrivals, queue=size, users=int(req.user.max(initial=-1)) + 1)
        if isinstance(estimator, Smoothed):
            # forward runs only: keep the exact per-arrival routing
            cfg = replace(cfg, estimator=Pathwise())
        else:   # routing at step starts keeps the scan reverse-differentiable (no loop over arrivals)
            cfg = replace(cfg, estimator=estimator, route_each_arrival=False)
        self.cfg = cfg
        self.requests = pad_requests(req, size)
        self.rows, self.reasons = rows, reasons
        self.params: HardwareParams = self.group.params
        self.dt = scenario.dt_s
        self.horizon_s = scenario.simulation.horizon_s
        self.devices = entry.tp * entry.pp       # per replica
        self._static = _Static(cfg, kv_rule(self.group.spec, self.group.params, entry), self.dt, self.horizon_s,
                               entry.tp * entry.pp, estimator, checkpoint and not isinstance(estimator, Smoothed),
                               quantile_bandwidth, temperature_s)
        clients = scenario.clients
        client = workload.client[rows]

        def padded(x, fill):
            return jnp.asarray(np.concatenate([np.asarray(x), np.full(size - n, fill, np.asarray(x).dtype)]))

        self._data = _Data(self.requests, padded(workload.arrival_s[rows], 0.0), padded(workload.output_tokens[rows], 1),
                           padded(np.array([c.slo_ttft_s for c in clients])[client], np.inf),
                           padded(np.array([c.slo_tpot_s for c in clients])[client], np.inf),
                           padded(workload.arrival_s[rows] < self.horizon_s, False))
        self.arrival, self.output_tokens = self._data.arrival_s, self._data.output_tokens
        self.quantile_bandwidth, self.temperature_s = quantile_bandwidth, temperature_s

    def times(self, params: HardwareParams) -> dict:
        """Per-request event times (s from the start; NaN-free: unset events are 0) and masks."""
        (state, _), _ = _simulate(self._static, params, self._data)
        rec = state.records

        def when(step, off):
            return jnp.where(step >= 0, step.astype(off.dtype) * self.dt + off, 0.0)

        return {"admit": when(rec.admit_step, rec.admit_off), "first": when(rec.first_step, rec.first_off),
                "finish": when(rec.finish_step, rec.finish_off), "finished": rec.finish_step >= 0,
                "started": rec.first_step >= 0}

    def metrics(self, params: HardwareParams) -> dict:
        """Every summary (floats, see the module docstring), differentiable by the estimator."""
        return _metrics(self._static, params.log, self._data)

    def function(self, names: Sequence[str], metrics: Sequence[str] | None = None):
        """``x -> metrics`` with x the concatenated natural logs of ``names`` (their entries, in
        order) and the other parameters held at ``self.params``; with ``metrics``, a vector of
        those. Only the named entries are perturbed by a smoothed gradient."""
        base = self.params.log
        unknown = [k for k in names if k not in base]
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown}; known: {', '.join(sorted(base))}")
        sizes = [int(np.size(base[k])) for k in names]

        def f(x):
            log, at = dict(base), 0
            for k, size in zip(names, sizes):
                log[k] = jnp.reshape(x[at:at + size], np.shape(base[k])).astype(base[k].dtype)
                at += size
            out = _metrics(self._static, log, self._data)
            return out if metrics is None else jnp.stack([out[m] for m in metrics])

        return f

    def scaled(self, names: Sequence[str]):
        """``x -> metrics`` with x[i] the natural log of a multiplier of parameter ``names[i]`` (a
        vector parameter such as ``peak_flops`` scales as a whole), 0 = ``self.params``. The
        estimator perturbs the len(names) entries of x only."""
        names = tuple(names)
        unknown = [k for k in names if k not in self.params.log]
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown}; known: {', '.join(sorted(self.params.log))}")
        return lambda x: _scaled_metrics(self._static, names, x, self.params.log, self._data)

    def scaled_batch(self, names: Sequence[str]):
        """``xs (K, len(names)) -> metrics with a leading K axis``: many designs in one vmapped
        forward call (no derivatives), for search methods that evaluate populations."""
        names = tuple(names)
        return lambda xs: _scaled_batch(self._static, names, xs, self.params.log, self._data)

    def x0(self, names: Sequence[str]) -> jnp.ndarray:
        """The current natural logs of ``names``, concatenated (the start of ``function``)."""
        return jnp.concatenate([jnp.ravel(self.params.log[k]) for k in names])

    def smoothing_gap(self, names: Sequence[str]) -> dict:
        """Smoothed minus plain value of every metric under a Smoothed estimator's design over ``names``."""
        if not isinstance(self.estimator, Smoothed):
            raise ConfigError("smoothing_gap needs the Smoothed estimator")
        return smoothing_gap(partial(_summaries, _guarded(self._static)), dict(self.params.log), list(names), self.estimator,
                             self._data)


