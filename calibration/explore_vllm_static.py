"""Exploration (issue 13, first slice): how far a physical static-batch model gets on vLLM runs.

    python calibration/explore_vllm_static.py      # about 8 min on 2 cores

Reads LLM-Inference-Bench (../shared/data/llm_inference_bench/All_results.csv), takes the vLLM rows
on H100 and A100-40GB, scores the catalog's Splitwise-fitted values, fits eight efficiency and
overhead parameters on some models and reports the others (held out by model). It writes nothing:
the shipped vLLM profile waits for a model of what this shows (see the printed per-group errors).
"""

import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from pathlib import Path  # noqa: E402

from hermes_jax import get_hardware  # noqa: E402
from hermes_jax.calibrate import Bound, StaticBatchTable, fit_parameters, read_static_batch  # noqa: E402
from hermes_jax.stacks import get_stack  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_inference_bench"
HELD_OUT = ["qwen2-7b", "llama-3-70b"]
START = "sarathi-2024"  # kernel-level fits to Vidur's measured profiles: kernel physics from kernels
NAMES = ["memory_efficiency", "memory_half_bytes", "attention_efficiency", "attention_memory_efficiency",
         "kernel_overhead_s", "host_overhead_s", "host_overhead_per_seq_s", "host_overhead_per_context_token_s",
         "host_overhead_multiworker_s", "collective_overhead_s"]


def main():
    table = read_static_batch(DATA / "All_results.csv")
    print(table.summary())
    import sys
    for device in sys.argv[1:] or ["h100-sxm", "a100-40gb"]:
        rows = table.rows[(table.rows["stack"] == "vllm") & (table.rows.hardware == device)]
        hw = get_hardware(device, stack=START, dtype=jnp.float64)
        tab = StaticBatchTable(rows, hw.spec, hw.params, get_stack("vllm"))
        meas, _ = tab.measured()
        before = np.abs(np.asarray(tab.predict(hw.params)[0]) / meas - 1) * 100
        kept = rows[tab.keep]
        train = ~kept.model.isin(HELD_OUT).to_numpy()
        t0 = time.time()
        res = fit_parameters(lambda p: (tab.predict(p)[0][train], meas[train]), hw.params, NAMES, steps=300,
                             bounds={"host_overhead_per_context_token_s": Bound(1e-11, 1e-6)},
                             polish_steps=100)
        after = np.abs(np.asarray(tab.predict(res.params)[0]) / meas - 1) * 100
        print(f"\n{device}: {len(rows)} vLLM rows, {len(tab.impossible)} impossible, {(tab.waves > 1).sum()} in waves; "
              f"fit {time.time() - t0:.0f} s")
        print(f"  MAPE before ({START} values) {before.mean():.1f}%; after: train {after[train].mean():.1f}%, "
              f"held-out {', '.join(HELD_OUT)} {after[~train].mean():.1f}%")
        for n in NAMES:
            lo, hi = res.interval90[n]
            print(f"  {n:26s} {float(res.value(n)):.4g}  90% [{float(lo):.3g}, {float(hi):.3g}]")
        for w in res.warnings:
            print("  warning:", w)
        print(kept.assign(err_pct=after).groupby(["model", "tp"]).err_pct.mean().round(1).to_string())
        ratio = np.asarray(tab.predict(res.params)[0]) / meas
        print(kept.assign(ratio=ratio).pivot_table(index=["model", "tp", "input"], columns="batch",
                                                   values="ratio").round(2).to_string())


if __name__ == "__main__":
    main()
