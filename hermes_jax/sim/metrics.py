"""Summary metrics of a run: latency percentiles, throughput, goodput, utilization, counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

PERCENTILES = (50, 90, 95, 99)
LATENCIES = ("ttft_s", "tpot_s", "itl_max_s", "e2e_s", "queueing_s")


def latency_stats(df: pd.DataFrame) -> dict:
    out = {}
    done = df[df.status == "finished"]
    for col in LATENCIES:
        values = done[col].to_numpy(float)
        values = values[np.isfinite(values)]
        out[col] = ({"mean": float(values.mean()), **{f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}}
                    if values.size else {})
    return out


def counts(df: pd.DataFrame, span_s: float) -> dict:
    done = df.status == "finished"
    return {"requests": int(len(df)), "finished": int(done.sum()), "unfinished": int((df.status == "unfinished").sum()),
            "rejected": int((df.status == "rejected").sum()), "preemptions": int(df.preemptions.sum()),
            "throughput_rps": float(done.sum() / span_s), "output_tokens_per_s": float(df.generated.sum() / span_s),
            "goodput_rps": float(df.meets_slo.sum() / span_s)}


def summarize(df: pd.DataFrame, ts: pd.DataFrame, scenario, capability: dict | None = None) -> dict:
    """``capability``: engine name -> (peak FLOP/s, HBM B/s) per device, for model FLOP and bandwidth utilization."""
    span = scenario.simulation.horizon_s
    summary = {"horizon_s": span, **counts(df, span), "latency": latency_stats(df), "clients": {}, "engines": {}}
    for name, part in df.groupby("client"):
        summary["clients"][name] = {**counts(part, span), "latency": latency_stats(part)}
    for name, part in ts.groupby("engine") if len(ts) else []:
        replicas = part.replica.nunique()
        info = {"replicas": int(replicas), "busy_fraction": float(part.busy.mean()), "mean_batch": float(part.batch.mean()),
                "mean_kv_used": float(part.kv_used.mean()), "max_kv_used": float(part.kv_used.max())}
        if capability and name in capability:
            peak, bandwidth = capability[name]
            info["mfu"] = float(part.flop.sum() / (span * replicas * peak))
            info["mbu"] = float(part["bytes"].sum() / (span * replicas * bandwidth))
        summary["engines"][name] = info
    return summary
