"""Trace-fit recovery: can a fit through the simulator find known parameters from a request trace?

    python calibration/trace_recovery.py      # about 3 min on 2 cores

For utilisations 0.3, 0.5 and 0.8 of the engine's saturated throughput: simulate a Poisson stream of
chat requests (Llama-3.1-8B on one H100, vLLM stack) with two parameters moved away from the
shipped values (host overhead x1.6, memory efficiency x0.85), write it as a request trace, then fit
those two parameters back from the shipped values with ``calibrate.trace_fit.calibrate_trace``
(noise-weighted summaries of the replay smoothed over log-shifts, three starts: its defaults) and report the
recovery error and whether the 90% interval covers the truth. The simulator that made the trace is the
one that fits it, so this measures the fit and its gradients, not the model: the model's error
against real engines is what ``fit_stacks.py`` reports. Writes ``results/trace_recovery.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hermes_jax.calibrate.trace_fit import calibrate_trace
from hermes_jax.calibrate.traces import RequestTrace
from hermes_jax.hardware.catalog import get_hardware
from hermes_jax.sim.scenario import parse_scenario
from hermes_jax.sim.simulate import simulate

OUT = Path(__file__).resolve().parent / "results" / "trace_recovery.md"
ENGINE = {"model": "llama-3.1-8b", "hardware": "h100-sxm", "stack": "vllm", "max_batch_size": 64}
NAMES = ["host_overhead_s", "memory_efficiency"]
SCALE = {"host_overhead_s": 1.6, "memory_efficiency": 0.85}
LENGTHS = {"input_tokens": {"dist": "lognormal", "median": 400, "sigma": 0.5},
           "output_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.5}}
DT, REQUESTS = 0.01, 240


def scenario(rate: float, requests: int, truth: dict | None = None):
    engine = {"name": "e", **ENGINE, **({"hardware_overrides": truth} if truth else {})}
    return parse_scenario({"simulation": {"dt_s": DT, "horizon_s": requests / rate + 120.0, "seed": 1},
                           "engine": [engine],
                           "client": [{"name": "c", "engine": "e", "max_requests": requests,
                                       "arrival": {"process": "poisson", "rate_per_s": rate}, **LENGTHS}]})


def main() -> None:
    shipped = get_hardware(ENGINE["hardware"], stack=ENGINE["stack"]).params
    truth = {n: float(getattr(shipped, n)) * SCALE[n] for n in NAMES}
    # saturated throughput: every request at once
    burst = simulate(scenario(1000.0, REQUESTS, truth)).requests
    capacity = REQUESTS / float(burst.finish_s.max())
    lines = ["# Trace-fit recovery (written by calibration/trace_recovery.py)", "",
             f"{ENGINE['model']} on {ENGINE['hardware']}, {ENGINE['stack']} stack, {REQUESTS} Poisson requests "
             f"(lognormal lengths, median 400 in / 120 out), dt {DT} s; saturated throughput {capacity:.2f} req/s. "
             f"Truth: {', '.join(f'{n} = {v:.4g} ({SCALE[n]}x shipped)' for n, v in truth.items())}; the fit starts "
             "from the shipped values.", "",
             "| utilisation | rate (req/s) | parameter | truth | fitted | error | 90% interval | covers | fit time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for util in (0.3, 0.5, 0.8):
        rate = util * capacity
        df = simulate(scenario(rate, REQUESTS, truth)).requests
        done = df[df.status == "finished"]
        rows = done.rename(columns={"input_tokens": "input", "output_tokens": "output"})[
            ["arrival_s", "input", "output", "ttft_s", "e2e_s"]].assign(itl_s=np.nan, source="simulated",
                                                                       record=np.arange(len(done)))
        trace = RequestTrace(rows.reset_index(drop=True), format="simulated")
        t0 = time.perf_counter()
        cal = calibrate_trace(trace, ENGINE, NAMES, dt_s=DT)
        seconds = time.perf_counter() - t0
        for n in NAMES:
            fitted = float(cal.fit.value(n))
            lo, hi = (float(x) for x in cal.fit.interval90[n])
            lines.append(f"| {util} | {rate:.2f} | {n} | {truth[n]:.4g} | {fitted:.4g} | "
                         f"{(fitted / truth[n] - 1) * 100:+.1f}% | [{lo:.3g}, {hi:.3g}] | "
                         f"{'yes' if lo <= truth[n] <= hi else 'no'} | {seconds:.0f} s |")
        print(cal.errors().round(4).to_string(index=False), flush=True)
        for w in cal.fit.warnings:
            print("warning:", w)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
