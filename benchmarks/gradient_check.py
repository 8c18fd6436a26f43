"""Gradient estimators against the true slope of the exact simulation; writes docs/gradients.md and
benchmarks/results/gradients.json.

True slope (as defined in issue 14): for one parameter at a time, the least-squares slope of a
metric of the exact event-driven reference (``sim.reference``, no time steps, float64 event times)
over log-shifts of the parameter of +-0.02, +-0.06 and +-0.1, on common random numbers (each
seed's workload replayed for every shift), averaged over seeds 0, 1 and 2; its noise is the
standard error over the seeds. Estimators run on the time-stepped simulator
(``sim.differentiable.DifferentiableSim``) for the same seeds, one gradient per seed over every
parameter of the case at once, averaged. Metrics are defined identically on both sides (quantiles:
the kernel-smoothed order statistic; throughput: finished output tokens over a log-sum-exp makespan).

A cell passes when the estimate is within 10% of the true slope, or within twice the true slope's
noise where that is larger (a slope indistinguishable from zero cannot be matched to 10%).

    python benchmarks/gradient_check.py            # about 25 min on 2 cores
    python benchmarks/gradient_check.py --quick    # one load, one seed: a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "docs" / "gradients.md"
OUT_JSON = ROOT / "benchmarks" / "results" / "gradients.json"
SHIFTS = (-0.1, -0.06, -0.02, 0.02, 0.06, 0.1)
SEEDS = (0, 1, 2)
HORIZON, DT = 60.0, 0.05
METRICS = ("ttft_mean_s", "ttft_p90_s", "tpot_mean_s", "tpot_p90_s", "e2e_mean_s", "e2e_p90_s", "throughput_tokens_s")
UTILISATIONS = (0.3, 0.5, 0.8, 0.95)

# (name, scenario overrides, utilisations, parameters): the default scenario's engine unless overridden
CASES = [
    ("single engine", [], UTILISATIONS, ("compute_efficiency", "hbm_bandwidth", "host_overhead_s", "hbm_capacity")),
    ("KV-bound (3072 in / 512 out)", ["client.chat.input_tokens.value=3072", "client.chat.output_tokens.value=512"],
     (0.8, 0.95), ("hbm_bandwidth", "hbm_capacity")),
] + [
    (f"2 replicas TP2, {router}", ["engine.e0.replicas=2", "engine.e0.tp=2", f"engine.e0.router={router}"], (0.8,),
     ("hbm_bandwidth", "intra_link_bandwidth", "host_overhead_s"))
    for router in ("round_robin", "least_outstanding", "least_kv")
]


def scenario_for(overrides, rate, seed):
    from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario
    return load_scenario(str(DEFAULT_SCENARIO), [f"simulation.horizon_s={HORIZON}", f"simulation.dt_s={DT}",
                                                 f"simulation.seed={seed}", f"client.chat.arrival.rate_per_s={rate}",
                                                 *overrides])


def reference_run(job):
    """Metrics of the exact reference for one (case, rate, seed, parameter, shift)."""
    overrides, rate, seed, name, shift = job
    from hermes_jax.sim.build import build_group
    from hermes_jax.sim.differentiable import frame_summaries
    from hermes_jax.sim.reference import simulate_reference
    sc = scenario_for(overrides, rate, seed)
    entry = sc.engines[0]
    params = build_group(entry).params
    if name:
        params = type(params)({**params.log, name: params.log[name] + shift})
    return job, frame_summaries(simulate_reference(sc, params={entry.name: params}).requests)


def saturation_rate(overrides) -> float:
    """Requests/s one engine group completes under overload (finishes between 1/3 and the end of the horizon)."""
    from hermes_jax.sim.simulate import simulate
    df = simulate(scenario_for(overrides, 60.0, 0)).requests
    t = df.finish_s.to_numpy(float)
    return float(((t > HORIZON / 3) & (t <= HORIZON)).sum() / (HORIZON * 2 / 3))


def estimates(overrides, rate, names, estimator, seeds):
    """Per seed: {metric: {param: d metric / d ln param}} from one Jacobian, and its wall time."""
    import jax
    from hermes_jax.sim.differentiable import DifferentiableSim
    from hermes_jax.sim.smoothing import Smoothed
    out, seconds = [], []
    for seed in seeds:
        model = DifferentiableSim(scenario_for(overrides, rate, seed), estimator=estimator)
        f = model.function(list(names), metrics=METRICS)
        jac_fn = jax.jacfwd(f) if isinstance(model.estimator, Smoothed) else jax.jacrev(f)
        jac = np.asarray(jac_fn(model.x0(names)))          # compile (shared across seeds of one bucket)
        start = time.perf_counter()
        jac = np.asarray(jac_fn(model.x0(names)))
        seconds.append(time.perf_counter() - start)
        out.append({m: {k: float(jac[i, j]) for j, k in enumerate(names)} for i, m in enumerate(METRICS)})
    return out, float(np.median(seconds))


def forward_seconds(overrides, rate) -> float:
    import jax
    from hermes_jax.sim.differentiable import DifferentiableSim
    model = DifferentiableSim(scenario_for(overrides, rate, 0))
    f = jax.jit(model.function(["hbm_bandwidth"], metrics=METRICS))
    x = model.x0(["hbm_bandwidth"])
    f(x).block_until_ready()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="first case, one load, one seed (smoke run)")
    ap.add_argument("--workers", type=int, default=2, help="processes for the reference runs")
    ap.add_argument("--from-json", action="store_true", help="rewrite docs/gradients.md from the last JSON")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(OUT_JSON.read_text())
        write_markdown(saved["records"], saved["seeds"])
        return
    from hermes_jax.sim.estimators import Anchored, Pathwise
    from hermes_jax.sim.smoothing import Smoothed
    cases = CASES[:1] if args.quick else CASES
    seeds = SEEDS[:1] if args.quick else SEEDS
    start = time.time()
    plan = []
    for case, overrides, utils, names in cases:
        sat = saturation_rate(overrides)
        for u in (utils[1:2] if args.quick else utils):
            plan.append((case, overrides, u, sat * u, names))
        print(f"{case}: saturation {sat:.2f} req/s ({time.time() - start:.0f} s)", flush=True)
    jobs = [(tuple(o), rate, seed, name, shift) for _, o, _, rate, names in plan for seed in seeds
            for name in names for shift in SHIFTS]
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        truth_runs = dict(pool.map(reference_run, jobs, chunksize=4))
    print(f"{len(jobs)} reference runs ({time.time() - start:.0f} s)", flush=True)
    records = []
    for case, overrides, u, rate, names in plan:
        row = {"case": case, "seeds": list(seeds), "utilisation": u, "rate_per_s": rate, "parameters": list(names), "truth": {},
               "truth_se": {}, "estimators": {}}
        for m in METRICS:
            for k in names:
                slopes = [np.polyfit(SHIFTS, [truth_runs[(tuple(overrides), rate, s, k, d)][m] for d in SHIFTS], 1)[0]
                          for s in seeds]
                row["truth"].setdefault(m, {})[k] = float(np.mean(slopes))
                row["truth_se"].setdefault(m, {})[k] = float(np.std(slopes, ddof=1) / np.sqrt(len(slopes))) \
                    if len(slopes) > 1 else float("nan")
        path_estimators = [Anchored(), Pathwise()] if case == "single engine" else []
        smoothed = [("smoothed", None), ("smoothed, one scale (0.06)", Smoothed(scales=(0.06,)))]
        for label, est in smoothed + [(e.name, e) for e in path_estimators]:
            per_seed, seconds = estimates(overrides, rate, names, est, seeds)
            row["estimators"][label] = {"mean": {m: {k: float(np.mean([p[m][k] for p in per_seed])) for k in names}
                                                 for m in METRICS},
                                        "seed_sd": {m: {k: float(np.std([p[m][k] for p in per_seed])) for k in names}
                                                    for m in METRICS},
                                        "seconds": seconds}
        row["forward_seconds"] = forward_seconds(overrides, rate)
        records.append(row)
        print(f"{case} u={u}: estimators done ({time.time() - start:.0f} s)", flush=True)
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps({"shifts": SHIFTS, "seeds": seeds, "horizon_s": HORIZON, "dt_s": DT,
                                    "records": records}, indent=1))
    write_markdown(records, seeds, quick=args.quick)
    print(f"wrote {OUT_MD} and {OUT_JSON} ({time.time() - start:.0f} s)")


def passes(est, truth, se, est_se=0.0) -> bool:
    """Within 10% of the truth, or within twice the combined standard error of the two seed means."""
    noise = np.hypot(se if np.isfinite(se) else 0.0, est_se)
    return abs(est - truth) <= max(0.1 * abs(truth), 2 * noise, 1e-12)


def write_markdown(records, seeds, quick=False):
    lines = ["# Gradients of simulated metrics against the exact simulation's true slope", "",
             "Written by `python benchmarks/gradient_check.py` (do not edit by hand; numbers also in "
             "`benchmarks/results/gradients.json`)." + (" **Quick run: one load, one seed.**" if quick else ""), "",
             f"True slope: d metric / d ln parameter as the least-squares slope of the exact event-driven reference "
             f"over log-shifts {', '.join(f'{s:+g}' for s in SHIFTS)} of one parameter at a time, common random numbers, "
             f"mean over seeds {list(seeds)} (+- its standard error). Horizon {HORIZON:g} s; Llama-3.1-8B on H100 "
             "(the bundled default engine), 512 in / 128 out tokens unless the case says otherwise; load as a share "
             "of the rate the engine completes under overload. Estimators on the time-stepped simulator, same seeds. "
             "A cell passes within 10% of the truth or within twice the combined standard error of the two seed means.", ""]
    est_names = sorted({e for r in records for e in r["estimators"]}, key=lambda e: (not e.startswith("smoothed"), e))
    lines += ["## Summary", "", "| estimator | cells | within target | strictly within 10% | of the cells with a true slope "
              "distinguishable from 0: within 10% | median abs. error vs truth | gradient / forward time |",
              "|---|---|---|---|---|---|---|"]
    for e in est_names:
        ok, n, errs, cost, strict, sig, sig_ok = 0, 0, [], [], 0, 0, 0
        for r in records:
            if e not in r["estimators"]:
                continue
            cost.append(r["estimators"][e]["seconds"] / r["forward_seconds"])
            for m, per in r["truth"].items():
                for k, t in per.items():
                    v = r["estimators"][e]["mean"][m][k]
                    n += 1
                    ok += passes(v, t, r["truth_se"][m][k], est_se(r, e, m, k))
                    close = abs(v - t) <= 0.1 * abs(t) + 1e-12
                    strict += close
                    if abs(t) > 2 * r["truth_se"][m][k] and abs(t) > 1e-12:
                        sig += 1
                        sig_ok += close
                    if abs(t) > 0:
                        errs.append(abs(v / t - 1))
        lines.append(f"| {e} | {n} | {ok} ({ok / max(n, 1):.0%}) | {strict} ({strict / max(n, 1):.0%}) | "
                     f"{sig_ok} of {sig} ({sig_ok / max(sig, 1):.0%}) | {np.median(errs):.1%} | "
                     f"{np.median(cost):.1f}x (median over cases) |")
    lines += ["", "Gradient cost: wall time of one eager (not jitted) Jacobian call of all metrics over all of the "
              "case's parameters (smoothed: forward mode over one vmapped batch of runs; path estimators: reverse "
              "mode through the scan), Python tracing included, over one jitted forward run of the same model, "
              "after compilation, on this machine. Jitted costs against the number of requests: "
              "`benchmarks/results/gradient_cost.md` (`python benchmarks/bench_gradient_cost.py`).", ""]
    for r in records:
        lines += [f"## {r['case']}, load {r['utilisation']:.2f} ({r['rate_per_s']:.2f} req/s)", "",
                  "| metric | parameter | true slope | " + " | ".join(est_names_in(r, est_names)) + " |",
                  "|---|---|---|" + "---|" * len(est_names_in(r, est_names))]
        for m in METRICS:
            for k in r["parameters"]:
                t, se = r["truth"][m][k], r["truth_se"][m][k]
                cells = []
                for e in est_names_in(r, est_names):
                    v = r["estimators"][e]["mean"][m][k]
                    mark = "" if passes(v, t, se, est_se(r, e, m, k)) else " **x**"
                    ratio = f" ({v / t:.2f}x)" if abs(t) > 1e-12 else ""
                    cells.append(f"{v:.4g}{ratio}{mark}")
                lines.append(f"| {m} | {k} | {t:.4g} +- {se:.2g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Reading the table", "",
              "- **smoothed** (`sim.smoothing.Smoothed`, the default of `DifferentiableSim`): the slope over "
              "log-shifts +-0.03, +-0.06, +-0.1 along Hadamard directions, from forward runs on the same requests. "
              "It sees every decision the parameters move (batch composition, admission, preemption, routing, which "
              "requests finish, KV blocks), which is why it follows the truth where the path estimators do not.",
              "- **smoothed, one scale**: the same with a single pair per parameter at +-0.06: 2P + 1 runs, "
              "cheaper and noisier.",
              "- **anchored** and **pathwise**: derivatives along the sample path (decisions held fixed); pathwise "
              "counts the whole busy period in each wait, anchored only the iteration a request arrived in. Both miss "
              "the feedback of shorter iterations on batch size, so they fall further behind as load grows.",
              "- Cells marked **x** miss the target; the JSON has per-seed spreads (`seed_sd`). The weak "
              "sensitivities (host overhead, link bandwidth behind two replicas) carry seed noise of 20-40% in the "
              "truth itself: there the estimate is within the noise but not always within 10%.",
              "- Cost: the smoothed estimator runs 1 + 2 P x (number of scales) simulations per Jacobian (25 for "
              "the four parameters of the single-engine case); one scale gives 2P + 1. On one parameter the "
              "default costs about 3-7 forward runs. It needs no reverse pass, so its memory is that of the lanes.",
              ""]
    OUT_MD.write_text("\n".join(lines))


def est_se(record, estimator, metric, name) -> float:
    """Standard error of an estimator's seed mean."""
    n = len(record.get("seeds", SEEDS))
    return record["estimators"][estimator]["seed_sd"][metric][name] * np.sqrt(n / max(n - 1, 1)) / np.sqrt(n)


def est_names_in(record, names):
    return [e for e in names if e in record["estimators"]]


if __name__ == "__main__":
    main()
