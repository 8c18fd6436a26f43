"""Cost of a gradient against a forward run, and how both grow with the requests. Writes
benchmarks/results/gradient_cost.md.

The bundled default engine at a fixed load (10 req/s, about 0.8 of saturation) over horizons of
25-200 s (about 250-2,000 requests); per horizon, the median wall time (after compilation) of one
forward run, of a smoothed Jacobian over one and over four parameters (every metric at once), and
of a reverse-mode gradient with the anchored path estimator, side by side in this process.

    python benchmarks/bench_gradient_cost.py      # about 6 min on 2 cores
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario
from hermes_jax.sim.differentiable import DifferentiableSim
from hermes_jax.sim.estimators import Anchored
from hermes_jax.sim.smoothing import Smoothed

OUT = Path(__file__).resolve().parent / "results" / "gradient_cost.md"
HORIZONS = (25.0, 50.0, 100.0, 200.0)
ONE = ["hbm_bandwidth"]
FOUR = ["compute_efficiency", "hbm_bandwidth", "host_overhead_s", "hbm_capacity"]


def timed(fn, x, repeats=3):
    jax.block_until_ready(fn(x))     # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    rows = []
    for horizon in HORIZONS:
        sc = load_scenario(str(DEFAULT_SCENARIO), [f"simulation.horizon_s={horizon}", "simulation.dt_s=0.05",
                                                   "client.chat.arrival.rate_per_s=10"])
        smooth = DifferentiableSim(sc, estimator=Smoothed())
        anchored = DifferentiableSim(sc, estimator=Anchored())
        n = int(smooth.rows.size)
        f1 = smooth.function(ONE, metrics=["e2e_mean_s"])
        forward = timed(jax.jit(lambda x: f1(x)), smooth.x0(ONE))
        one = timed(jax.jit(jax.jacfwd(smooth.function(ONE))), smooth.x0(ONE))
        four = timed(jax.jit(jax.jacfwd(smooth.function(FOUR))), smooth.x0(FOUR))
        rev = timed(jax.jit(jax.grad(lambda x: anchored.function(ONE, metrics=["e2e_mean_s"])(x)[0])), anchored.x0(ONE))
        rows.append((horizon, n, forward, one, four, rev))
        print(rows[-1], flush=True)
    lines = ["# Gradient cost against a forward run (written by benchmarks/bench_gradient_cost.py)", "",
             "Default engine, 10 req/s, dt 0.05 s; median of 3 timed calls after compilation, this machine.", "",
             "| horizon (s) | requests | forward (s) | smoothed, 1 parameter (s, x forward) | smoothed, 4 parameters "
             "(s, x forward) | anchored reverse mode, 1 parameter (s, x forward) |", "|---|---|---|---|---|---|"]
    for h, n, f, one, four, rev in rows:
        lines.append(f"| {h:g} | {n} | {f:.3f} | {one:.3f} ({one / f:.1f}x) | {four:.3f} ({four / f:.1f}x) | "
                     f"{rev:.3f} ({rev / f:.1f}x) |")
    n0, f0 = rows[0][1], rows[0][3]
    growth = [(n / n0, one / f0) for _, n, _, one, _, _ in rows]
    lines += ["", "Growth of the one-parameter smoothed Jacobian with the requests (relative to the shortest horizon): "
              + ", ".join(f"{a:.1f}x requests -> {b:.1f}x time" for a, b in growth) + "."]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
