"""A machine's sustained GEMM rate from measured time to first token, held out by engine.

A long prefill (LLM-Inference-Bench Fig. 21/22: 16 prompts of 1,024 tokens and one output token) is
one pass of large GEMMs; its time is set by what those GEMMs sustain on the machine: clocks under the
board's power limit and the GEMM library, not the serving engine around them (on the same A100s,
vLLM and TensorRT-LLM prefill Mistral-7B within 1.2% of each other). Kernel-level fits measured on
another board of the same die need not hold there: Vidur's A100 profiles reach 0.71 of the bf16 peak
on 4,096-token GEMMs, the A100-SXM4-40GB machines of LLM-Inference-Bench about 0.8, and a prefill
predicted with the first is 15-17% slow for every engine that ran on them.

``fit_gemm_ceiling`` fits ``compute_efficiency`` (the large-GEMM asymptote of the roofline's
efficiency curve; ``compute_half_flop``, its small-GEMM shape, is kept) of a stack on one device to
such runs. Used with runs of *other* engines only (``calibration/fit_stacks.py``), the engine's own
time to first token stays a held-out check. Assumption: the engines in the rows prefill each prompt
in one pass (vLLM 0.5, TensorRT-LLM); DeepSpeed-MII's Dynamic SplitFuse runs prompts in chunks, so
its time to first token measures smaller GEMMs and does not belong in ``rows``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from ..engine import EngineSpec
from ..errors import ConfigError
from ..hardware.catalog import default_catalog, get_hardware, same_die_devices
from ..models.config import get_model
from ..models.operators import Parallelism
from ..stacks import StackProfile, get_stack
from ..stacks.kv import kv_capacity, static_batch_in_waves, static_waves

NAME = "compute_efficiency"
BOUNDS = (0.05, 1.0)   # a share of the datasheet peak: sustained GEMMs cannot beat it
STEP = 1e-3            # e-folds of the central difference that gives the Jacobian of the interval


def first_token_seconds(profile: StackProfile | str, device: str, rows: pd.DataFrame) -> np.ndarray:
    """Predicted time to first token (s) of each row (canonical columns of ``readers.read_static_batch``):
    the prefill of the first wave the stack's KV rule admits, which samples every first token."""
    profile = get_stack(profile)
    hw = get_hardware(device, stack=profile)
    out = []
    for r in rows.itertuples():
        engine = EngineSpec(get_model(r.model), hw.spec, Parallelism(tp=int(r.tp)))
        waves = static_waves(engine, kv_capacity(engine, hw.params, profile), int(r.batch), int(r.input),
                             int(r.output))
        _, first = static_batch_in_waves(engine, hw.params, waves.per_wave, waves.full, waves.last, r.input, r.output)
        out.append(float(first.prefill_s))
    return np.asarray(out)


def with_device_values(profile: StackProfile, device: str, values: dict, provenance: dict[str, str]) -> StackProfile:
    """``profile`` whose table for ``device`` (its own, else the one its lookup falls back to) has
    ``values`` set and ``provenance`` added."""
    platform = str(default_catalog().get("device", device).get("platform", ""))
    current, _, _ = profile.values_for(device, same_die_devices(device), platform)
    prov = {**profile.provenance.get(device, {}), **provenance}
    return dataclasses.replace(profile, devices={**profile.devices, device: {**current, **values}},
                               provenance={**profile.provenance, device: prov})


@dataclass
class GemmCeiling:
    """The fitted large-GEMM efficiency of one device, with the runs it came from."""

    device: str
    start: float                 # compute_efficiency before (the profiles' mean value)
    value: float                 # fitted
    sd_log: float                # Laplace sd in e-folds (NaN with a single run: no residual to scale it)
    rows: pd.DataFrame           # the runs + predicted_before_s, predicted_after_s

    def apply(self, profile: StackProfile | str, note: str = "") -> StackProfile:
        """``profile`` with the fitted value on this device; its provenance says where it came from."""
        return with_device_values(get_stack(profile), self.device, {NAME: self.value}, {NAME: note or self.describe()})

    @property
    def interval90(self) -> tuple[float, float]:
        half = 1.6449 * self.sd_log
        return (self.value * np.exp(-half), self.value * np.exp(half)) if np.isfinite(half) else (np.nan, np.nan)

    @property
    def sources(self) -> str:
        """'trt-llm (3 runs), vllm (1 run)'."""
        counts = self.rows.groupby("stack").size()
        return ", ".join(f"{s} ({n} run{'s' * (n != 1)})" for s, n in counts.items())

    def describe(self) -> str:
        lo, hi = self.interval90
        interval = f", 90% interval [{lo:.3g}, {hi:.3g}]" if np.isfinite(lo) else ""
        err = np.abs(self.rows.predicted_after_s / self.rows.ttft_s - 1).mean() * 100
        err0 = np.abs(self.rows.predicted_before_s / self.rows.ttft_s - 1).mean() * 100
        return (f"{NAME} {self.value:.4g} (was {self.start:.4g}{interval}) fitted to time to first token of "
                f"{self.sources} on {self.device}: their MAPE {err0:.1f}% -> {err:.1f}%")


def fit_gemm_ceiling(profiles: Mapping[str, StackProfile | str] | StackProfile | str, device: str,
                     rows: pd.DataFrame) -> GemmCeiling:
    """Fit one ``compute_efficiency`` on ``device`` so that the predicted time to first token of ``rows``
    (their ``ttft_s``) matches in the least-squares log sense. Each row is predicted with the profile
    of its own stack (``profiles``: stack name -> profile, or one profile for every row) with that one
    value replaced: the other values (attention, elementwise, host) stay what each engine reaches."""
    rows = rows[(rows.hardware == device) & np.isfinite(rows.ttft_s)].reset_index(drop=True)
    if rows.empty:
        raise ConfigError(f"no time-to-first-token runs on {device} to fit {NAME} to")
    if not isinstance(profiles, Mapping):
        profiles = {s: profiles for s in set(rows["stack"])}
    missing = sorted(set(rows["stack"]) - set(profiles))
    if missing:
        raise ConfigError(f"time-to-first-token runs of {', '.join(missing)} on {device}: no profile given for them")
    profiles = {s: get_stack(p) for s, p in profiles.items()}
    groups = [(s, np.flatnonzero((rows["stack"] == s).to_numpy())) for s in sorted(set(rows["stack"]))]
    start = float(np.mean([get_hardware(device, stack=profiles[s]).params.natural()[NAME] for s, _ in groups]))
    measured = np.log(rows.ttft_s.to_numpy(float))

    def predict(log_value: float) -> np.ndarray:
        out = np.empty(len(rows))
        for stack, index in groups:
            trial = with_device_values(profiles[stack], device, {NAME: float(np.exp(log_value))}, {})
            out[index] = np.log(first_token_seconds(trial, device, rows.iloc[index]))
        return out

    def loss(log_value: float) -> float:
        return float(np.sum((predict(log_value) - measured) ** 2))

    found = minimize_scalar(loss, bounds=tuple(np.log(BOUNDS)), method="bounded", options={"xatol": 1e-4})
    x = float(found.x)
    jac = (predict(x + STEP) - predict(x - STEP)) / (2 * STEP)      # d ln t / d ln e, about -0.9
    resid = predict(x) - measured
    dof = len(rows) - 1
    sd = float(np.sqrt(np.sum(resid ** 2) / dof / np.sum(jac ** 2))) if dof > 0 else float("nan")
    before = np.concatenate([first_token_seconds(profiles[s], device, rows.iloc[i]) for s, i in groups])
    order = np.concatenate([i for _, i in groups])
    rows = rows.assign(predicted_before_s=before[np.argsort(order)], predicted_after_s=np.exp(predict(x)))
    return GemmCeiling(device, start, float(np.exp(x)), sd, rows)
