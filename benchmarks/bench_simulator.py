"""Speed and accuracy of the serving simulator; rewrites the simulator section of
benchmarks/README.md. Run: python benchmarks/bench_simulator.py [--quick]

(a) Vidur's own scenario side by side (Llama-2-70B, A100 TP2, 10,000 requests at 1/s, Azure
    conversation lengths), compile time apart; Vidur itself is run if it imports, else its
    published ~25 s on a 2-core machine is the baseline.
(b) a sweep of 1,000 hardware configurations of a 1,000-request scenario in one compiled call.
(c) the whole Azure 2023 conversation trace and Mooncake conversation trace, end to end.
(d) curves: time against requests, load and configurations; gradient time and memory against the
    forward pass (checkpointed and not).
(e) error against the exact event-driven reference as dt varies.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hermes_jax.sim import DEFAULT_SCENARIO, build_workload, load_scenario, simulate
from hermes_jax.sim.differentiable import DifferentiableSim
from hermes_jax.sim.estimators import Anchored
from hermes_jax.sim.reference import simulate_reference
from hermes_jax.sim.sweep import sweep

HERE = Path(__file__).resolve().parent
SCEN = HERE / "scenarios"
VIDUR = SCEN / "vidur_llama2_70b_a100_tp2.toml"
VIDUR_PUBLISHED_S = 25.0


def timed(fn, repeat=3):
    """(first call s, best of ``repeat`` later calls s, last result)."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return first, best, out


def vidur_available() -> str:
    if importlib.util.find_spec("vidur") is not None:
        return "installed, but not run here: its release downloads its profiles at run time"
    return "not installed (its release downloads profiles at run time, which fails offline)"


def bench_vidur(lines):
    scenario = load_scenario(VIDUR)
    workload = build_workload(scenario)
    first, best, res = timed(lambda: simulate(scenario, workload), 7)
    s = res.summary
    lines += ["### (a) Vidur's scenario: Llama-2-70B, A100-80GB TP2, 10,000 requests at 1/s", "",
              f"Vidur: {vidur_available()}; baseline = its published {VIDUR_PUBLISHED_S:.0f} s wall for this run on a "
              "2-core machine.", "",
              "| | hermes_jax | Vidur (published) | speed-up |", "|---|---|---|---|",
              f"| simulate 10,000 requests, after compile | {best:.3f} s | {VIDUR_PUBLISHED_S:.0f} s | "
              f"{VIDUR_PUBLISHED_S / best:.0f}x |",
              f"| first call (compile + run) | {first:.2f} s | - | - |", "",
              f"Outcome: {s['finished']} finished, {s['rejected']} rejected (longer than the 4,096-token context), "
              f"{s['unfinished']} unfinished; TTFT p50 {s['latency']['ttft_s']['p50']:.2f} s, TPOT p50 "
              f"{s['latency']['tpot_s']['p50'] * 1e3:.1f} ms (`{res.extra['deferred_steps']}` deferred steps).", ""]
    return best


def bench_sweep(lines, configs):
    scenario = load_scenario(str(DEFAULT_SCENARIO), ["simulation.horizon_s=200", "simulation.dt_s=0.5"])
    workload = build_workload(scenario)
    from hermes_jax.sim.build import build_group
    base = build_group(scenario.engines[0]).params
    side = int(np.ceil(np.sqrt(configs)))
    bw, fl = np.meshgrid(np.linspace(-0.5, 0.5, side), np.linspace(-0.5, 0.5, side))
    bw, fl = bw.ravel()[:configs], fl.ravel()[:configs]
    batch = type(base)({k: jnp.broadcast_to(v, (configs,) + v.shape) for k, v in base.log.items()})
    batch = type(batch)({**batch.log, "hbm_bandwidth": batch.log["hbm_bandwidth"] + bw,
                         "peak_bf16": batch.log["peak_bf16"] + fl} if "peak_bf16" in batch.log else
                        {**batch.log, "hbm_bandwidth": batch.log["hbm_bandwidth"] + bw})
    rows = []
    workers = max(1, min(os.cpu_count() or 1, 8))
    for chunk, threads in ((1, 1), (8, 1), (32, 1), (1, workers), (32, workers)):
        small = jax.tree_util.tree_map(lambda x: x[:64], batch)
        first, best, _ = timed(lambda: jax.block_until_ready(sweep(scenario, small, chunk, workload, threads)), 1)
        rows.append((chunk, threads, 64, first, best))
    finals = []
    for vmapped in (False, True):   # the best sequential and the best vmapped chunking, on all configurations
        chunk, threads = min((r for r in rows if (r[0] > 1) == vmapped), key=lambda r: r[4])[:2]
        first, best, out = timed(lambda: jax.block_until_ready(sweep(scenario, batch, chunk, workload, threads)), 1)
        finals.append((chunk, threads, first, best))
    single = rows[0][4] / 64
    lines += [f"### (b) Sweep: {configs} hardware configurations x {len(workload)} requests (one compiled call)", "",
              "HBM bandwidth and bf16 peak each scaled by exp(-0.5 .. 0.5) on a grid; Llama-3.1-8B, H100, Poisson 5/s.", "",
              "| chunk (configs vmapped together) | threads | configs | first call s | after compile s | per config ms |",
              "|---|---|---|---|---|---|"]
    for c, w, n, f, b in rows:
        lines.append(f"| {c} | {w} | {n} | {f:.2f} | {b:.2f} | {b / n * 1e3:.1f} |")
    lines += [f"| {c} (best {'vmapped' if c > 1 else 'sequential'}) | {t} | {configs} | {f:.2f} | **{b:.2f}** | "
              f"{b / configs * 1e3:.1f} |" for c, t, f, b in finals]
    lines += ["",
              f"Mean E2E across configurations: {float(out['e2e_mean_s'].min()):.2f} .. {float(out['e2e_mean_s'].max()):.2f} s. "
              f"Chunk 1 maps configurations one by one ({single * 1e3:.1f} ms each); larger chunks vmap them, and the "
              "simulator's conditionals then run a branch once for the chunk when any configuration needs it "
              "(GroupConfig.vmap_guard). Threads split the configurations over the CPU cores.", ""]
    return rows, min(f[3] for f in finals)


def bench_traces(lines):
    lines += ["### (c) Whole traces end to end (`hermes-jax simulate benchmarks/scenarios/NAME.toml`)", "",
              "| trace | requests | finished | rejected | unfinished | first call s | after compile s | TTFT p50 s | TPOT p50 ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in ("azure_conv", "mooncake_conv"):
        scenario = load_scenario(SCEN / f"{name}.toml")
        workload = build_workload(scenario)
        first, best, res = timed(lambda: simulate(scenario, workload), 1)
        s = res.summary
        lines.append(f"| {name} | {s['requests']} | {s['finished']} | {s['rejected']} | {s['unfinished']} | {first:.2f} | "
                     f"{best:.2f} | {s['latency']['ttft_s']['p50']:.3f} | {s['latency']['tpot_s']['p50'] * 1e3:.1f} |")
    lines.append("")


def bench_curves(lines):
    lines += ["### (d) Curves", "", "Time against requests and load (Vidur's scenario, after compile):", "",
              "| requests | rate /s | simulate s | per request us |", "|---|---|---|---|"]
    for n, rate in ((1000, 1.0), (3000, 1.0), (10000, 1.0), (3000, 0.5), (3000, 2.0)):
        scenario = load_scenario(VIDUR, [f"client.conv.max_requests={n}", f"simulation.horizon_s={n / rate + 2000}",
                                         f"client.conv.trace.arrival.rate_per_s={rate}"])
        workload = build_workload(scenario)
        _, best, _ = timed(lambda: simulate(scenario, workload), 2)
        lines.append(f"| {n} | {rate:g} | {best:.3f} | {best / n * 1e6:.0f} |")
    lines += ["", "Gradient against forward (default scenario, 60 s horizon, dt 0.05 s, anchored estimator, "
              "d mean E2E / d all parameters):", "",
              "| pass | checkpointed scan | after compile s | compiled temp memory MB |", "|---|---|---|---|"]
    scenario = load_scenario(str(DEFAULT_SCENARIO), ["simulation.horizon_s=60", "simulation.dt_s=0.05"])
    for ckpt in (False, True):
        model = DifferentiableSim(scenario, estimator=Anchored(), checkpoint=ckpt)
        for name, fn in (("forward", lambda p: model.metrics(p)["e2e_mean_s"]),
                         ("gradient", jax.grad(lambda p: model.metrics(p)["e2e_mean_s"]))):
            compiled = jax.jit(fn).lower(model.params).compile()
            mem = compiled.memory_analysis()
            temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 1e6 if mem is not None else float("nan")
            _, best, _ = timed(lambda: jax.block_until_ready(compiled(model.params)), 2)
            lines.append(f"| {name} | {ckpt} | {best:.3f} | {temp:.1f} |")
    lines += ["", "Reverse-mode memory against the horizon (compiled temporary memory of the gradient, MB; the state "
              "itself grows with the requests, i.e. with the horizon):", "",
              "| horizon s | steps | plain scan | sqrt-checkpointed | ratio |", "|---|---|---|---|---|"]
    for horizon in (15, 60, 240):
        sc = load_scenario(str(DEFAULT_SCENARIO), [f"simulation.horizon_s={horizon}", "simulation.dt_s=0.05"])
        mem = []
        for ckpt in (False, True):
            model = DifferentiableSim(sc, estimator=Anchored(), checkpoint=ckpt)
            grad = jax.grad(lambda p: model.metrics(p)["e2e_mean_s"])
            analysis = jax.jit(grad).lower(model.params).compile().memory_analysis()
            mem.append(getattr(analysis, "temp_size_in_bytes", float("nan")) / 1e6 if analysis is not None else float("nan"))
        lines.append(f"| {horizon} | {int(horizon / 0.05)} | {mem[0]:.1f} | {mem[1]:.1f} | {mem[0] / mem[1]:.1f}x |")
    lines.append("")


def bench_dt(lines, horizon):
    sets = [f"simulation.horizon_s={horizon}", "client.chat.arrival.rate_per_s=30", "engine.e0.replicas=2",
            'engine.e0.router="least_outstanding"', 'engine.e0.scheduler="chunked"', "engine.e0.max_batch_tokens=512",
            'client.chat.input_tokens={dist="uniform",low=100,high=900}']
    scenario = load_scenario(str(DEFAULT_SCENARIO), sets)
    t = time.perf_counter()
    exact = simulate_reference(scenario)
    t_ref = time.perf_counter() - t
    lines += ["### (e) Error against the exact reference as dt varies", "",
              f"Two Llama-3.1-8B H100 replicas, least-outstanding router, chunked prefill, "
              f"Poisson 30/s, uniform 100-900 input tokens, {horizon:g} s; reference (heap, float64) {t_ref:.1f} s.", "",
              "| dt s | TTFT p50 err | TTFT p99 err | E2E p50 err | E2E p99 err | requests routed differently | after compile s |",
              "|---|---|---|---|---|---|---|"]
    for dt in (0.005, 0.02, 0.1, 0.5, 2.0):
        sc = load_scenario(str(DEFAULT_SCENARIO), sets + [f"simulation.dt_s={dt}"])
        workload = build_workload(sc)
        _, best, fast = timed(lambda: simulate(sc, workload), 1)
        err = {}
        for m in ("ttft_s", "e2e_s"):
            for q in (50, 99):
                a, b = np.nanpercentile(fast.requests[m], q), np.nanpercentile(exact.requests[m], q)
                err[m, q] = abs(a - b) / b
        moved = int((fast.requests.replica != exact.requests.replica).sum())
        lines.append(f"| {dt:g} | {err['ttft_s', 50]:.2%} | {err['ttft_s', 99]:.2%} | {err['e2e_s', 50]:.2%} | "
                     f"{err['e2e_s', 99]:.2%} | {moved} | {best:.2f} |")
    lines += ["", "The router sees the replicas at each exact arrival, so dt changes only speed here; what is left is "
              "float32 rounding of event times (tests/test_simulator.py checks every request within 1e-5 s).", ""]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sweep and dt study (for a smoke run)")
    args = parser.parse_args()
    lines = ["", f"Machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), JAX {jax.__version__}, "
             f"float32; times are wall seconds, best of repeated calls after the first (compiling) one.", ""]
    bench_vidur(lines)
    bench_sweep(lines, 64 if args.quick else 1000)
    bench_traces(lines)
    bench_curves(lines)
    bench_dt(lines, 20 if args.quick else 60)
    readme = HERE / "README.md"
    text = readme.read_text()
    block = "<!-- bench-simulator:start -->\n" + "\n".join(lines) + "\n<!-- bench-simulator:end -->"
    if "<!-- bench-simulator:start -->" in text:
        text = re.sub(r"<!-- bench-simulator:start -->.*<!-- bench-simulator:end -->", lambda _: block, text, flags=re.S)
    else:
        text += "\n## Serving simulator (`python benchmarks/bench_simulator.py`)\n\n" + block + "\n"
    readme.write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
