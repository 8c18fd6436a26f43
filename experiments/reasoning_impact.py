"""Case study (a): how reasoning (thinking tokens) changes end-to-end latency, energy and cost,
for one large model against a routed small/large pair, on A100, H100 and H200.

    python experiments/reasoning_impact.py      # full sizes; writes experiments/results/reasoning_impact/
    python experiments/reasoning_impact.py --replot   # redraw figure and findings from the last table.csv

Setup: Llama-3.1-70B on 4 devices (TP 4) alone, or behind a router that sends 70% of requests to
Llama-3.1-8B on one device (the pair then uses 5 devices). Every request thinks a fixed number of
tokens (0 to 16K) before a 256-token answer; 2K-token prompts; Poisson arrivals at 0.1 req/s for the
whole run (the large model alone keeps up at every thinking length). The router is a BERT-class
classifier on 4 host cores. Energy and cost are over the whole 2,400 s horizon (devices are rented
and powered all along), so with few tokens they are dominated by idle time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import case_study  # noqa: E402
from case_study import run, small_default  # noqa: E402

HARDWARE = ("a100-80gb", "h100-sxm", "h200")
THINKING = (0, 1024, 4096, 16384)


def scenario(hardware: str, setup: str, thinking: int, requests: int, horizon: float) -> dict:
    engines = [{"name": "large", "model": "llama-3.1-70b", "hardware": hardware, "tp": 4, "scheduler": "chunked",
                "max_batch_tokens": 4096}]
    stages = []
    if thinking:
        stages.append({"stage": "reasoning", "thinking": {"dist": "fixed", "value": thinking}})
    if setup == "routed":
        engines.append({"name": "small", "model": "llama-3.1-8b", "hardware": hardware, "scheduler": "chunked",
                        "max_batch_tokens": 4096})
        stages = [{"stage": "route", "on": "router", "model": "bge-base-en-v1.5", "threads": 4,
                   "to": ["small", "large"], "weights": [0.7, 0.3]}] + stages + [{"stage": "generate"}]
    else:
        stages.append({"stage": "generate", "engine": "large"})
    return {"simulation": {"dt_s": 0.05, "horizon_s": horizon, "seed": 0},
            "resource": [{"name": "router", "kind": "cpu", "hardware": hardware, "cores": 4}],
            "engine": engines,
            "client": [{"name": "users", "arrival": {"process": "poisson", "rate_per_s": 0.1},
                        "max_requests": requests, "input_tokens": {"dist": "fixed", "value": 2048},
                        "output_tokens": {"dist": "fixed", "value": 256}, "pipeline": stages}]}


def study(small: bool | None = None) -> pd.DataFrame:
    small = small_default() if small is None else small
    hardware, thinking = (("h100-sxm",), (0, 1024)) if small else (HARDWARE, THINKING)
    requests, horizon = (4, 200.0) if small else (20, 2400.0)
    rows = []
    for hw in hardware:
        for setup in ("large", "routed"):
            for think in thinking:
                result = run(scenario(hw, setup, think, requests, horizon))
                df, s = result.requests, result.summary
                done = df[df.status == "finished"]
                rows.append({"hardware": hw, "setup": setup, "thinking": think, "requests": len(df),
                             "finished": len(done), "e2e_mean_s": done.e2e_s.mean(), "e2e_p90_s": done.e2e_s.quantile(0.9),
                             "ttft_mean_s": done.ttft_s.mean(), "tpot_mean_ms": 1e3 * done.tpot_s.mean(),
                             "j_per_token": s["energy"]["j_per_token"], "usd_per_mtok": s["energy"]["usd_per_mtok"]})
    return pd.DataFrame(rows)


def findings(table: pd.DataFrame) -> list[str]:
    out = []
    for hw, part in table.groupby("hardware", sort=False):
        big = part[part.setup == "large"].set_index("thinking")
        pair = part[part.setup == "routed"].set_index("thinking")
        top = big.index.max()
        out.append(f"{hw}: thinking {top} tokens raises the large model's mean E2E from {big.e2e_mean_s[0]:.1f} s to "
                   f"{big.e2e_mean_s[top]:.1f} s ({big.e2e_mean_s[top] / big.e2e_mean_s[0]:.0f}x); routing 70% to "
                   f"the 8B model brings it to {pair.e2e_mean_s[top]:.1f} s "
                   f"({1 - pair.e2e_mean_s[top] / big.e2e_mean_s[top]:.0%} less) at "
                   f"{pair.usd_per_mtok[top]:.2f} vs {big.usd_per_mtok[top]:.2f} $/Mtok.")
    if table.hardware.nunique() > 1:
        top = table.thinking.max()
        at = table[(table.thinking == top) & (table.setup == "large")].set_index("hardware")
        best = at.e2e_mean_s.idxmin()
        out.append(f"At {top} thinking tokens the large model is fastest on {best} ({at.e2e_mean_s.min():.1f} s mean "
                   f"E2E, against {at.e2e_mean_s.max():.1f} s on {at.e2e_mean_s.idxmax()}): decode of long "
                   "reasoning is bound by memory bandwidth.")
    return out


def figure(table: pd.DataFrame):
    plt = case_study.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (hw, setup), part in table.groupby(["hardware", "setup"], sort=False):
        style = "-" if setup == "large" else "--"
        axes[0].plot(part.thinking, part.e2e_mean_s, style, marker="o", label=f"{hw} {setup}")
        axes[1].plot(part.thinking, part.usd_per_mtok, style, marker="o", label=f"{hw} {setup}")
    for ax, label in zip(axes, ("mean E2E (s)", "$ per million tokens")):
        ax.set_xscale("symlog", linthresh=1024)
        ax.set_xlabel("thinking tokens per request")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    case_study.main("reasoning_impact", "Case study (a): reasoning-stage impact on end-to-end latency",
                    lambda: study(small=False), findings, figure)
