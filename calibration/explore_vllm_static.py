"""Exploration: where the vLLM static-batch fit misses, row by row, and what the decode-attention
rule of the stack changes.

    python calibration/explore_vllm_static.py [DEVICE ...]               # about 1 min per device on 2 cores
    python calibration/explore_vllm_static.py --rules [DEVICE ...]       # the fit with and without the rule
    python calibration/explore_vllm_static.py --overflow [DEVICE ...]    # preempting schedule vs waves

Runs the same fit as ``fit_stacks.py`` (``hermes_jax.calibrate.static_fit.calibrate_static``: vLLM on
H100 and A100-40GB by default, Qwen2-7B and Llama-3-70B held out) and prints predicted / measured
end-to-end latency per model, TP, length and batch, with the fitted values and their intervals.
``--rules`` fits each device twice, with vLLM's decode-attention rule (``kernels.kv_reads``:
PagedAttention for sliding-window models on CUDA, for every model on ROCm) and with every model on
a grouped-KV kernel, and prints the error per split and model of both, after the measured step
time of Mistral-7B-v0.1 over that of GQA models of its size without a sliding window. ``--overflow``
fits each device twice, pricing batches that overflow the KV cache on vLLM's preempting schedule
(``stacks.preemption``) and in waves, and prints the error of those rows under each, then prices the
overflowing rows of TensorRT-LLM and DeepSpeed-MII both ways with their shipped values. It writes nothing; the
shipped profiles come from ``fit_stacks.py``.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hermes_jax.calibrate import calibrate_static, read_static_batch
from hermes_jax.calibrate.readers import HARDWARE_ALIASES
from hermes_jax.calibrate.static import StaticBatchTable
from hermes_jax.hardware import get_hardware
from hermes_jax.stacks import get_stack, register_stack

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_inference_bench"
HELD_OUT = ["qwen2-7b", "llama-3-70b"]


def fit(table, device):
    rows = table.rows[(table.rows["stack"] == "vllm") & (table.rows.hardware == device)]
    held = [m for m in HELD_OUT if m in set(rows.model)]
    return rows, calibrate_static(rows, device, "vllm", held_out={"model": held})


def sliding_window_steps(table, device):
    """Measured seconds per output token of Mistral-7B-v0.1 (sliding window) over the mean of the
    GQA 7B models without one (DeciLM-7B, Qwen2-7B; read from the raw table, whose DeciLM rows the
    catalog does not hold), per TP, length and batch."""
    raw = pd.read_csv(DATA / "All_results.csv")
    raw = raw[(raw.Framework == "vLLM") & (raw.Hardware.map(HARDWARE_ALIASES) == device)]
    raw = raw.assign(step=raw.Latency / raw["Input Output Length"])
    keys = ["Num of Hardware", "Input Output Length", "Batch Size"]
    window = raw[raw.Model == "mistralai/Mistral-7B-v0.1"].groupby(keys).step.mean()
    others = raw[raw.Model.isin(["Deci/DeciLM-7B", "Qwen/Qwen2-7B"])].groupby(keys).step.mean()
    ratio = (window / others).dropna()
    if ratio.empty:
        return
    print(f"\n{device}: measured step of Mistral-7B-v0.1 / DeciLM-7B and Qwen2-7B (TP, length x batch):")
    print(ratio.unstack("Batch Size").round(2).to_string())


def compare_rules(table, devices):
    for device in devices:
        sliding_window_steps(table, device)
    shipped = get_stack("vllm")
    out = []
    for label, rules in (("stack rule", shipped.decode_attention), ("grouped everywhere", {})):
        register_stack(dataclasses.replace(shipped, decode_attention=rules))
        try:
            for device in devices:
                _, result = fit(table, device)
                out.append(result.errors(["model"]).assign(device=device, rule=label))
        finally:
            register_stack(shipped)
    table = pd.concat(out).pivot_table(index=["device", "split", "model"], columns="rule", values="mape_after_pct")
    print("MAPE (%) of end-to-end latency after the fit, per model:")
    print(table.round(1).to_string())


def compare_overflow(table, devices):
    """Fit each device with vLLM's preempting schedule and with waves for batches that overflow the
    KV cache; error of the overflowing rows (fitted and held out together: few of them; and the held-out
    ones alone) and of all held-out rows under each."""
    shipped = get_stack("vllm")
    out = []
    for policy in ("preempt", "waves"):
        register_stack(dataclasses.replace(shipped, overflow=policy))
        try:
            for device in devices:
                _, result = fit(table, device)
                r = result.rows.assign(ratio=result.rows.after / result.rows.latency_s)
                over = r[~r.fits]
                held = over[over.split == "test"]
                out.append({"device": device, "policy": policy, "overflow rows": len(over),
                            "overflow median ratio": over.ratio.median(),
                            "overflow MAPE % (fitted and held out)": 100 * (over.ratio - 1).abs().mean(),
                            "held-out overflow rows": len(held),
                            "held-out overflow MAPE %": 100 * (held.ratio - 1).abs().mean() if len(held) else np.nan,
                            "held-out MAPE %": 100 * (r[r.split == "test"].ratio - 1).abs().mean(),
                            "all rows MAPE %": 100 * (r.ratio - 1).abs().mean()})
        finally:
            register_stack(shipped)
    print("vLLM static batches that overflow the KV cache: preempting schedule vs waves (each fitted):")
    print(pd.DataFrame(out).set_index(["device", "policy"]).round(2).to_string())


def other_stacks_overflow(table, fits=(("trt-llm", "a100-40gb"), ("trt-llm", "h100-sxm"),
                                       ("deepspeed-mii", "a100-40gb"))):
    """The overflowing rows of other engines priced both ways with their shipped values (no refit):
    which schedule their scheduler follows."""
    out = []
    for stack, device in fits:
        rows = table.rows[(table.rows["stack"] == stack) & (table.rows.hardware == device)].reset_index(drop=True)
        hw, profile = get_hardware(device, stack=stack), get_stack(stack)   # the stack's kernels too
        for policy in ("preempt", "waves"):
            t = StaticBatchTable(rows, hw.spec, hw.params, dataclasses.replace(profile, overflow=policy))
            ratio = np.asarray(t.predict(hw.params)[0]) / rows[t.keep].latency_s.to_numpy()
            over = t.waves[t.keep] > 1
            out.append({"stack": stack, "device": device, "policy": policy, "overflow rows": int(over.sum()),
                        "overflow median ratio": np.median(ratio[over]),
                        "overflow MAPE %": 100 * np.abs(ratio[over] - 1).mean()})
    print("\nOther engines' overflowing rows, shipped values (fitted with the stack's own policy), both ways:")
    print(pd.DataFrame(out).set_index(["stack", "device", "policy"]).round(2).to_string())


def main():
    args = sys.argv[1:]
    rules, overflow = "--rules" in args, "--overflow" in args
    devices = [a for a in args if a not in ("--rules", "--overflow")] or ["h100-sxm", "a100-40gb"]
    table = read_static_batch(DATA / "All_results.csv")
    print(table.summary())
    pd.set_option("display.width", 200)
    if rules:
        compare_rules(table, devices)
        return
    if overflow:
        compare_overflow(table, devices)
        other_stacks_overflow(table)
        return
    for device in devices:
        rows, result = fit(table, device)
        print(f"\n{device}: {len(rows)} vLLM rows, {len(result.impossible)} impossible; fit {result.seconds:.0f} s")
        print(result.errors().round(1).to_string(index=False))
        for n in result.fit.names:
            lo, hi = result.fit.interval90[n]
            print(f"  {n:34s} {float(np.ravel(result.fit.value(n))[0]):.4g}  90% [{float(np.ravel(lo)[0]):.3g}, "
                  f"{float(np.ravel(hi)[0]):.3g}]")
        for w in result.fit.warnings:
            print("  warning:", w)
        ratio = result.rows.assign(ratio=result.rows.after / result.rows.latency_s)
        print(ratio.pivot_table(index=["model", "tp", "input"], columns="batch", values="ratio").round(2).to_string())


if __name__ == "__main__":
    main()
