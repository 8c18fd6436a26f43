"""Design search at equal simulator evaluations: gradient searches (SQP and trust-region SLP on
smoothed gradients) against random search and CMA-ES, on a single engine and on a RAG pipeline
(CPU cores for vector search against the GPU). Writes benchmarks/results/design.md and design.json.

For each problem, every method runs with several seeds under the same budget of simulator
evaluations (one configuration simulated once = one evaluation; a smoothed Jacobian costs its
lanes). The best design is the cheapest feasible one any run found; the table reports, per method,
the evaluations each run needed to find a feasible design within 1% of it (median over seeds; a
run that never did counts as the budget, marked >).

    python benchmarks/bench_design.py          # about 20 min on 2 cores
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hermes_jax.design import (Constraint, DesignProblem, Variable, cmaes_search, gradient_search, random_search,
                               trust_region_search)
from hermes_jax.design.pipeline import PipelineDesignProblem
from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario
from hermes_jax.sim.differentiable import DifferentiableSim
from hermes_jax.sim.smoothing import Smoothed

OUT = Path(__file__).resolve().parent / "results"
BUDGET, SEEDS = 300, (0, 1, 2)
SLO = [Constraint("ttft_p99_s", upper=0.3), Constraint("tpot_p99_s", upper=0.03)]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
PROBLEMS = {
    "compute + bandwidth (512 in / 128 out, 8 req/s)": (
        ["client.chat.arrival.rate_per_s=8", "client.chat.max_requests=160", "simulation.horizon_s=40"],
        [Variable("peak_flops", 0.25, 4), Variable("hbm_bandwidth", 0.25, 4)]),
    "compute + bandwidth + capacity (KV-bound: 2048 in / 512 out, 3 req/s)": (
        ["client.chat.arrival.rate_per_s=3", "client.chat.max_requests=90", "simulation.horizon_s=60",
         "client.chat.input_tokens.value=2048", "client.chat.output_tokens.value=512",
         "engine.e0.hardware_overrides.hbm_capacity=40e9"],
        [Variable("peak_flops", 0.25, 4), Variable("hbm_bandwidth", 0.25, 4), Variable("hbm_capacity", 0.5, 4)]),
    "pipeline: vector-search CPU cores + GPU compute + bandwidth (benchmarks/scenarios/rag_design.toml)": (
        None,
        [Variable("resource.search-cpu.cpu_cores", 0.25, 2), Variable("engine.llm.peak_flops", 0.25, 4),
         Variable("engine.llm.hbm_bandwidth", 0.25, 4)]),
}
PIPELINE_SLO = [Constraint("ttft_p99_s", upper=1.0), Constraint("tpot_p99_s", upper=0.05)]
METHODS = {
    "gradient (SQP)": lambda problem, seed: gradient_search(problem, budget=BUDGET, seed=seed),
    "gradient (trust region)": lambda problem, seed: trust_region_search(problem, budget=BUDGET, seed=seed),
    "random": lambda problem, seed: random_search(problem, BUDGET, seed=seed),
    "cma-es": lambda problem, seed: cmaes_search(problem, BUDGET, seed=seed),
}
GRADIENTS = ("gradient (SQP)", "gradient (trust region)")


def problem_for(overrides, variables):
    if overrides is None:   # the pipeline problem: every stage simulated, priced per engine and pool
        scenario = load_scenario(str(SCENARIOS / "rag_design.toml"), [])
        return PipelineDesignProblem(scenario, variables, "usd_per_mtok", PIPELINE_SLO)
    sc = load_scenario(str(DEFAULT_SCENARIO), ["simulation.dt_s=0.05", "simulation.seed=0", *overrides])
    model = DifferentiableSim(sc, estimator=Smoothed(scales=(0.1,)))
    return DesignProblem(model, variables, "usd_per_mtok", SLO)


def compare_methods(name, problem, methods, gradients, start, budget=BUDGET, seeds=SEEDS):
    """Run every method with every seed; (Markdown lines, record) of the evaluations each run
    needed to come within 1% of the best feasible design any run found."""
    runs = {method: [] for method in methods}
    for seed in seeds:
        for method, search in methods.items():
            runs[method].append(search(problem, seed))
        print(f"{name}: seed {seed} done ({time.time() - start:.0f} s)", flush=True)
    bests = [r.best() for rs in runs.values() for r in rs if r.best()]
    best_value, best_x, _ = min(bests, key=lambda b: b[0])
    base = problem.metrics_batch(np.zeros((1, len(problem.names))))
    rec = {"best_usd_per_mtok": best_value, "best_design": problem.describe(best_x),
           "start_usd_per_mtok": float(base["usd_per_mtok"][0]), "methods": {}}
    lines = [f"## {name}", "",
             f"Best design: {problem.describe(best_x)}: {best_value:.4g} $/Mtok (the start design as given: "
             f"{float(base['usd_per_mtok'][0]):.4g} $/Mtok, feasible: {bool(problem.feasible(base)[0])}).", "",
             "| method | evaluations to 1% (per seed) | median | best found ($/Mtok, per seed) |", "|---|---|---|---|"]
    medians = {}
    for method, rs in runs.items():
        to = [r.evaluations_to(best_value) for r in rs]
        counted = [t if t is not None else budget for t in to]
        medians[method] = float(np.median(counted))
        shown = ", ".join(str(t) if t is not None else f">{budget}" for t in to)
        found = ", ".join(f"{r.best()[0]:.4g}" if r.best() else "none" for r in rs)
        med = f"{medians[method]:.0f}" + ("" if all(t is not None for t in to) else " (censored)")
        lines.append(f"| {method} | {shown} | {med} | {found} |")
        rec["methods"][method] = {"evaluations_to_1pct": to, "best": [r.best()[0] if r.best() else None for r in rs],
                                  "best_design": [problem.describe(r.best()[1]) if r.best() else None for r in rs]}
    for gradient in gradients:
        for other in ("random", "cma-es"):
            lines.append(f"\n{gradient} vs {other}: {medians[other] / medians[gradient]:.1f}x fewer evaluations "
                         "(median; a censored median bounds the ratio).")
    lines.append("")
    return lines, rec


def main():
    start = time.time()
    report = {"budget": BUDGET, "seeds": list(SEEDS), "problems": {}}
    lines = ["# Design search at equal simulator evaluations (written by benchmarks/bench_design.py)", "",
             f"Objective: $ per million output tokens (price model `design.cost.catalog_cost_model` for devices, "
             f"the catalog's price per core-hour for CPU pools). Single engine: Llama-3.1-8B on a designed device, "
             f"p99 TTFT <= 0.3 s, p99 TPOT <= 30 ms. Pipeline: embed, IVF search over 100M vectors on a pool of "
             f"host cores, Llama-3.1-8B (benchmarks/scenarios/rag_design.toml), p99 TTFT <= 1 s from the client's "
             f"arrival, p99 TPOT <= 50 ms. Every request finished (within 1% of the start design's share) in both. "
             f"{BUDGET} evaluations per run, seeds {list(SEEDS)}. Gradient searches on smoothed Jacobians (one "
             "log-shift of 0.1 per variable: 1 + 2P evaluations each; seed 0 starts from the catalogued design, "
             "other seeds from a random point; random restarts while budget remains): SQP (scipy SLSQP) and "
             "trust-region SLP (`design.trust_region_search`: a trial point costs one evaluation, a refused one "
             "halves the radius); random: uniform in the log-box; CMA-ES: pycma on the penalised objective, "
             "population 8. Evaluations to 1%: until a feasible design within 1% of the best any run found.", ""]
    for name, (overrides, variables) in PROBLEMS.items():
        problem = problem_for(overrides, variables)
        section, rec = compare_methods(name, problem, METHODS, GRADIENTS, start)
        lines += section
        report["problems"][name] = rec
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "design.json").write_text(json.dumps(report, indent=1))
    (OUT / "design.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
