"""Shared by the case studies: run a scenario given as a TOML-shaped dict, and write a study's
table, figure and findings under experiments/results/<study>/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from hermes_jax.pipeline import simulate_pipeline
from hermes_jax.sim.scenario import parse_scenario

RESULTS = Path(__file__).resolve().parent / "results"


def small_default() -> bool:
    """Notebooks and tests run the studies at small sizes (HERMES_SMALL=1)."""
    return os.environ.get("HERMES_SMALL", "") == "1"


def run(data: dict):
    """Simulate a scenario written as the dict a TOML file would parse to (validated the same way)."""
    return simulate_pipeline(parse_scenario(data))


def table_for(study: str, compute) -> pd.DataFrame:
    """The study's table: computed anew, or with ``--replot`` read back from its last run's CSV
    (to redraw the figure and findings without simulating again)."""
    if "--replot" in sys.argv:
        return pd.read_csv(RESULTS / study / "table.csv")
    return compute()


def save(study: str, table: pd.DataFrame, findings: list[str], figure, title: str) -> Path:
    out = RESULTS / study
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    figure.savefig(out / "figure.png", dpi=120, bbox_inches="tight")
    text = [f"# {title}", "", f"Written by `python experiments/{study}.py`; the numbers are from `table.csv`.", "",
            "## Findings", ""] + [f"- {f}" for f in findings] + ["", "## Table", "", markdown(table)]
    (out / "README.md").write_text("\n".join(text) + "\n")
    return out


def markdown(table: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    rows = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in table.itertuples(index=False)]
    return "\n".join(rows)


def pyplot():
    """matplotlib's pyplot on a file backend (scripts and tests have no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def main(study: str, title: str, compute, findings, figure) -> None:
    """A study's command line: simulate (or ``--replot``), write its results, print the findings."""
    table = table_for(study, compute)
    lines = findings(table)
    out = save(study, table, lines, figure(table), title)
    print(table.to_string(index=False))
    print("\n".join(lines))
    print(f"wrote {out}")
