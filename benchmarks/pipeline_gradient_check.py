"""Slopes of a pipeline scenario's metrics against the exact simulation's true slope; writes
docs/pipeline_gradients.md and benchmarks/results/pipeline_gradients.json.

Scenario: the bundled RAG + KV-retrieval pipeline (``hermes_jax/scenarios/rag_kv.toml``: embed and
vector search on CPU pools, rerank on an accelerator, conversation KV from a CXL tier, one
Llama-3.1-8B engine), horizon 60 s, at its own arrival rates and at 1.5x them. Parameters: the
engine's HBM bandwidth and GEMM efficiency, the search pool's per-core FLOP/s, the rerank device's
bf16 peak and the CXL tier's bandwidth.

True slope (as in benchmarks/gradient_check.py): for one parameter at a time, the least-squares
slope of a metric of the exact event-driven pipeline reference (``simulate(..., reference=True)``)
over log-shifts of +-0.02, +-0.06, +-0.1, common random numbers, mean over seeds 0-2 (+- its standard
error). Estimate: ``pipeline.slopes.smoothed_slopes`` on the time-stepped pipeline (the library's
default estimator design over every parameter at once), same seeds, averaged. A cell passes within
10% of the truth or within twice the combined standard error.

    python benchmarks/pipeline_gradient_check.py      # about 8 min on 2 cores
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hermes_jax.pipeline.slopes import Knob, smoothed_slopes
from hermes_jax.sim import load_scenario
from hermes_jax.sim.differentiable import frame_summaries
from hermes_jax.sim.simulate import simulate
from hermes_jax.sim.workload import build_workload

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "hermes_jax" / "scenarios" / "rag_kv.toml"
OUT_MD = ROOT / "docs" / "pipeline_gradients.md"
OUT_JSON = ROOT / "benchmarks" / "results" / "pipeline_gradients.json"
SHIFTS = (-0.1, -0.06, -0.02, 0.02, 0.06, 0.1)
SEEDS = (0, 1, 2)
LOADS = (1.0, 1.5)
METRICS = ("ttft_mean_s", "ttft_p90_s", "tpot_mean_s", "e2e_mean_s", "e2e_p90_s", "throughput_tokens_s")
KNOBS = (Knob("engine", "llm", "hbm_bandwidth"), Knob("engine", "llm", "compute_efficiency"),
         Knob("resource", "search-cpu", "cpu_core_flops"), Knob("resource", "rerank-gpu", "peak_flops", 1),
         Knob("resource", "cxl", "tier_bandwidth", 1))


def scenario(load: float, seed: int):
    return load_scenario(str(SCENARIO), ["simulation.horizon_s=60", f"simulation.seed={seed}",
                                         f"client.rag.arrival.rate_per_s={4.0 * load}",
                                         f"client.chat.arrival.rate_per_s={3.0 * load}"])


def true_slopes(load: float, seed: int) -> dict:
    """metric -> knob label -> least-squares slope of the exact reference over SHIFTS."""
    sc = scenario(load, seed)
    workload = build_workload(sc)
    out = {m: {} for m in METRICS}
    for knob in KNOBS:
        base = knob.value(sc)
        values = [frame_summaries(simulate(knob.scaled(sc, d, base), workload, reference=True).requests)
                  for d in SHIFTS]
        x = np.asarray(SHIFTS)
        for m in METRICS:
            y = np.array([v[m] for v in values])
            out[m][knob.label] = float(np.polyfit(x, y, 1)[0])
    return out


def passes(est, truth, se, est_se) -> bool:
    return abs(est - truth) <= max(0.1 * abs(truth), 2 * np.hypot(se, est_se), 1e-12)


def main() -> None:
    records = []
    for load in LOADS:
        start = time.perf_counter()
        truths = [true_slopes(load, seed) for seed in SEEDS]
        truth_s = time.perf_counter() - start
        start = time.perf_counter()
        estimates = [smoothed_slopes(scenario(load, seed), KNOBS) for seed in SEEDS]
        estimate_s = time.perf_counter() - start
        start = time.perf_counter()
        sc = scenario(load, 0)
        simulate(sc)
        forward_s = time.perf_counter() - start
        for m in METRICS:
            for knob in KNOBS:
                t = np.array([tr[m][knob.label] for tr in truths])
                e = np.array([es.slopes[m][knob.label] for es in estimates])
                se = float(t.std(ddof=1) / np.sqrt(len(t)))
                ese = float(e.std(ddof=1) / np.sqrt(len(e)))
                records.append({"load": load, "metric": m, "parameter": knob.label, "truth": float(t.mean()),
                                "truth_se": se, "estimate": float(e.mean()), "estimate_se": ese,
                                "passes": bool(passes(e.mean(), t.mean(), se, ese))})
        print(f"load x{load}: truth {truth_s:.0f} s, estimates {estimate_s:.0f} s ({estimates[0].runs} runs each), "
              f"one forward run {forward_s:.1f} s", flush=True)
        records.append({"load": load, "runs_per_gradient": estimates[0].runs, "forward_s": forward_s,
                        "gradient_s": estimate_s / len(SEEDS)})
    cells = [r for r in records if "metric" in r]
    ok = sum(r["passes"] for r in cells)
    distinct = [r for r in cells if abs(r["truth"]) > 2 * r["truth_se"] and r["truth"] != 0]
    strict = sum(abs(r["estimate"] - r["truth"]) <= 0.1 * abs(r["truth"]) for r in distinct)
    costs = [r for r in records if "runs_per_gradient" in r]
    lines = ["# Pipeline slopes against the exact simulation's true slope", "",
             "Written by `python benchmarks/pipeline_gradient_check.py` (do not edit by hand; numbers also in "
             "`benchmarks/results/pipeline_gradients.json`). Scenario `rag_kv.toml` (RAG: embed, vector search on "
             "CPU pools, rerank on an H100; chat: conversation KV from CXL; one Llama-3.1-8B engine), horizon 60 s, "
             "at its arrival rates (4 + 3 req/s) x" + ", x".join(f"{x:g}" for x in LOADS) + ".", "",
             "True slope: least-squares slope of the exact event-driven pipeline reference over log-shifts "
             f"{', '.join(f'{s:+g}' for s in SHIFTS)} of one parameter at a time, common random numbers, mean over "
             f"seeds {list(SEEDS)} (+- standard error). Estimate: `pipeline.slopes.smoothed_slopes` on the time-stepped "
             "pipeline (antithetic log-shifts of every parameter at scales 0.03, 0.06, 0.1), same seeds. A cell passes "
             "within 10% of the truth or within twice the combined standard error.", "",
             f"**{ok} of {len(cells)} cells pass; of the {len(distinct)} whose true slope is distinguishable from 0, "
             f"{strict} are within 10%.** Cost: " + "; ".join(
                 f"x{c['load']:g}: {c['runs_per_gradient']} forward runs, {c['gradient_s']:.1f} s per gradient against "
                 f"{c['forward_s']:.2f} s per forward run" for c in costs) + ".", "",
             "| load | metric | parameter | true slope | smoothed | ratio | passes |", "|---|---|---|---|---|---|---|"]
    for r in cells:
        ratio = r["estimate"] / r["truth"] if r["truth"] else float("nan")
        lines.append(f"| x{r['load']:g} | {r['metric']} | {r['parameter']} | {r['truth']:.4g} +- {r['truth_se']:.2g} | "
                     f"{r['estimate']:.4g} | {ratio:.2f}x | {'yes' if r['passes'] else '**no**'} |")
    OUT_MD.write_text("\n".join(lines) + "\n")
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(records, indent=1))
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
