"""``hermes-jax simulate``: run a scenario, print the summary table, write CSV/JSON and PNG plots."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .scenario import load_scenario
from .simulate import Results, simulate

DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "default.toml"


def print_summary(results: Results) -> None:
    s = results.summary
    print(f"requests {s['requests']}: finished {s['finished']}, unfinished at horizon {s['unfinished']}, "
          f"rejected {s['rejected']}, preemptions {s['preemptions']}")
    print(f"throughput {s['throughput_rps']:.3f} req/s, {s['output_tokens_per_s']:.1f} output tokens/s, "
          f"goodput {s['goodput_rps']:.3f} req/s (SLOs met)")
    print(f"{'latency':12s} {'mean':>10s} {'p50':>10s} {'p90':>10s} {'p95':>10s} {'p99':>10s}   (ms)")
    if not s["finished"]:
        print(f"{'(none)':12s} no request finished: latencies are undefined")
    for name, stats in s["latency"].items():
        if stats:
            print(f"{name:12s} " + " ".join(f"{stats[k] * 1e3:10.2f}" for k in ("mean", "p50", "p90", "p95", "p99")))
    for name, e in s["engines"].items():
        extra = f", MFU {e['mfu']:.1%}, MBU {e['mbu']:.1%}" if "mfu" in e else ""
        print(f"engine {name}: {e['replicas']} replica(s), busy {e['busy_fraction']:.1%}, mean batch {e['mean_batch']:.1f}, "
              f"KV used mean {e['mean_kv_used']:.1%} max {e['max_kv_used']:.1%}{extra}")
    for name, u in s.get("resources", {}).items():
        if u["kind"] != "engine":
            print(f"{u['kind']} {name}: utilization {u['utilization']:.1%}")
    if "energy" in s:
        e = s["energy"]
        if math.isfinite(e["j_per_token"]):
            print(f"energy {e['energy_j'] / 3.6e6:.3f} kWh, {e['j_per_token']:.3f} J/token; cost ${e['cost_usd']:.2f}, "
                  f"${e['usd_per_mtok']:.2f} per million tokens, {e['tokens_per_usd']:.0f} tokens/$")
        else:
            print(f"energy {e['energy_j'] / 3.6e6:.3f} kWh; cost ${e['cost_usd']:.2f}; per token: undefined "
                  "(no output tokens were generated)")
    stages = results.extra.get("stages")
    if stages is not None:
        print(f"{'client':12s} {'stage':18s} {'resource':14s} {'wait ms':>10s} {'service ms':>11s}")
        for (client, stage, resource), part in stage_breakdown(results).groupby(["client", "stage", "resource"],
                                                                                 sort=False):
            print(f"{client:12s} {stage:18s} {resource:14s} {part.wait_s.iloc[0] * 1e3:10.2f} "
                  f"{part.service_s.iloc[0] * 1e3:11.2f}")
    unfinished = results.requests[results.requests.status == "unfinished"]
    if len(unfinished):
        print(f"unfinished requests (first 10 of {len(unfinished)}): {unfinished.request.head(10).tolist()}")
    rejected = results.requests[results.requests.status == "rejected"]
    if len(rejected):
        print("rejected: " + ", ".join(f"{n} {r}" for r, n in rejected.reject_reason.value_counts().items()))


def stage_breakdown(results: Results):
    """Mean wait (ready to start) and service (start to finish) per client and stage over the
    client's finished requests; a hop a request did not take (another routed engine, no
    escalation) counts as 0, so the stages of a client add up to its mean time in the system."""
    st = results.extra["stages"].merge(results.requests[["request", "client", "status"]], on="request")
    st = st[st.status == "finished"].assign(wait_s=lambda d: d.start_s - d.ready_s,
                                           service_s=lambda d: d.finish_s - d.start_s)
    finished = results.requests[results.requests.status == "finished"].groupby("client").size()
    table = st.groupby(["client", "stage", "resource"], sort=False)[["wait_s", "service_s"]].sum().reset_index()
    share = finished.reindex(table.client).to_numpy()
    table[["wait_s", "service_s"]] = table[["wait_s", "service_s"]].to_numpy() / share[:, None]
    return table


UNDEFINED_BECAUSE = {"j_per_token": "no output tokens were generated", "usd_per_mtok": "no output tokens were generated",
                     "tokens_per_usd": "the run cost nothing", "mfu": "the device's peak is unknown",
                     "mbu": "the device's bandwidth is unknown"}


def standard_json(data) -> tuple[object, dict]:
    """``data`` with every NaN or infinity replaced by None (standard JSON has neither), and the
    reason for each replaced value by its dotted path."""
    reasons: dict[str, str] = {}

    def clean(value, path):
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:   # NumPy scalars
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            key = path.rsplit(".", 1)[-1]
            reasons[path] = UNDEFINED_BECAUSE.get(key, "infinite" if math.isinf(value) else "not a number")
            return None
        return value

    return clean(data, ""), reasons


def summary_json(results: Results) -> str:
    """summary.json: the summary, the run's details and ``undefined`` (why a value is null)."""
    extra = {k: v for k, v in results.extra.items() if k not in ("stages", "jobs")}   # tables go to CSV
    body, reasons = standard_json({**results.summary, "run": extra})
    return json.dumps({**body, "undefined": reasons}, indent=2, allow_nan=False, default=float)


def write_outputs(results: Results, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json", out / "requests.csv", out / "timeseries.csv", out / "latency_cdf.png",
             out / "timeseries.png"]
    paths[0].write_text(summary_json(results))
    results.requests.to_csv(paths[1], index=False)
    results.timeseries.to_csv(paths[2], index=False)
    # fixed margins, not tight_layout: it lays every label out once more (~0.1 s a figure)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5), gridspec_kw=dict(left=0.055, right=0.99, bottom=0.15, top=0.9,
                                                                       wspace=0.28))
    done = results.requests[results.requests.status == "finished"]
    for ax, col in zip(axes, ("ttft_s", "tpot_s", "e2e_s")):
        for client, part in done.groupby("client"):
            values = np.sort(part[col].dropna().to_numpy())
            ax.plot(values, np.arange(1, len(values) + 1) / max(len(values), 1), label=client)
        ax.set_xlabel({"ttft_s": "time to first token (s)", "tpot_s": "time per output token (s)",
                       "e2e_s": "end-to-end latency (s)"}[col])
        ax.set_ylabel("share of finished requests")
        ax.set_title({"ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_s": "E2E"}[col] + " distribution")
        ax.grid(alpha=0.3)
    if len(done):
        axes[0].legend()
    else:
        axes[1].text(0.5, 0.5, "no request finished", ha="center", transform=axes[1].transAxes)
    fig.savefig(paths[3], dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True, gridspec_kw=dict(left=0.08, right=0.98, bottom=0.1,
                                                                                  top=0.93, hspace=0.12))
    ts = results.timeseries
    for (engine, replica), part in ts.groupby(["engine", "replica"]):
        axes[0].plot(part.time_s, part.batch, lw=0.8, label=f"{engine}/{replica}")
        axes[1].plot(part.time_s, part.kv_used, lw=0.8)
    axes[0].set_ylabel("batch (sequences)")
    axes[1].set_ylabel("KV cache used (share)")
    axes[1].set_xlabel("time (s)")
    axes[0].set_title("Batch size and KV cache use per replica")
    axes[0].legend(fontsize=7)
    fig.savefig(paths[4], dpi=110)
    plt.close(fig)
    if "stages" in results.extra:
        paths += [out / "stages.csv", out / "stage_breakdown.png", out / "jobs.csv"]
        results.extra["stages"].to_csv(paths[5], index=False)
        results.extra["jobs"].to_csv(paths[7], index=False)   # every engine job: samples, rounds, parts
        table = stage_breakdown(results)
        clients = list(dict.fromkeys(table.client))
        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(clients)))
        left = np.zeros(len(clients))
        stages = list(dict.fromkeys(table.stage))
        palette = plt.get_cmap("tab20")   # dark shades first, then the light ones: neighbours differ
        colours = [palette(i) for i in list(range(0, 20, 2)) + list(range(1, 20, 2))]
        for k, stage in enumerate(stages):
            plain = stage.split(":", 1)[-1].replace("_", " ")     # "3:generate" -> "generate"
            for part, hatch, alpha in (("wait_s", "//", 0.45), ("service_s", "", 0.9)):
                widths = np.array([table[(table.client == c) & (table.stage == stage)][part].sum() for c in clients])
                label = f"{plain} (waiting)" if part == "wait_s" else plain
                ax.barh(clients, widths, left=left, hatch=hatch, color=colours[k % len(colours)], alpha=alpha,
                        edgecolor="white", label=label if widths.any() else None)
                left += widths
        ax.set_xlabel("mean time per finished request (s); hatched, lighter: waiting for the stage")
        ax.set_title("Where a request's time goes, per client and stage")
        ax.legend(fontsize=7, ncol=1 + len(table) // 16, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(paths[6], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return paths


def run_cli(scenario_path: str | None, out: str | None, overrides: list[str], stack: str | None = None,
            quiet: bool = False) -> None:
    path = scenario_path or DEFAULT_SCENARIO
    scenario = load_scenario(path, overrides, stack)
    start = time.perf_counter()
    sim = scenario.simulation
    if not quiet:
        print(f"simulating {path}: horizon {sim.horizon_s:g} s, dt {scenario.dt_s:g} s ({scenario.dt_reason}), "
              f"{scenario.steps:,} steps ...", flush=True)
    results = simulate(scenario, progress=not quiet)
    if not quiet:
        print(f"done in {time.perf_counter() - start:.2f} s (including compilation)")
    print_summary(results)
    if out:
        for p in write_outputs(results, Path(out)):
            print(f"wrote {p}")
