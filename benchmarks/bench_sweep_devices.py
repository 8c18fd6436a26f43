"""Sweep throughput in configurations per minute: one device, threads, and the configurations
sharded over local devices (``sweep(devices="all")``), side by side on this machine; on a CPU the
devices are host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), on a GPU machine
the GPUs. Writes benchmarks/results/sweep_devices.md. Run: python benchmarks/bench_sweep_devices.py

Scenario: the default one (Llama-3.1-8B on an H100, Poisson 5/s) over 60 s, C configurations of
HBM bandwidth and bf16 peak scaled by exp(-0.5 .. 0.5); times after the first (compiling) call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, os, sys, time
import jax, jax.numpy as jnp, numpy as np
from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario
from hermes_jax.sim.build import build_group
from hermes_jax.sim.sweep import sweep
configs, mode = int(sys.argv[1]), sys.argv[2]
scenario = load_scenario(DEFAULT_SCENARIO, ["simulation.horizon_s=60"])
base = build_group(scenario.engines[0]).params
grid = np.linspace(-0.5, 0.5, configs)
batch = type(base)({k: jnp.broadcast_to(v, (configs,) + v.shape) for k, v in base.log.items()})
batch = type(base)({**batch.log, "hbm_bandwidth": batch.log["hbm_bandwidth"] + jnp.asarray(grid),
                    "peak_flops": batch.log["peak_flops"] + jnp.asarray(grid[::-1])[:, None]})
kwargs = {"one": {}, "threads": {"workers": os.cpu_count()}, "sharded": {"devices": "all"}}[mode]
run = lambda: jax.block_until_ready(sweep(scenario, batch, **kwargs))
t = time.perf_counter(); run(); first = time.perf_counter() - t
after = float("inf")
for _ in range(3):   # best of three after the compiling call
    t = time.perf_counter(); out = run(); after = min(after, time.perf_counter() - t)
print(json.dumps({"mode": mode, "devices": len(jax.local_devices()), "platform": jax.default_backend(),
                  "configs": configs, "first_s": first, "after_s": after,
                  "configs_per_min": configs / after * 60, "e2e_mean_range_s": [float(out["e2e_mean_s"].min()),
                                                                                float(out["e2e_mean_s"].max())]}))
"""


def child(configs: int, mode: str, host_devices: int) -> dict:
    env = dict(os.environ)
    if host_devices > 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={host_devices}".strip()
    done = subprocess.run([sys.executable, "-c", CHILD, str(configs), mode], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=int, default=64)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = [child(args.configs, "one", 1), child(args.configs, "threads", 1),
            child(args.configs, "sharded", cores)]
    base = rows[0]["configs_per_min"]
    lines = ["# Sweep throughput (`python benchmarks/bench_sweep_devices.py`)", "",
             f"{args.configs} configurations of the default scenario over 60 s; {cores} CPU cores; times after the "
             "compiling call (best of three).", "",
             "| how | platform, devices | after compile s | configurations / min | vs one device |", "|---|---|---|---|---|"]
    labels = {"one": "one device, sequential", "threads": f"one device, {cores} threads",
              "sharded": "sharded over the devices (shard_map)"}
    for r in rows:
        lines.append(f"| {labels[r['mode']]} | {r['platform']}, {r['devices']} | {r['after_s']:.2f} | "
                     f"{r['configs_per_min']:.0f} | {r['configs_per_min'] / base:.2f}x |")
    lines += ["", f"Mean E2E across the configurations: {rows[0]['e2e_mean_range_s'][0]:.2f} .. "
              f"{rows[0]['e2e_mean_range_s'][1]:.2f} s (the same in every row).", ""]
    (HERE / "results" / "sweep_devices.md").write_text("\n".join(lines))
    (HERE / "results" / "sweep_devices.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
