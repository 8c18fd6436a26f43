"""Fit the shipped serving-stack profiles to LLM-Inference-Bench and score them on held-out models.

    python calibration/fit_stacks.py      # about 20 min on 2 cores

For every (stack, device) with measured static-batch runs (vLLM, TensorRT-LLM, DeepSpeed-MII on
A100-40GB, H100, GH200, MI300X, MI250 GCDs (two per package) and Intel Max 1550; Habana's DeepSpeed on
Gaudi 2):
start from the kernel-level fits of Vidur's measured profiles (``sarathi-2024``; the catalog's values where there are none), hold out
whole models (qwen2-7b and llama-3-70b where measured, else the listed fallback), fit the stack
parameter set (``hermes_jax.calibrate.static_fit.DEFAULT_NAMES``, plus ``KERNEL_NAMES`` where no
kernel-level fit exists) on the other models and score both parts.

Large-GEMM efficiency (``compute_efficiency``) on a device where *other* engines measured time to
first token (Fig. 21: 16 prompts of 1,024 tokens) is fitted to those runs, each predicted with its
own engine's values (``hermes_jax.calibrate.prefill``): the machine's sustained GEMM rate, which the
kernel-level fits (measured on other boards of the die) miss by up to 17%. Sources are the engines
that prefill a prompt in one pass (vLLM, TensorRT-LLM), never the engine being fitted, so its own
time to first token stays a held-out check; the engines' other values come from a first pass of
fits without the ceiling. A device with runs of one engine only keeps the kernel-level value.

Writes the device tables of ``hermes_jax/stacks/data/stacks.toml`` (with provenance), one report
per fit in ``calibration/results/stacks/`` (Markdown, JSON, residual PNG) and the summary table in
``calibration/README.md`` and the top-level ``README.md`` (between the stacks-table markers). The
shipped values are the fits whose held-out scores the table quotes (fitted without those models).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np

from hermes_jax.hardware.catalog import same_die_devices
from hermes_jax.calibrate.prefill import fit_gemm_ceiling, first_token_seconds
from hermes_jax.calibrate.readers import read_static_batch
from hermes_jax.calibrate.static_fit import DEFAULT_START, calibrate_static
from hermes_jax.stacks import get_stack
from hermes_jax.stacks.catalog import DATA as STACK_DATA
from hermes_jax.stacks.profile import profiles_to_toml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "llm_inference_bench"
RESULTS = ROOT / "calibration" / "results" / "stacks"
FITS = [("vllm", "h100-sxm"), ("vllm", "a100-40gb"), ("vllm", "gh200"), ("vllm", "mi300x"), ("vllm", "mi250-gcd"),
        ("vllm", "max1550"),
        ("trt-llm", "h100-sxm"), ("trt-llm", "a100-40gb"), ("trt-llm", "gh200"), ("deepspeed-mii", "a100-40gb"),
        ("deepspeed", "gaudi2")]
HELD_OUT = ["qwen2-7b", "llama-3-70b"]
FALLBACK_HELD_OUT = ["llama-3-8b"]      # where neither of HELD_OUT was measured
BOOTSTRAP = 20   # refits on resampled rows: the check of the Laplace intervals
CEILING_SOURCES = ("vllm", "trt-llm")   # prefill each prompt in one pass (DeepSpeed-MII's SplitFuse chunks it)
MARK = ("<!-- stacks-table:start -->", "<!-- stacks-table:end -->")


def ttft_score(profile, device: str, ttft_rows) -> tuple[int, float]:
    """(rows, MAPE %) of the prefill of the first wave against measured time to first token."""
    rows = ttft_rows[(ttft_rows.hardware == device) & (ttft_rows["stack"] == profile.name)]
    if rows.empty:
        return 0, float("nan")
    return len(rows), float(np.mean(np.abs(first_token_seconds(profile, device, rows) / rows.ttft_s - 1)) * 100)


def ceiling_sources(ttft_rows, stack: str, device: str):
    """Time-to-first-token runs on ``device`` of the other one-pass engines (empty: no ceiling)."""
    return ttft_rows[(ttft_rows.hardware == device) & ttft_rows["stack"].isin(CEILING_SOURCES)
                     & (ttft_rows["stack"] != stack)]


def held_out_models(rows) -> list[str]:
    models = set(rows.model)
    return [m for m in HELD_OUT if m in models] or [m for m in FALLBACK_HELD_OUT if m in models]


def first_pass(table, ttft_rows) -> dict:
    """(stack, device) -> profile fitted from the kernel-level start, for every engine whose time to
    first token serves as another engine's ceiling source: its attention, elementwise and host values."""
    out = {}
    for stack, device in FITS:
        runs = (ttft_rows.hardware == device) & (ttft_rows["stack"] == stack)
        if stack not in CEILING_SOURCES or not runs.any() or not any(d == device and o != stack for o, d in FITS):
            continue
        rows = table.rows[(table.rows["stack"] == stack) & (table.rows.hardware == device)]
        print(f"first pass: {stack} on {device}", flush=True)
        result = calibrate_static(rows, device, stack, held_out={"model": held_out_models(rows)})
        out[stack, device] = result.profile(get_stack(stack))
    return out


def inherit_unseen(profile, device: str, unused: list[str]):
    """Values no row of this device depends on (a kernel path its models never take, a multi-device
    overhead where only one device ran) come from the fit of the same chip where that fit saw them
    (gh200 <- h100-sxm), instead of the generic start value; the provenance says so."""
    values, prov = dict(profile.devices[device]), dict(profile.provenance[device])
    notes = []
    for other in same_die_devices(device):
        fitted = [n for n in unused if n in profile.devices.get(other, {})
                  and n in profile.provenance.get(other, {}).get("fitted", "").split(", ")]
        for n in fitted:
            values[n] = profile.devices[other][n]
            notes.append(f"{n} from {other}")
        unused = [n for n in unused if n not in fitted]
    if not notes:
        return profile
    prov["inherited"] = "; ".join(notes) + " (same die; no row of these data depends on them)"
    return dataclasses.replace(profile, devices={**profile.devices, device: values},
                               provenance={**profile.provenance, device: prov})


def sd_ratio(fit) -> float:
    """Median over the free, identified parameters of bootstrap sd / Laplace sd (1: they agree)."""
    ratios = [float(np.ravel(fit.bootstrap_sd[n])[0] / np.ravel(fit.sd_log[n])[0]) for n in fit.names
              if n not in fit.at_bound and 0 < float(np.ravel(fit.sd_log[n])[0]) < 0.5]
    return float(np.median(ratios)) if ratios else float("nan")


def main() -> int:
    data = SHARED / "All_results.csv"
    table = read_static_batch(data)
    # Fig. 21 holds the time-to-first-token runs of Fig. 22 (same values) and also TensorRT-LLM's on
    # GH200, whose end-to-end run Fig. 22 leaves empty.
    ttft_file = SHARED / "Fig_21_all_results_TTFT.csv"
    ttft_rows = read_static_batch(ttft_file).rows
    print(table.summary())
    RESULTS.mkdir(parents=True, exist_ok=True)
    profiles = {name: get_stack(name) for name in dict.fromkeys(s for s, _ in FITS)}
    first = first_pass(table, ttft_rows)
    summary = []
    for stack, device in FITS:
        rows = table.rows[(table.rows["stack"] == stack) & (table.rows.hardware == device)]
        held = held_out_models(rows)
        print(f"\n{stack} on {device}: {len(rows)} rows, holding out {', '.join(held)}", flush=True)
        start, notes, ceiling = DEFAULT_START, [], "-"
        sources = ceiling_sources(ttft_rows, stack, device)
        measured, _, _ = get_stack(DEFAULT_START).values_for(device, same_die_devices(device))
        if len(sources) and measured:  # (without a kernel-level fit, compute_efficiency is fitted to these rows)
            fit = fit_gemm_ceiling({s: first[s, device] for s in set(sources["stack"])}, device, sources)
            start, ceiling = fit.apply(DEFAULT_START), fit.sources
            notes.append(fit.describe() + f" ({ttft_file.name}); other engines' runs only: this one's are held out")
            print("  " + notes[-1], flush=True)
        result = calibrate_static(rows, device, stack, start=start, held_out={"model": held},
                                  data_files=[data] + ([ttft_file] if notes else []), bootstrap=BOOTSTRAP,
                                  progress=lambda m: print("  " + m, flush=True), notes=notes)
        profiles[stack] = inherit_unseen(result.profile(profiles[stack]), device, result.fit.unused)
        result.write(RESULTS, f"{stack}-{device}")
        err = result.errors().set_index("split")
        n_ttft, ttft = ttft_score(profiles[stack], device, ttft_rows)
        summary.append({"stack": stack, "device": device, "held": held, "seconds": result.seconds,
                        "train_n": int(err.loc["train", "points"]), "train": err.loc["train", "mape_after_pct"],
                        "test_n": int(err.loc["test", "points"]), "before": err.loc["test", "mape_before_pct"],
                        "test": err.loc["test", "mape_after_pct"], "ttft_n": n_ttft, "ttft": ttft, "ceiling": ceiling,
                        "warnings": len(result.fit.warnings), "sd_ratio": sd_ratio(result.fit)})
        print(result.errors().to_string(index=False))
    header = ("Serving stacks. [NAME.devices.DEVICE] tables are written by calibration/fit_stacks.py (do not edit by\n"
              "hand; rerun the script); the rest (version, KV sizing rule, overflow, decode attention rule, platform\n"
              "fallback: calibration/device_transfer.py) are the stacks' documented defaults.")
    (STACK_DATA / "stacks.toml").write_text(profiles_to_toml(profiles, header))
    lines = ["| stack | device | fit on (rows) | MAPE fitted rows | held-out models | held-out rows | "
             "MAPE held out, before (kernel values) | MAPE held out, after | GEMM ceiling from (TTFT of) | TTFT runs | "
             "TTFT MAPE (own runs never fitted) | bootstrap / Laplace sd |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        ttft = f"{s['ttft']:.1f}%" if s["ttft_n"] else "-"
        lines.append(f"| {s['stack']} | {s['device']} | {s['train_n']} | {s['train']:.1f}% | {', '.join(s['held'])} | "
                     f"{s['test_n']} | {s['before']:.1f}% | {s['test']:.1f}% | {s['ceiling']} | {s['ttft_n']} | {ttft} | "
                     + (f"{s['sd_ratio']:.2f} |" if np.isfinite(s["sd_ratio"]) else "- |"))
    block = "\n".join([MARK[0], *lines, MARK[1]])
    for readme in (ROOT / "README.md", ROOT / "calibration" / "README.md"):
        text = readme.read_text()
        if MARK[0] not in text:
            print(f"{readme}: no {MARK[0]} marker; table not written there", file=sys.stderr)
            continue
        readme.write_text(re.sub(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), lambda _: block, text, flags=re.S))
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
