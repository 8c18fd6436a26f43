"""The case-study notebooks run (every code cell, in order, at small sizes) and their tables obey
the physics each study is about."""

import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def execute(name: str) -> dict:
    """Run a notebook's code cells in one namespace, as a kernel would (no magics are used)."""
    cells = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]
    namespace: dict = {"__name__": "__main__"}
    old, cwd = os.environ.get("HERMES_SMALL"), os.getcwd()
    os.environ["HERMES_SMALL"] = "1"
    os.chdir(ROOT / "notebooks")
    try:
        for k, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), f"{name}.ipynb[{k}]", "exec"), namespace)
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("HERMES_SMALL")
        else:
            os.environ["HERMES_SMALL"] = old
    import matplotlib.pyplot as plt
    plt.close("all")
    return namespace


def test_reasoning_notebook():
    table = execute("reasoning_impact")["table"].set_index(["setup", "thinking"])
    assert (table.finished == table.requests).all()
    # 1024 more decode steps per request: each reads every weight at least once
    for setup in ("large", "routed"):
        assert table.e2e_mean_s[setup, 1024] > table.e2e_mean_s[setup, 0] + 1024 * 0.004
    # routing most requests to the 8B model shortens the mean reply; TTFT is not hurt by thinking
    assert table.e2e_mean_s["routed", 1024] < table.e2e_mean_s["large", 1024]
    assert table.ttft_mean_s["large", 1024] < 2 * table.ttft_mean_s["large", 0]


def test_rag_batching_notebook():
    table = execute("rag_batching")["table"].set_index("retrieval_batch")
    # one search core at 12 queries/s: the search is the bottleneck, and batching (one centroid scan
    # per batch) cuts its queue
    assert (table.bottleneck == "vector_search").all()
    assert table.search_wait_s[16] < 0.5 * table.search_wait_s[1]
    assert table.util_search[1] > 0.5


def test_kv_retrieval_notebook():
    ns = execute("kv_retrieval")
    table = ns["table"]
    base = table[table.tier == "recompute"].ttft_p99_s.iloc[0]
    cxl = table[table.tier == "cxl"].set_index("reuse")
    remote = table[table.tier == "remote_100g"].set_index("reuse")
    # more reuse, less prefill; CXL is faster than a 100 Gb/s link for the same bytes
    assert cxl.ttft_p99_s[0.95] < cxl.ttft_p99_s[0.5] < base
    assert (remote.fetch_mean_s > cxl.fetch_mean_s).all()
    np.testing.assert_allclose(remote.fetch_mean_s[0.95] / remote.fetch_mean_s[0.5], 0.95 / 0.5, rtol=0.25)
    assert len(ns["study"].findings(table)) == 2


def test_calibrate_stack_notebook():
    """The fit improves the model it never saw, reports intervals that hold their values, and says
    what the data cannot identify."""
    ns = execute("calibrate_stack")
    err = ns["before_after"].set_index("split")
    assert err.loc["test", "mape_after_pct"] < 0.5 * err.loc["test", "mape_before_pct"]
    assert err.loc["test", "mape_after_pct"] < 10.0
    iv = ns["intervals"]
    assert ((iv.low90 <= iv.value * (1 + 1e-9)) & (iv.value <= iv.high90 * (1 + 1e-9))).all()
    assert ns["result"].fit.warnings  # single-device runs at a few sizes leave some direction unidentified
    assert [p.suffix for p in ns["written"]] == [".md", ".json", ".toml", ".png"]


def test_codesign_notebook():
    """Every design the search returns meets its SLOs on the plain simulation and is no dearer than
    the H100 it starts from when that is feasible; a tighter TTFT limit never makes it cheaper."""
    table = execute("codesign")["table"]
    assert table.feasible.all()
    assert (table.ttft_p99_s <= table.slo_ttft_p99_s).all() and (table.tpot_p99_s <= table.slo_tpot_p99_s).all()
    start_ok = table[table.h100_feasible]
    assert (start_ok.usd_per_mtok <= start_ok.h100_usd_per_mtok * (1 + 1e-6)).all()
    loose, tight = table.set_index("slo_ttft_p99_s").loc[[2.0, 0.5], "usd_per_mtok"]
    assert tight >= loose
