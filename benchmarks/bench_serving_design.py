"""Design with serving knobs at equal simulator evaluations: the gradient searches on the
relaxation of ``design.serving`` (relaxed knobs, then rounded and re-optimised) against random
search and CMA-ES, which run real configurations (knobs at their nearest value). Writes
benchmarks/results/serving_design.md and serving_design.json.

Problem: Llama-3.1-8B on a designed device, Poisson 8 req/s of 512 in / 128 out for 40 s, started
from a poor serving setup (TP 2, max batch 16); variables: bf16 peak and HBM bandwidth x[0.25, 4],
TP in {1, 2, 4}, max batch in {8, 16, 32, 64, 128}; $ per million tokens under p99 TTFT <= 0.3 s
and p99 TPOT <= 30 ms. A relaxed design costs one evaluation per configuration it blends; each
configuration compiles once (15 here) and is shared by every method.

    python benchmarks/bench_serving_design.py      # about 15 min on 2 cores
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench_design import BUDGET, OUT, SEEDS, SLO, compare_methods

from hermes_jax.design import Variable, cmaes_search, gradient_search, random_search, trust_region_search
from hermes_jax.design.serving import ServingDesignProblem, ServingKnob, serving_search
from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario

SETTINGS = ["simulation.dt_s=0.05", "simulation.seed=0", "client.chat.arrival.rate_per_s=8",
            "client.chat.max_requests=160", "simulation.horizon_s=40", "engine.e0.tp=2", "engine.e0.max_batch_size=16"]
VARIABLES = [Variable("peak_flops", 0.25, 4), Variable("hbm_bandwidth", 0.25, 4)]
KNOBS = [ServingKnob("tp", (1, 2, 4)), ServingKnob("max_batch_size", (8, 16, 32, 64, 128))]
METHODS = {
    "gradient (SQP), relaxed then rounded":
        lambda problem, seed: serving_search(problem, BUDGET, seed, gradient_search),
    "gradient (trust region), relaxed then rounded":
        lambda problem, seed: serving_search(problem, BUDGET, seed, trust_region_search),
    "random": lambda problem, seed: random_search(problem, BUDGET, seed=seed),
    "cma-es": lambda problem, seed: cmaes_search(problem, BUDGET, seed=seed),
}


def main():
    start = time.time()
    scenario = load_scenario(str(DEFAULT_SCENARIO), SETTINGS)
    problem = ServingDesignProblem(scenario, VARIABLES, KNOBS, "usd_per_mtok", SLO)
    name = "bf16 peak + HBM bandwidth + TP + max batch (from TP 2, max batch 16)"
    section, rec = compare_methods(name, problem, METHODS, tuple(METHODS)[:2], start)
    lines = ["# Design with serving knobs at equal simulator evaluations "
             "(written by benchmarks/bench_serving_design.py)", "",
             "Llama-3.1-8B, Poisson 8 req/s of 512 in / 128 out, 40 s; p99 TTFT <= 0.3 s, p99 TPOT <= 30 ms, "
             "every request finished; $ per million tokens (catalog-fitted price model, per device: TP 4 "
             f"buys four). {BUDGET} evaluations per run, seeds {list(SEEDS)}. Gradient searches: the relaxation "
             "of `design.serving` (knob coordinates between values, metrics interpolated between the "
             "configurations around them; a relaxed design costs one evaluation per configuration it blends, "
             "a Jacobian the lanes of each) for half the budget, then the neighbouring configurations of its "
             "best design, nearest first, re-optimised over the hardware from its values. Random search and "
             "CMA-ES evaluate real configurations (knob coordinates rounded). Evaluations to 1%: until a "
             "feasible runnable design within 1% of the best any run found.", ""] + section
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serving_design.json").write_text(json.dumps({"budget": BUDGET, "seeds": list(SEEDS), name: rec},
                                                        indent=1))
    (OUT / "serving_design.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
