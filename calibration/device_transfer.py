"""Held-out devices: each device a stack is fitted on, predicted with the values the stack has on
other devices of its platform, against the catalog's values. The evidence for the stacks' platform
``fallback`` in hermes_jax/stacks/data/stacks.toml (``hermes_jax.calibrate.transfer``).

    python calibration/device_transfer.py        # about 2 min on 2 cores

Writes calibration/results/device_transfer.md.
"""

from pathlib import Path

import pandas as pd

from hermes_jax.calibrate import read_static_batch
from hermes_jax.calibrate.transfer import device_transfer, stack_transfer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_inference_bench" / "All_results.csv"
OUT = Path(__file__).resolve().parent / "results" / "device_transfer.md"
STACKS = ("vllm", "trt-llm", "deepspeed-mii")   # the stacks fitted on a device where another one is


def main():
    rows = read_static_batch(DATA).rows
    table = pd.concat([device_transfer(rows, stack) for stack in STACKS], ignore_index=True)
    lines = ["# Stack values carried to another device (written by calibration/device_transfer.py)", "",
             "Every device a stack is fitted on is held out in turn: its LLM-Inference-Bench runs "
             "(All_results.csv, end-to-end latency) are predicted with the values the stack has on each other device "
             "of the same software platform, with the catalog's own values (what a device without a fit of its "
             "own or of its die takes when the stack declares no fallback), and with its own fit. "
             "**fallback**: the device the stack's `fallback` names for that platform (hermes_jax/stacks/data/"
             "stacks.toml), marked where it is another die. Same-die rows are the same-die rule's (gh200 <- "
             "h100-sxm), not a held-out die.", "",
             "| stack | held-out device | values from | kind | rows | MAPE | median predicted / measured |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        source = f"**{r.values_from}** (fallback)" if r.fallback else r.values_from
        lines.append(f"| {r.stack} | {r.device} | {source} | {r.kind} | {r.rows} | {r.mape_pct:.1f}% | "
                     f"{r.median_ratio:.2f} |")
    other = table[table.kind == "other die, same platform"]
    catalog = table[table.kind == "catalog values"].set_index(["stack", "device"])
    lines += ["", "Other die of the same platform against catalog values, per held-out device:", ""]
    for r in other.itertuples():
        c = catalog.loc[(r.stack, r.device)]
        verdict = "better" if r.mape_pct < c.mape_pct else "worse"
        lines.append(f"- {r.stack} {r.device} from {r.values_from}: {r.mape_pct:.1f}% against {c.mape_pct:.1f}% "
                     f"({verdict})")
    cross = stack_transfer(rows, STACKS)
    lines += ["", "The other order, measured: the same device's fit of another stack (with the held-out stack's own KV "
              "rule, scheduler and kernels). It beats the catalog's values on every pair, but the stack matters more than "
              "the die: a stack's own fit on another die of the platform comes first, another stack's fit on the "
              "device next (`stacks.catalog.device_values`).", "",
              "| stack | device | values from | rows | MAPE | median predicted / measured |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.stack} | {r.device} | {r.values_from} | {r.rows} | {r.mape_pct:.1f}% | {r.median_ratio:.2f} |"
              for r in cross.itertuples()]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
