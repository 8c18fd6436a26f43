"""Fit the shipped serving-stack profiles to LLM-Inference-Bench and score them on held-out models.

    python calibration/fit_stacks.py      # about 10 min on 2 cores

For every (stack, device) with measured static-batch runs (vLLM, TensorRT-LLM, DeepSpeed-MII on
A100-40GB, H100, GH200, MI300X, and MI250 GCDs, two per package; Habana's DeepSpeed on Gaudi 2):
start from the kernel-level fits of Vidur's measured profiles (``sarathi-2024``; the catalog's values where there are none), hold out
whole models (qwen2-7b and llama-3-70b where measured, else the listed fallback), fit the stack
parameter set (``hermes_jax.calibrate.static_fit.DEFAULT_NAMES``, plus ``KERNEL_NAMES`` where no
kernel-level fit exists) on the other models and score both parts. Time
to first token is never fitted: it is scored on the Fig. 22 runs (batch 16, 1024-token prompts).

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

from hermes_jax import EngineSpec, Parallelism, get_hardware, get_model
from hermes_jax.hardware.catalog import same_die_devices
from hermes_jax.calibrate.readers import read_static_batch
from hermes_jax.calibrate.static_fit import calibrate_static
from hermes_jax.stacks import get_stack
from hermes_jax.stacks.catalog import DATA as STACK_DATA
from hermes_jax.stacks.kv import kv_capacity, static_batch_in_waves, static_waves
from hermes_jax.stacks.profile import profiles_to_toml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "llm_inference_bench"
RESULTS = ROOT / "calibration" / "results" / "stacks"
FITS = [("vllm", "h100-sxm"), ("vllm", "a100-40gb"), ("vllm", "gh200"), ("vllm", "mi300x"), ("vllm", "mi250-gcd"),
        ("trt-llm", "h100-sxm"), ("trt-llm", "a100-40gb"), ("trt-llm", "gh200"), ("deepspeed-mii", "a100-40gb"),
        ("deepspeed", "gaudi2")]
HELD_OUT = ["qwen2-7b", "llama-3-70b"]
FALLBACK_HELD_OUT = ["llama-3-8b"]      # where neither of HELD_OUT was measured
BOOTSTRAP = 20   # refits on resampled rows: the check of the Laplace intervals
MARK = ("<!-- stacks-table:start -->", "<!-- stacks-table:end -->")


def ttft_score(profile, device: str, ttft_rows) -> tuple[int, float]:
    """(rows, MAPE %) of the prefill of the first wave against measured time to first token."""
    rows = ttft_rows[(ttft_rows.hardware == device) & (ttft_rows["stack"] == profile.name)]
    if rows.empty:
        return 0, float("nan")
    hw = get_hardware(device, stack=profile)  # the new values, not the shipped ones
    errs = []
    for r in rows.itertuples():
        engine = EngineSpec(get_model(r.model), hw.spec, Parallelism(tp=int(r.tp)))
        w = static_waves(engine, kv_capacity(engine, hw.params, profile), int(r.batch), int(r.input), int(r.output))
        _, wave = static_batch_in_waves(engine, hw.params, w.per_wave, w.full, w.last, r.input, r.output)
        errs.append(abs(float(wave.prefill_s) / r.ttft_s - 1) * 100)
    return len(errs), float(np.mean(errs))


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
    ttft_rows = read_static_batch(SHARED / "Fig_22_all_results_TTFT_ITL.csv").rows
    print(table.summary())
    RESULTS.mkdir(parents=True, exist_ok=True)
    profiles = {name: get_stack(name) for name in dict.fromkeys(s for s, _ in FITS)}
    summary = []
    for stack, device in FITS:
        rows = table.rows[(table.rows["stack"] == stack) & (table.rows.hardware == device)]
        models = set(rows.model)
        held = [m for m in HELD_OUT if m in models] or [m for m in FALLBACK_HELD_OUT if m in models]
        print(f"\n{stack} on {device}: {len(rows)} rows, holding out {', '.join(held)}", flush=True)
        result = calibrate_static(rows, device, stack, held_out={"model": held}, data_files=[data],
                                  bootstrap=BOOTSTRAP, progress=lambda m: print("  " + m, flush=True))
        profiles[stack] = inherit_unseen(result.profile(profiles[stack]), device, result.fit.unused)
        result.write(RESULTS, f"{stack}-{device}")
        err = result.errors().set_index("split")
        n_ttft, ttft = ttft_score(profiles[stack], device, ttft_rows)
        summary.append({"stack": stack, "device": device, "held": held, "seconds": result.seconds,
                        "train_n": int(err.loc["train", "points"]), "train": err.loc["train", "mape_after_pct"],
                        "test_n": int(err.loc["test", "points"]), "before": err.loc["test", "mape_before_pct"],
                        "test": err.loc["test", "mape_after_pct"], "ttft_n": n_ttft, "ttft": ttft,
                        "warnings": len(result.fit.warnings), "sd_ratio": sd_ratio(result.fit)})
        print(result.errors().to_string(index=False))
    header = ("Serving stacks. [NAME.devices.DEVICE] tables are written by calibration/fit_stacks.py (do not edit by\n"
              "hand; rerun the script); the rest (version, KV sizing rule, overflow, decode attention rule) are the stacks'\n"
              "documented defaults.")
    (STACK_DATA / "stacks.toml").write_text(profiles_to_toml(profiles, header))
    lines = ["| stack | device | fit on (rows) | MAPE fitted rows | held-out models | held-out rows | "
             "MAPE held out, before (kernel values) | MAPE held out, after | TTFT runs | TTFT MAPE (never fitted) | "
             "bootstrap / Laplace sd |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        ttft = f"{s['ttft']:.1f}%" if s["ttft_n"] else "-"
        lines.append(f"| {s['stack']} | {s['device']} | {s['train_n']} | {s['train']:.1f}% | {', '.join(s['held'])} | "
                     f"{s['test_n']} | {s['before']:.1f}% | {s['test']:.1f}% | {s['ttft_n']} | {ttft} | "
                     f"{s['sd_ratio']:.2f} |")
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
