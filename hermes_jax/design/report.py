"""What a design search found, as a table, a Pareto front and files a person reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .problem import MAXIMISE, DesignProblem
from .search import SearchResult


def designs_frame(problem: DesignProblem, result: SearchResult) -> pd.DataFrame:
    """One row per evaluated design: multipliers (and serving knobs' values), metrics, feasibility,
    evaluations so far."""
    df = problem.table(np.array(result.points) if result.points else np.zeros((0, len(problem.names))))
    df = pd.concat([df, pd.DataFrame(result.metrics)], axis=1)
    df["feasible"] = result.feasible
    df["evaluations"] = result.evaluations
    return df


def pareto_front(df: pd.DataFrame, objective: str, other: str, maximise_objective: bool = False) -> pd.DataFrame:
    """Designs not dominated in (objective, ``other``), both better when smaller (the objective when
    larger if maximised), among those meeting every constraint except the one on ``other``."""
    a = -df[objective].to_numpy() if maximise_objective else df[objective].to_numpy()
    b = df[other].to_numpy()
    keep = []
    for i in range(len(df)):
        dominated = np.any((a <= a[i]) & (b <= b[i]) & ((a < a[i]) | (b < b[i])))
        if not dominated and np.isfinite(a[i]) and np.isfinite(b[i]):
            keep.append(i)
    return df.iloc[keep].sort_values(other)


def meets(df: pd.DataFrame, constraints) -> np.ndarray:
    """Rows of ``df`` meeting every constraint of ``constraints``."""
    ok = np.ones(len(df), bool)
    for c in constraints:
        v = df[c.metric].to_numpy()
        ok &= (v <= c.upper) if c.upper is not None else (v >= c.lower)
    return ok


def _variables(problem, x) -> dict:
    """Design x's hardware multipliers and serving knobs' values (``table`` columns NAME_x and NAME)."""
    row = problem.table(x).iloc[0]
    return {"multipliers": {n: float(row[f"{n}_x"]) for n in problem.names if f"{n}_x" in row},
            "knobs": {n: float(row[n]) for n in problem.names if n in row}}


def write_design_report(problem: DesignProblem, result: SearchResult, out) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = designs_frame(problem, result)
    maximise = problem.objective in MAXIMISE
    best = result.best(maximise)
    lines = [f"# Design search: {problem.objective} ({'max' if maximise else 'min'})", "",
             f"Method: {result.method}; {result.evaluations[-1] if result.evaluations else 0} simulator evaluations; "
             f"{int(df.feasible.sum())} of {len(df)} designs feasible.", "",
             "Variables: " + ", ".join(f"{v.name} x[{v.low:g}, {v.high:g}]" for v in problem.variables), "",
             "Constraints: " + ", ".join(f"{c.metric} {'<=' if c.upper is not None else '>='} "
                                          f"{c.upper if c.upper is not None else c.lower:g}" for c in problem.constraints),
             "", "Price and power model: " + "; ".join(problem.cost_model.describe()), ""]
    if best is None:
        lines.append("**No feasible design found**: loosen a constraint, widen the bounds or raise the budget.")
    else:
        lines.append(f"Best: {problem.describe(best[1])}: {problem.objective} = {best[0]:.4g} "
                     f"(found after {best[2]} evaluations).")
    paths = []
    png = out / "pareto.png"
    fronts = {}
    others = [c.metric for c in problem.constraints if c.metric != "finished_share"]
    for other in others:
        ok = meets(df, [c for c in problem.constraints if c.metric != other])
        fronts[other] = pareto_front(df[ok], problem.objective, other, maximise)
        lines += ["", f"## Pareto front: {problem.objective} against {other}", "",
                  "| " + " | ".join(list(fronts[other].columns[:len(problem.names)]) + [problem.objective, other]) + " |",
                  "|" + "---|" * (len(problem.names) + 2)]
        for _, r in fronts[other].iterrows():
            lines.append("| " + " | ".join(f"{r[c]:.3g}" for c in list(fronts[other].columns[:len(problem.names)])
                                           + [problem.objective, other]) + " |")
    if others:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 4), squeeze=False)
        for ax, other in zip(axes[0], others):
            ax.scatter(df[other], df[problem.objective], s=8, c=np.where(df.feasible, "tab:blue", "tab:gray"),
                       label="evaluated (grey: infeasible)")
            f = fronts[other]
            ax.plot(f[other], f[problem.objective], "o-", color="tab:red", label="Pareto front")
            limit = next(c for c in problem.constraints if c.metric == other)
            ax.axvline(limit.upper if limit.upper is not None else limit.lower, color="k", ls="--", label="constraint")
            ax.set_xlabel(other)
            ax.set_ylabel(problem.objective)
            ax.set_title(f"{problem.objective} vs {other}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
        paths.append(png)
    (out / "design.md").write_text("\n".join(lines) + "\n")
    df.to_csv(out / "designs.csv", index=False)
    record = {"objective": problem.objective, "method": result.method,
              "best": None if best is None else {"value": best[0], "design": problem.describe(best[1]), "evaluations": best[2],
                                                 **_variables(problem, best[1])},
              "evaluations": result.evaluations[-1] if result.evaluations else 0}
    (out / "design.json").write_text(json.dumps(record, indent=1))
    return [out / "design.md", out / "designs.csv", out / "design.json"] + paths
