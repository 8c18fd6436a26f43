"""Error of the time-stepped pipeline run against the exact event-driven composition, per stage kind.

    python benchmarks/pipeline_error.py      # about 2 min; rewrites the table in benchmarks/README.md

For each shipped pipeline scenario (full horizon), runs ``simulate_pipeline`` and
``simulate_pipeline(reference=True)`` (event stations + ``sim.reference``) on the same draws and
reports the largest absolute difference of every hop's start and finish per stage kind, and of
every request's TTFT and E2E, in seconds. Requests or hops unfinished in both are skipped; a status
that differs is counted.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hermes_jax.pipeline import simulate_pipeline
from hermes_jax.sim import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("rag_kv.toml", "routing_reasoning.toml", "heterogeneous.toml")


def gap(a: pd.Series, b: pd.Series) -> float:
    d = np.abs(a.to_numpy(float) - b.to_numpy(float))
    return float(np.nanmax(d)) if np.isfinite(d).any() else 0.0


def main() -> None:
    rows = []
    for name in SCENARIOS:
        scenario = load_scenario(ROOT / "hermes_jax" / "scenarios" / name)
        start = time.perf_counter()
        fast = simulate_pipeline(scenario)
        t_fast = time.perf_counter() - start
        exact = simulate_pipeline(scenario, reference=True)
        a, b = fast.extra["stages"], exact.extra["stages"]
        kinds = a.stage.str.split(":").str[1].str.split("@").str[0]
        for kind in dict.fromkeys(kinds):
            m = (kinds == kind).to_numpy()
            rows.append({"scenario": name, "stage kind": kind, "hops": int(m.sum()),
                         "max |start error| (s)": gap(a[m].start_s, b[m].start_s),
                         "max |finish error| (s)": gap(a[m].finish_s, b[m].finish_s)})
        ra, rb = fast.requests, exact.requests
        rows.append({"scenario": name, "stage kind": f"request TTFT / E2E ({len(ra)} requests, "
                     f"{int((ra.status != rb.status).sum())} status differences; fast run {t_fast:.0f} s)",
                     "hops": len(ra), "max |start error| (s)": gap(ra.ttft_s, rb.ttft_s),
                     "max |finish error| (s)": gap(ra.e2e_s, rb.e2e_s)})
    table = pd.DataFrame(rows)
    lines = ["| scenario | stage kind | hops | max start (TTFT) error, s | max finish (E2E) error, s |", "|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1e} | {r[4]:.1e} |" for r in table.itertuples(index=False)]
    md = "\n".join(lines)
    readme = ROOT / "benchmarks" / "README.md"
    text = readme.read_text()
    block = f"<!-- pipeline-error:start -->\n{md}\n<!-- pipeline-error:end -->"
    if "<!-- pipeline-error:start -->" not in text:
        text += ("\n## Pipelines against the exact reference (`python benchmarks/pipeline_error.py`)\n\n"
                 "Largest absolute difference per stage kind on the shipped pipeline scenarios (full horizons):\n\n"
                 "<!-- pipeline-error:start -->\n<!-- pipeline-error:end -->\n")
    readme.write_text(re.sub(r"<!-- pipeline-error:start -->.*<!-- pipeline-error:end -->", lambda _: block, text,
                             flags=re.S))
    print(md)


if __name__ == "__main__":
    main()
