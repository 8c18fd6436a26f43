"""Static-batch predictions of a measurement table, as a differentiable function of the parameters.

Rows are grouped by (model, tp): one ``EngineSpec`` each, so one compiled estimate serves all their
batches and lengths. A batch whose KV cache does not fit under the stack's sizing rule runs the way
the stack runs it: in waves of what fits (``stacks.kv.static_waves``) or, for a preempting stack
(vLLM, DeepSpeed-MII), on the schedule of ``stacks.preemption``; a row where not even one request fits is reported in
``impossible`` with the reason, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..engine import EngineSpec
from ..errors import ConfigError
from ..hardware.catalog import SystemSpec
from ..hardware.params import HardwareParams
from ..models.config import dtype_bytes, get_model
from ..models.operators import Parallelism
from ..stacks.kv import kv_capacity, overflow_schedule, static_batch_in_waves, static_waves
from ..stacks.preemption import Schedule, scheduled_time
from ..stacks.profile import StackProfile


@dataclass
class _Group:
    engine: EngineSpec
    index: np.ndarray          # row positions in the table
    per_wave: np.ndarray       # requests per full wave
    full: np.ndarray           # full waves
    last: np.ndarray           # requests in the last partial wave
    prompt: np.ndarray
    output: np.ndarray
    scheduled: np.ndarray      # positions (within the group) of rows run on a preempting schedule
    schedules: list[Schedule]  # their schedules


def datasheet_floor(engine: EngineSpec, params: HardwareParams, batch, prompt, output) -> np.ndarray:
    """Seconds no run of a static batch can beat on this device: every decode step reads the weights
    it needs once (MoE: the shared part and top-k of the routed experts) at datasheet bandwidth, and
    the prefill does its weight FLOP at datasheet peak. A measurement below it did not do the work."""
    m, par = engine.model, engine.parallel
    active = float(m.param_count())
    if m.is_moe:
        _, routed = m.moe_layer_params()
        active -= m.moe_layers * routed * (1.0 - m.top_k / m.experts)
    devices = par.tp * par.pp
    step_bytes = active * dtype_bytes(engine.weight_dtype) / devices
    peak = float(params.peak(engine.compute_dtype))
    return (np.maximum(output - 1, 0) * step_bytes / float(params.hbm_bandwidth)
            + 2.0 * active * batch * prompt / devices / peak)


class StaticBatchTable:
    """Predict ``latency_s`` (and ``ttft_s``) of every row of a canonical table on one device."""

    def __init__(self, rows: pd.DataFrame, spec: SystemSpec, params: HardwareParams, stack: StackProfile,
                 dtype: str = "bf16"):
        rows = rows.reset_index(drop=True)
        self.rows, self.spec, self.stack = rows, spec, stack
        self.groups: list[_Group] = []
        impossible = []
        keep = np.ones(len(rows), bool)
        for (model_name, tp), g in rows.groupby(["model", "tp"], sort=True):
            try:
                engine = EngineSpec(get_model(model_name), spec, Parallelism(tp=int(tp)), weight_dtype=dtype)
            except ConfigError as exc:  # a layout the model cannot take: every row of it, with the reason
                impossible += [(pos, f"{exc} (the engine must have padded or split differently)") for pos in g.index]
                keep[g.index] = False
                continue
            cap = kv_capacity(engine, params, stack)
            waves = [static_waves(engine, cap, int(r.batch), int(r.input), int(r.output)) for r in g.itertuples()]
            floor = datasheet_floor(engine, params, g.batch.to_numpy(float), g.input.to_numpy(float),
                                    g.output.to_numpy(float))
            reasons = []
            for w, r, f in zip(waves, g.itertuples(), floor):
                if r.input + r.output > engine.model.max_context:
                    reasons.append(f"prompt + output {r.input + r.output} exceeds {model_name}'s context of "
                                   f"{engine.model.max_context}: the engine cannot have run it as stated")
                elif w.per_wave == 0:
                    reasons.append("weights and reserves leave no room for one request's KV cache" if cap.blocks == 0
                                   else f"one request needs more KV than the {cap.blocks} blocks")
                elif r.latency_s < f:
                    reasons.append(f"measured {r.latency_s:.3g} s is below the datasheet floor {f:.3g} s (weights "
                                   "read once per decode step, prefill FLOP at peak): the run cannot have done "
                                   "this work")
                else:
                    reasons.append("")
            ok = np.array([not r for r in reasons])
            impossible += [(pos, r) for pos, r in zip(g.index, reasons) if r]
            keep[g.index[~ok]] = False
            g, waves = g[ok], [w for w, o in zip(waves, ok) if o]
            if g.empty:
                continue
            schedules = [overflow_schedule(engine, cap, stack, w, int(r.batch), int(r.input), int(r.output))
                         for w, r in zip(waves, g.itertuples())]
            scheduled = np.array([k for k, sch in enumerate(schedules) if sch is not None], int)
            self.groups.append(_Group(engine, g.index.to_numpy(), np.array([w.per_wave for w in waves], float),
                                      np.array([w.full for w in waves], float), np.array([w.last for w in waves], float),
                                      g.input.to_numpy(float), g.output.to_numpy(float), scheduled,
                                      [schedules[k] for k in scheduled]))
        self.impossible = pd.DataFrame(impossible, columns=["row", "reason"])
        self.keep = keep
        self.waves = np.zeros(len(rows))
        self.preemptions = np.zeros(len(rows), int)   # requests preempted (preempting stacks' overflow rows)
        for g in self.groups:
            self.waves[g.index] = g.full + (g.last > 0)
            self.preemptions[g.index[g.scheduled]] = [sch.preemptions for sch in g.schedules]

    def predict(self, params: HardwareParams):
        """(latency_s, ttft_s) per kept row (order of ``rows[keep]``), differentiable in ``params``."""
        lat, ttft, index = [], [], []
        for g in self.groups:
            latency, wave = static_batch_in_waves(g.engine, params, g.per_wave, g.full, g.last, g.prompt, g.output)
            # The first wave's prefill gives the first token of the requests in it.
            first = wave.prefill_s
            if len(g.scheduled):
                timed = scheduled_time(g.engine, params, g.schedules)
                latency = latency.at[g.scheduled].set(timed.e2e_s)
                first = first.at[g.scheduled].set(timed.first_prefill_s)
            lat.append(latency)
            ttft.append(first)
            index.append(g.index)
        order = np.argsort(np.concatenate(index))
        return jnp.concatenate(lat)[order], jnp.concatenate(ttft)[order]

    def measured(self):
        kept = self.rows[self.keep]
        return kept.latency_s.to_numpy(), kept.ttft_s.to_numpy()
