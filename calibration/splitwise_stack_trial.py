"""A trial, not a shipped fit: the ``splitwise-2023`` stack as serving terms over the kernels Vidur
measured, against the shipped one (fit_kernels.py's fit of every efficiency from the generic start).

    python calibration/splitwise_stack_trial.py      # about 1 min on 2 cores; writes results/splitwise_stack.md

Starts, per device, from the kernel-level values (``sarathi-2024``) and fits only what serving
software adds (``SERVING``: host and kernel-launch overheads, links as the engine used them, the
efficiency of memory-bound kernels) to Splitwise's Llama-2-70B prefill and decode times at TP 2 and 8,
holding out TP 4 (same loss and optimiser as fit_kernels.py).

Why it is not shipped: it puts the README's anchor (TP 8, one 2,048-token prompt on H100: a
*training* row) within 15% (+12.5% against +25.7%), but every held-out TP 4 error but one is worse
(H100 TPOT 3.0% -> 6.7%, A100 TPOT 2.5% -> 9.0%). Measured H100 TP 8 prefill is not linear in tokens
(a step between 2,048 and 4,096 tokens that neither Vidur's NCCL nor its operator profiles show);
the two starts trade it differently, and held-out accuracy decides.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
import fit_kernels as fk  # noqa: E402

from hermes_jax import get_hardware  # noqa: E402

SERVING = ["host_overhead_s", "host_overhead_per_seq_s", "kernel_overhead_s", "intra_link_efficiency",
           "intra_link_latency", "collective_overhead_s", "memory_efficiency", "memory_half_bytes",
           "elementwise_efficiency"]
REPORT = Path(__file__).resolve().parent / "results" / "splitwise_stack.md"
ANCHOR = {"tensor_parallel": 8, "batch_size": 1, "prompt_size": 2048}


def scores(spec, params, train, test, rows):
    out = {}
    for split, part in (("train TP2,8", train), ("held-out TP4", test)):
        pre, dec = fk.splitwise_predict(spec, params, part)
        out[split] = (fk.mape(pre, part.prompt_time), fk.mape(dec, part.token_time))
    anchor = rows[np.logical_and.reduce([rows[k] == v for k, v in ANCHOR.items()])].reset_index(drop=True)
    pre, _ = fk.splitwise_predict(spec, params, anchor)
    return out, float(pre[0]), float(anchor.prompt_time.iloc[0])


def main() -> None:
    notes: list[str] = []
    df = data.splitwise(notes)
    lines = []
    for hw_name, rows in df.groupby("hardware"):
        rows = rows.reset_index(drop=True)
        start = get_hardware(hw_name, stack="sarathi-2024")
        catalog = get_hardware(hw_name)      # the catalog-level Splitwise fit, for comparison
        train = rows[rows.tensor_parallel.isin([2, 8])].reset_index(drop=True)
        test = rows[rows.tensor_parallel == 4].reset_index(drop=True)

        def loss(p, spec=start.spec, train=train):
            pre, dec = fk.splitwise_predict(spec, p, train)
            return fk.robust_loss(pre, train.prompt_time.to_numpy()) + fk.robust_loss(dec, train.token_time.to_numpy())

        params, final = fk.fit(loss, start.params, SERVING)
        results = {label: scores(start.spec, p, train, test, rows)
                   for label, p in (("kernel-level start", start.params), ("serving terms on kernel fits", params),
                                    ("catalog Splitwise fit", catalog.params))}
        lines.append(f"## {hw_name}\n\n| values | train prefill | train TPOT | held-out TP4 prefill | held-out TP4 TPOT | "
                     "anchor: TP 8, one 2,048-token prompt (ms) |\n|---|---|---|---|---|---|")
        for label, (split, pred, meas) in results.items():
            (tp, td), (hp, hd) = split["train TP2,8"], split["held-out TP4"]
            lines.append(f"| {label} | {tp:.1f}% | {td:.1f}% | {hp:.1f}% | {hd:.1f}% | {pred:.1f} vs {meas:.1f} "
                         f"({pred / meas - 1:+.1%}) |")
        lines.append("")
        print("\n".join(lines[-5:]), flush=True)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("# A splitwise-2023 stack on kernel fits, not shipped (written by calibration/splitwise_stack_trial.py)\n\n"
                      f"MAPE of Splitwise's Llama-2-70B prefill and time per output token; fitted: {', '.join(SERVING)} "
                      "from the kernel-level (sarathi-2024) values. \"catalog Splitwise fit\": fit_kernels.py's fit of "
                      "every efficiency from the generic start (the shipped splitwise-2023 stack and the hardware catalog's default "
                      "values). The anchor is a training row (TP 8); held-out TP 4 decides, and the shipped fit stays.\n\n"
                      + "\n".join(lines))


if __name__ == "__main__":
    main()
