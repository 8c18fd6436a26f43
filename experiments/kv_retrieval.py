"""Case study (c): remote KV-cache retrieval. p99 TTFT against prefix reuse and bandwidth for a
prefix KV fetched from HBM, host DRAM, a CXL expander, or a remote store at 400 and 100 Gb/s, and
where recomputing the prefix beats fetching it.

    python experiments/kv_retrieval.py      # full sizes; writes experiments/results/kv_retrieval/
    python experiments/kv_retrieval.py --replot   # redraw figure and findings from the last table.csv

Setup: one H100 serving Llama-2-7B (multi-head attention: 512 KiB of KV per token) or
Llama-3.1-8B (grouped-query attention: 128 KiB per token); 3,072-token prompts whose leading
`reuse` share was seen before, 64-token answers, Poisson arrivals at 3 requests/s. Every request
that reuses a prefix fetches it (hit rate 1) over the tier or link, which concurrent fetches share;
"recompute" fetches nothing and prefills the whole prompt. HBM stands for a prefix still resident
on the device: a transfer at HBM bandwidth with no latency (its capacity cost is not modelled).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import case_study  # noqa: E402
from case_study import run, small_default  # noqa: E402

MODELS = ("llama-2-7b", "llama-3.1-8b")
TIERS = {   # name -> resource table
    "hbm": {"kind": "link", "link": "roce-400g", "bandwidth_gbps": 3.35e12 * 8 / 1e9, "latency_s": 0.0},
    "host_dram": {"kind": "tier", "tier": "host_dram"},
    "cxl": {"kind": "tier", "tier": "cxl"},
    "remote_400g": {"kind": "link", "link": "roce-400g", "bandwidth_gbps": 400.0},
    "remote_100g": {"kind": "link", "link": "roce-400g", "bandwidth_gbps": 100.0},
}
REUSE = (0.25, 0.5, 0.75, 0.95)


def scenario(model: str, tier: str, reuse: float, rate: float, horizon: float) -> dict:
    pipeline = [{"stage": "generate", "engine": "llm"}]
    resources = []
    if tier != "recompute":
        resources = [{"name": "store", "hardware": "h100-sxm", **TIERS[tier]}]
        pipeline.insert(0, {"stage": "kv_fetch", "on": "store", "hit_rate": 1.0, "prefix_fraction": reuse})
    return {"simulation": {"dt_s": 0.01, "horizon_s": horizon, "seed": 0}, "resource": resources,
            "engine": [{"name": "llm", "model": model, "hardware": "h100-sxm", "scheduler": "chunked",
                        "max_batch_tokens": 4096}],
            "client": [{"name": "chat", "arrival": {"process": "poisson", "rate_per_s": rate},
                        "input_tokens": {"dist": "fixed", "value": 3072}, "output_tokens": {"dist": "fixed", "value": 64},
                        "pipeline": pipeline}]}


def study(small: bool | None = None) -> pd.DataFrame:
    small = small_default() if small is None else small
    models, tiers, reuses = (("llama-3.1-8b",), ("cxl", "remote_100g"), (0.5, 0.95)) if small else \
        (MODELS, tuple(TIERS), REUSE)
    rate, horizon = (3.0, 10.0) if small else (3.0, 120.0)
    rows = []
    for model in models:
        cases = [("recompute", 0.0)] + [(t, r) for t in tiers for r in reuses]
        for tier, reuse in cases:
            result = run(scenario(model, tier, reuse, rate, horizon))
            df, s = result.requests, result.summary
            done = df[df.status == "finished"]
            st = result.extra["stages"]
            fetch = st[st.stage.str.endswith("kv_fetch")]
            rows.append({"model": model, "tier": tier, "reuse": reuse, "requests": len(df), "finished": len(done),
                         "ttft_p50_s": done.ttft_s.median(), "ttft_p99_s": done.ttft_s.quantile(0.99),
                         "fetch_mean_s": float((fetch.finish_s - fetch.ready_s).mean()) if len(fetch) else 0.0,
                         "store_util": s["resources"].get("store", {}).get("utilization", 0.0),
                         "engine_util": s["resources"]["llm"]["utilization"]})
    return pd.DataFrame(rows)


def findings(table: pd.DataFrame) -> list[str]:
    out = []
    for model, part in table.groupby("model", sort=False):
        base = part[part.tier == "recompute"].ttft_p99_s.iloc[0]
        fetched = part[part.tier != "recompute"]
        worse = fetched[fetched.ttft_p99_s > base]
        top = fetched.reuse.max()
        at = fetched[fetched.reuse == top].set_index("tier").ttft_p99_s
        out.append(f"{model}: recomputing the whole prompt gives p99 TTFT {base:.3f} s; fetching {top:.0%} of it: "
                   + ", ".join(f"{t} {v:.3f} s" for t, v in at.items()) + ".")
        if len(worse):
            out.append(f"{model}: recomputing beats fetching for " + ", ".join(
                f"{r.tier} at reuse {r.reuse:g} ({r.ttft_p99_s:.3f} s)" for r in worse.itertuples()) + ".")
        else:
            out.append(f"{model}: fetching beats recomputing on every tier and reuse level tried.")
    return out


def figure(table: pd.DataFrame):
    plt = case_study.pyplot()
    models = list(dict.fromkeys(table.model))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        part = table[table.model == model]
        base = part[part.tier == "recompute"].ttft_p99_s.iloc[0]
        for tier, rows in part[part.tier != "recompute"].groupby("tier", sort=False):
            ax.plot(rows.reuse, rows.ttft_p99_s, marker="o", label=tier)
        ax.axhline(base, color="k", ls="--", label="recompute")
        ax.set_title(model)
        ax.set_xlabel("prefix reuse (share of the prompt fetched)")
        ax.set_ylabel("p99 TTFT (s)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    case_study.main("kv_retrieval", "Case study (c): remote KV-cache retrieval",
                    lambda: study(small=False), findings, figure)
