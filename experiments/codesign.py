"""Case study (d): hardware co-design. The cheapest device, as multipliers of an H100's bf16 peak,
HBM bandwidth and HBM capacity, that serves the Azure conversation trace with Llama-3.1-70B within
p99 TTFT and p99 TPOT limits, and how the answer moves with the limits.

    python experiments/codesign.py      # full sizes (~20 min on 2 cores); writes experiments/results/codesign/
    python experiments/codesign.py --replot

Setup: two replicas of Llama-3.1-70B at TP4 on the designed device (8 devices), chunked prefill
(2,048-token budget), least-outstanding routing, the catalog's H100 efficiencies; the first
``WINDOW_S`` seconds of the Azure LLM 2023 conversation trace (Splitwise) at its own timestamps.
Objective: $ per million output tokens under the price model of ``design.cost`` (fitted to the
catalog's device prices: an assumption, see its docstring). Search: SQP on smoothed gradients
(``design.gradient_search``) from the H100 as catalogued, with the same budget per SLO point.
Every point is also re-checked: the best design's metrics are those of its plain simulation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import case_study  # noqa: E402
from case_study import small_default  # noqa: E402

from hermes_jax.design import Constraint, DesignProblem, Variable, gradient_search  # noqa: E402
from hermes_jax.sim.differentiable import DifferentiableSim  # noqa: E402
from hermes_jax.sim.scenario import parse_scenario  # noqa: E402
from hermes_jax.sim.smoothing import Smoothed  # noqa: E402

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
WINDOW_S = 120.0
VARIABLES = [Variable("peak_flops", 0.25, 4.0), Variable("hbm_bandwidth", 0.25, 4.0), Variable("hbm_capacity", 0.5, 4.0)]
# (p99 TTFT limit s, p99 TPOT limit s): the point (2 s, 200 ms), then each limit moved alone
SLOS = [(2.0, 0.2), (0.5, 0.2), (1.0, 0.2), (4.0, 0.2), (2.0, 0.05), (2.0, 0.1)]


def scenario(window: float, dt: float = 0.1) -> dict:
    return {"simulation": {"dt_s": dt, "horizon_s": window + 120.0, "seed": 0},
            "engine": [{"name": "llm", "model": "llama-3.1-70b", "hardware": "h100-sxm", "tp": 4, "replicas": 2,
                        "router": "least_outstanding", "scheduler": "chunked", "max_batch_size": 256,
                        "max_batch_tokens": 2048}],
            "client": [{"name": "conv", "engine": "llm",
                        "trace": {"path": str(TRACE), "format": "azure", "end_s": window}}]}


def study(small: bool | None = None) -> pd.DataFrame:
    small = small_default() if small is None else small
    # small: a coarser routing step (the only thing dt sets) for a quicker run of the same study
    window, dt, budget, slos = (20.0, 0.4, 12, SLOS[:2]) if small else (WINDOW_S, 0.1, 60, SLOS)
    model = DifferentiableSim(parse_scenario(scenario(window, dt)), estimator=Smoothed(scales=(0.1,)))
    rows = []
    for ttft, tpot in slos:
        problem = DesignProblem(model, VARIABLES, "usd_per_mtok",
                                [Constraint("ttft_p99_s", upper=ttft), Constraint("tpot_p99_s", upper=tpot)])
        base = problem.metrics_batch(np.zeros((1, len(VARIABLES))))
        result = gradient_search(problem, budget=budget)
        best = result.best()
        row = {"slo_ttft_p99_s": ttft, "slo_tpot_p99_s": tpot, "requests": int(model.rows.size),
               "h100_usd_per_mtok": float(base["usd_per_mtok"][0]), "h100_feasible": bool(problem.feasible(base)[0]),
               "evaluations": result.evaluations[-1] if result.evaluations else 0}
        if best is None:
            row.update(feasible=False)
        else:
            m = problem.metrics_batch(np.asarray(best[1])[None])
            row.update(feasible=True, **{f"{v.name}_x": float(np.exp(best[1][i])) for i, v in enumerate(VARIABLES)},
                       usd_per_mtok=float(m["usd_per_mtok"][0]), price_per_hour=float(m["price_per_hour"][0]),
                       ttft_p99_s=float(m["ttft_p99_s"][0]), tpot_p99_s=float(m["tpot_p99_s"][0]),
                       found_after=best[2])
        rows.append(row)
    return pd.DataFrame(rows)


def findings(table: pd.DataFrame) -> list[str]:
    out = []
    for r in table.itertuples():
        head = f"p99 TTFT <= {r.slo_ttft_p99_s:g} s, p99 TPOT <= {r.slo_tpot_p99_s * 1e3:g} ms"
        if not r.feasible:
            out.append(f"{head}: no feasible design in {r.evaluations} evaluations.")
            continue
        out.append(f"{head}: peak x{r.peak_flops_x:.2f}, bandwidth x{r.hbm_bandwidth_x:.2f}, capacity "
                   f"x{r.hbm_capacity_x:.2f} (${r.price_per_hour:.2f}/h per device) at {r.usd_per_mtok:.3g} $/Mtok "
                   f"against {r.h100_usd_per_mtok:.3g} for the H100 as catalogued "
                   f"({'feasible' if r.h100_feasible else 'infeasible'} there); found after {int(r.found_after)} "
                   "evaluations.")
    # a looser limit can never need a dearer device: flag a search that stopped short of that
    ok = table[table.feasible]
    for r in ok.itertuples():
        better = ok[(ok.ttft_p99_s <= r.slo_ttft_p99_s) & (ok.tpot_p99_s <= r.slo_tpot_p99_s)
                    & (ok.usd_per_mtok < r.usd_per_mtok * 0.999)]
        for b in better.itertuples():
            out.append(f"Not converged at p99 TTFT <= {r.slo_ttft_p99_s:g} s, TPOT <= {r.slo_tpot_p99_s * 1e3:g} ms: the "
                       f"design found for ({b.slo_ttft_p99_s:g} s, {b.slo_tpot_p99_s * 1e3:g} ms) also meets it and costs "
                       f"{b.usd_per_mtok:.3g} < {r.usd_per_mtok:.3g} $/Mtok; the optimum there is at most that.")
    return out


def figure(table: pd.DataFrame):
    plt = case_study.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, fixed, label) in zip(axes, [("slo_ttft_p99_s", "slo_tpot_p99_s", "p99 TTFT limit (s)"),
                                               ("slo_tpot_p99_s", "slo_ttft_p99_s", "p99 TPOT limit (s)")]):
        ref = table[fixed].mode().iloc[0]
        part = table[(table[fixed] == ref) & table.feasible].sort_values(key)
        for col in ("peak_flops_x", "hbm_bandwidth_x", "hbm_capacity_x"):
            if col in part:
                ax.plot(part[key], part[col], marker="o", label=col.replace("_x", " multiplier"))
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("multiplier of the H100 value")
        ax.set_title(f"cheapest design vs {label.split(' limit')[0]} limit ({fixed} = {ref:g})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    case_study.main("codesign", "Case study (d): hardware co-design for Llama-3.1-70B on the Azure conversation trace",
                    lambda: study(small=False), findings, figure)
