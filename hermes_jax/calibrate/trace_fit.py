"""Fit a stack's parameters to a per-request trace, through the serving simulator.

The trace's own requests (arrival times, prompt and output lengths) are replayed by the
time-stepped simulator (``sim.differentiable.DifferentiableSim``, common random numbers: the same
requests every call), and the parameters are fitted so that its latency summaries match the
measured ones: mean, median and p90 of TTFT and end-to-end latency, mean and median time per output
token. Summaries, not single requests, because one request's latency jumps when a scheduling
decision flips, while a summary over hundreds moves smoothly; quantiles on both sides use the same
kernel-smoothed order statistic.

Each summary still jitters as decisions flip, and by very different amounts: on a replay of 240
requests at utilisation 0.5, the TTFT summaries move by 1-3% for a 0.5% change of a parameter that
moves them 0.1% smoothly, while TPOT and end-to-end summaries are smooth to 0.05%. The fit weights
every summary by its jitter (``summary_noise``: the scatter of the replayed summaries about their
linear trend over small random log-shifts of the fitted parameters) and reports intervals that are
at least that noise; unweighted, it chased the TTFT jitter and put host overhead 24% off with an
interval of +-1.3%.

Assumption: the engine configuration (model, device, parallelism, batch limits, stack) is known;
only the named parameters are unknown. Derivatives are the simulator's default estimator's (the
slope over small log-shifts, ``sim.smoothing.Smoothed``, which sees scheduling decisions move); a
fit that leaves requests unfinished says so in its warnings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..hardware.params import FIELDS
from ..sim.differentiable import DifferentiableSim, soft_quantile
from ..sim.scenario import parse_scenario
from ..sim.smoothing import Smoothed
from ..sim.workload import Workload
from .fit import Bound, FitResult, LogSquared, Prior, fit_parameters
from .report import fitted_profile, parameter_lines, write_report
from .traces import RequestTrace

TRACE_METRICS = ("ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "tpot_mean_s", "tpot_p10_s", "tpot_p50_s", "tpot_p90_s",
                 "e2e_mean_s", "e2e_p50_s", "e2e_p90_s")
NOISE_RUNS, NOISE_WIDTH, NOISE_FLOOR = 24, 0.02, 1e-4   # log-shifts probing each summary's jitter, its floor
REPLAY_ROWS = 32                                         # vmapped replays are padded to a multiple of this
CHI2_90 = (2.71, 4.61, 6.25, 7.78, 9.24, 10.64)          # 90% quantiles of chi-square with 1..6 degrees of freedom


def trace_workload(trace: RequestTrace) -> Workload:
    """The trace's requests as a simulator workload (arrival order; one client, ``trace``)."""
    rows = trace.rows
    if rows.empty:
        raise ConfigError(f"{trace.format} trace: no completed requests to replay")
    if rows.arrival_s.isna().any():
        raise ConfigError(f"{rows.source.iloc[0]}: the trace has no arrival times ({trace.format} does not record "
                          "them); a trace fit replays arrivals, so give a trace that has them")
    rows = rows.sort_values("arrival_s", kind="stable")
    return Workload(arrival_s=rows.arrival_s.to_numpy(float), input_tokens=rows.input.to_numpy(int),
                    output_tokens=np.maximum(rows.output.to_numpy(int), 1), client=np.zeros(len(rows), int),
                    client_names=("trace",))


def summary_noise(sim: DifferentiableSim, names: Sequence[str], runs: int = NOISE_RUNS, width: float = NOISE_WIDTH,
                  seed: int = 0, floor: float = NOISE_FLOOR) -> np.ndarray:
    """Jitter (sd of the log, one per TRACE_METRICS entry) of each replayed summary at ``sim.params``:
    the residual scatter of ``runs`` forward runs at uniform log-shifts of ``names`` within
    +-``width`` about a linear fit in the shifts (common random numbers: the same requests)."""
    shifts = np.random.default_rng(seed).uniform(-width, width, (runs, len(names)))
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(_replays(sim, names, shifts))                                          # (runs, M)
        design = np.column_stack([np.ones(runs), shifts])
        coef, *_ = np.linalg.lstsq(design, logs, rcond=None)
        sd = np.sqrt(((logs - design @ coef) ** 2).sum(0) / max(runs - design.shape[1], 1))
    # a summary with no log (0 s: no output token after the first) gets the floor; the fit itself
    # then refuses it, naming the row
    return np.where(np.isfinite(sd), np.maximum(sd, floor), floor)


def _replays(sim: DifferentiableSim, names: Sequence[str], shifts: np.ndarray) -> np.ndarray:
    """(len(shifts), len(TRACE_METRICS)) replayed summaries at log-shifts of ``names``: one vmapped call,
    its rows padded (with zero shifts) to a multiple of REPLAY_ROWS so the noise probe and the start
    screening share one program."""
    rows = len(shifts)
    padded = np.zeros((-(-rows // REPLAY_ROWS) * REPLAY_ROWS, len(names)))
    padded[:rows] = shifts
    out = sim.scaled_batch(names)(jnp.asarray(padded, sim.params.log[names[0]].dtype))
    return np.stack([np.asarray(out[k], np.float64)[:rows] for k in TRACE_METRICS], axis=1)


def screened_starts(sim: DifferentiableSim, names: Sequence[str], measured: np.ndarray, noise: np.ndarray, keep: int,
                    candidates: int = 32, spread: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """The ``keep`` log-shifts of ``names`` (from ``sim.params``) whose replays are closest to
    ``measured`` in units of ``noise``, among ``candidates`` uniform in +-``spread`` e-folds (one
    vmapped forward call); the replay is jagged at the noise scale, so a local fit from one start
    stops in the dip nearest to it."""
    shifts = np.random.default_rng(seed).uniform(-spread, spread, (candidates, len(names)))
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = (((np.log(_replays(sim, names, shifts)) - np.log(measured)) / noise) ** 2).sum(1)
    chi2 = np.where(np.isfinite(chi2), chi2, np.inf)
    return [shifts[i] for i in np.argsort(chi2)[:keep]]


def _merge_equivalent_fits(best: FitResult, fits: list[FitResult], rows: int) -> None:
    """Fits from other starts that match the summaries as well as the best one within the noise
    (chi-square in noise units within CHI2_90[P] of the best's) are as plausible: the interval of each
    parameter becomes the envelope of theirs, and a parameter they place apart is named."""
    p = len(best.names)
    chi2 = {id(f): 2 * rows * f.loss for f in fits}   # loss = mean of r^2 / 2 over the rows, r in noise units
    limit = chi2[id(best)] + CHI2_90[min(p, len(CHI2_90)) - 1]
    equivalent = [f for f in fits if chi2[id(f)] <= limit]
    if len(equivalent) < 2:
        return
    for n in best.names:
        lo = np.min([f.interval90[n][0] for f in equivalent], axis=0)
        hi = np.max([f.interval90[n][1] for f in equivalent], axis=0)
        values = [float(np.ravel(f.value(n))[0]) for f in equivalent]
        best.interval90[n] = (lo, hi)
        if max(values) > 1.05 * min(values):
            best.warnings.append(f"{n}: fits from {len(equivalent)} starts match the summaries equally well within "
                                 f"their noise at {min(values):.4g} .. {max(values):.4g}; the data do not pin it "
                                 "closer (the interval spans them)")


def measured_summaries(trace: RequestTrace, bandwidth: float = 0.02) -> np.ndarray:
    """The TRACE_METRICS of the measured requests, with the simulator's quantile surrogate."""
    r = trace.rows
    tpot = np.where(r.output > 1, (r.e2e_s - r.ttft_s) / np.maximum(r.output - 1, 1), 0.0)
    done = jnp.ones(len(r), bool)
    out = []
    for name in TRACE_METRICS:
        metric, stat = name[:-2].rsplit("_", 1)
        values = {"ttft": r.ttft_s.to_numpy(float), "tpot": tpot, "e2e": r.e2e_s.to_numpy(float)}[metric]
        out.append(float(np.mean(values)) if stat == "mean"
                   else float(soft_quantile(jnp.asarray(values), done, int(stat[1:]) / 100, bandwidth)))
    return np.array(out)


@dataclass
class TraceCalibration:
    """Parameters fitted to a trace's latency summaries, with the summaries before and after."""

    fit: FitResult
    summaries: pd.DataFrame       # metric, measured, before, after (s)
    requests: int
    finished_before: int
    finished_after: int

    stack: str = ""               # the engine's stack ("" : catalog values), whose profile the fit extends
    device: str = ""              # catalog device the trace ran on
    source: str = ""              # the trace file

    def errors(self) -> pd.DataFrame:
        s = self.summaries
        return s.assign(error_before_pct=(s.before / s.measured - 1) * 100, error_after_pct=(s.after / s.measured - 1) * 100)

    def write(self, out, stem: str | None = None) -> list:
        """Markdown and JSON report and a stack file (``--stack-file``) with this device's fitted values."""
        import datetime
        date = datetime.date.today().isoformat()
        err = self.errors()
        md = [f"# Trace fit: {self.stack or 'catalog values'} on {self.device} ({date})", "",
              f"{self.source}: {self.requests} requests; finished {self.finished_before} with the start values, "
              f"{self.finished_after} with the fit.", "", "| summary | measured (s) | before | after | replay jitter (weight 1/jitter) |",
              "|---|---|---|---|---|"]
        md += [f"| {r.metric} | {r.measured:.4g} | {r.error_before_pct:+.1f}% | {r.error_after_pct:+.1f}% | "
               f"{r.noise_pct:.3g}% |" for r in err.itertuples()]
        md += [""] + parameter_lines(self.fit)
        prov = {"summary": f"fitted to the latency summaries of {self.requests} requests of {self.source} on {date}",
                "fitted": ", ".join(self.fit.names), "warnings": " | ".join(self.fit.warnings) or "none"}
        profile = fitted_profile(self.stack or f"trace-{self.device}", self.device, self.fit, prov)
        record = {"summaries": err.to_dict("records"), "warnings": self.fit.warnings,
                  "parameters": {n: np.asarray(self.fit.value(n)).tolist() for n in self.fit.names}}
        return write_report(out, stem or f"{self.stack or 'catalog'}-{self.device}-trace", md, record, profile,
                            f"Written by hermes-jax calibrate --trace ({date}).")


def calibrate_trace(trace: RequestTrace, engine: Mapping, names: Sequence[str], *, dt_s: float = 0.01,
                    horizon_s: float | None = None, estimator=None, bounds: Mapping[str, Bound] | None = None,
                    priors: Mapping[str, Prior] | None = None, loss=None, steps: int = 0, polish_steps: int = 60,
                    extra_starts: int = 2, progress: Callable[[str], None] | None = None) -> TraceCalibration:
    """Fit ``names`` of the engine (an ``[[engine]]`` table: model, hardware, stack, tp, batch
    limits, ...) so that simulated latency summaries of the trace's requests match the measured ones.
    ``extra_starts`` screened starts (``screened_starts``) are fitted besides the engine's values;
    the best fit is kept, with the interval widened over equally good ones (``_merge_equivalent_fits``).
    ``estimator`` defaults to ``Smoothed(value="smoothed")``: the fitted value is the replay averaged
    over the estimator's log-shifts, whose dips at the noise scale are smoothed out (a fit of the
    plain replay stopped in one, 49% off the truth). ``steps`` Adam steps (default none: each is a
    whole simulation) before the Levenberg-Marquardt polish."""
    workload = trace_workload(trace)
    last = float(workload.arrival_s.max())
    horizon = horizon_s or last + 4 * float(trace.rows.e2e_s.max()) + 10.0
    scenario = parse_scenario({"simulation": {"dt_s": dt_s, "horizon_s": horizon, "seed": 0},
                               "engine": [{"name": "engine", **dict(engine)}],
                               "client": [{"name": "trace", "engine": "engine",
                                           "arrival": {"process": "poisson", "rate_per_s": 1.0},
                                           "input_tokens": {"dist": "fixed", "value": 1},
                                           "output_tokens": {"dist": "fixed", "value": 1}}]})
    names = list(names)
    scalar = all(n in FIELDS and FIELDS[n][0] == () for n in names)
    if estimator is None:   # a smoothed value needs the variables as the whole input: scalars (scaled)
        estimator = Smoothed(value="smoothed") if scalar else Smoothed()
    sim = DifferentiableSim(scenario, estimator=estimator, workload=workload)
    measured = measured_summaries(trace, sim.quantile_bandwidth)
    noise = summary_noise(sim, names)
    base = sim.params
    smoothed = isinstance(estimator, Smoothed) and estimator.value == "smoothed"
    if smoothed and not scalar:
        raise ConfigError(f"Smoothed(value='smoothed') fits scalar parameters only; {names} has a vector one")
    scaled = sim.scaled(names)

    def summaries(params):
        if smoothed:
            m = scaled(jnp.stack([params.log[n] - base.log[n] for n in names]))
        else:
            m = sim.metrics(params)
        return jnp.stack([m[k] for k in TRACE_METRICS]), m["finished"]

    def predict(params):
        return summaries(params)[0], measured

    starts = [sim.params]
    if extra_starts:
        starts += [base.replace(**{n: np.exp(np.asarray(base.log[n], np.float64) + d) for n, d in zip(names, shift)})
                   for shift in screened_starts(sim, names, measured, noise, extra_starts)]
    fits = [fit_parameters(predict, start, list(names), bounds=bounds, priors=priors, loss=loss or LogSquared(),
                           steps=steps, polish_steps=polish_steps, residual_sd=noise, progress=progress)
            for start in starts]
    result = min(fits, key=lambda f: f.loss)
    _merge_equivalent_fits(result, fits, len(measured))
    result.predicted_start = fits[0].predicted_start   # "before": the engine's values, whichever start won
    finished = [int(sim.metrics(p)["finished"]) for p in (sim.params, result.params)]   # plain counts
    n = len(workload)
    for label, k in zip(("start", "fit"), finished):
        if k < n:
            result.warnings.append(f"{n - k} of {n} requests unfinished at the horizon with the {label} values: "
                                   "their latencies are missing from the summaries")
    table = pd.DataFrame({"metric": TRACE_METRICS, "measured": measured, "before": result.predicted_start,
                          "after": result.predicted, "noise_pct": noise * 100})
    return TraceCalibration(result, table, n, *finished, stack=str(engine.get("stack", "")),
                            device=str(engine.get("hardware", "")), source=str(trace.rows.source.iloc[0]))
