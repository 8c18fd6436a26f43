"""A check of the vLLM stack on runs it has no measurement for: the models TensorRT-LLM ran on a
device where vLLM did not (LLM-Inference-Bench has no vLLM rows for the Llama models on A100-40GB and
H100). The shipped vLLM values predict those runs; measured TensorRT-LLM times of the same runs
stand in for the missing ones, through the vLLM / TensorRT-LLM ratio measured on the models both
engines ran on that device. A prediction whose ratio to TensorRT-LLM falls outside the measured
range says where the vLLM model of an unseen model is least supported.

    python calibration/engine_proxy.py        # about 20 s on 2 cores

Writes calibration/results/engine_proxy.md. Not a score: TensorRT-LLM is another engine, and its
runs of batches that overflow the KV cache go in waves while vLLM preempts.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from hermes_jax.calibrate import read_static_batch
from hermes_jax.calibrate.transfer import predict_with
from hermes_jax.stacks import get_stack

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_inference_bench" / "All_results.csv"
OUT = Path(__file__).resolve().parent / "results" / "engine_proxy.md"
DEVICES = ("a100-40gb", "h100-sxm")
KEYS = ["model", "tp", "batch", "input", "output"]


def markdown(frame: pd.DataFrame) -> list[str]:
    frame = frame.round(2)
    cols = [str(c) for c in frame.columns]
    names = list(frame.index.names)
    out = ["| " + " | ".join(names + [f"batch {c}" for c in cols]) + " |", "|" + "---|" * (len(names) + len(cols))]
    for key, row in frame.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        out.append("| " + " | ".join([str(k) for k in key] + ["-" if pd.isna(v) else f"{v:.2f}" for v in row]) + " |")
    return out


def main():
    rows = read_static_batch(DATA).rows
    vllm = get_stack("vllm")
    lines = ["# vLLM predicted on runs only TensorRT-LLM measured (written by calibration/engine_proxy.py)", "",
             "Median ratios of end-to-end latency per model (and TP) and batch size. Measured: vLLM / TensorRT-LLM "
             "on the runs both engines made. Predicted: the shipped vLLM stack / measured TensorRT-LLM on the runs "
             "of models vLLM never ran on the device. Not a score (another engine stands in); a predicted ratio "
             "outside the measured range is flagged.", ""]
    for device in DEVICES:
        mine = rows[rows.hardware == device]
        measured_v = mine[mine["stack"] == "vllm"].groupby(KEYS).latency_s.mean()
        measured_t = mine[mine["stack"] == "trt-llm"].groupby(KEYS).latency_s.mean()
        both = pd.concat([measured_v.rename("vllm"), measured_t.rename("trt")], axis=1).dropna().reset_index()
        both["ratio"] = both.vllm / both.trt
        shared = both.pivot_table(index="model", columns="batch", values="ratio", aggfunc="median")
        unseen = mine[(mine["stack"] == "trt-llm") & ~mine.model.isin(set(measured_v.reset_index().model))]
        unseen = unseen.assign(stack="vllm").reset_index(drop=True)
        (ratio,), keep = predict_with(unseen, vllm, device, [vllm.devices[device]])
        kept, refused = unseen[keep].assign(ratio=ratio), int((~keep).sum())
        predicted = kept.pivot_table(index=["model", "tp"], columns="batch", values="ratio", aggfunc="median")
        low, high = both.groupby("batch").ratio.min(), both.groupby("batch").ratio.max()
        outside = [(m, tp, b, round(v, 2)) for (m, tp), row in predicted.iterrows() for b, v in row.items()
                   if not pd.isna(v) and not low.get(b, -np.inf) <= v <= high.get(b, np.inf)]
        lines += [f"## {device}", "", f"Measured vLLM / TensorRT-LLM ({len(both)} runs both made):", ""]
        lines += markdown(shared)
        lines += ["", f"Predicted vLLM / measured TensorRT-LLM ({len(kept)} runs of models vLLM has none of here; "
                  f"{refused} refused):", ""]
        lines += markdown(predicted)
        lines += ["", "Outside the measured range at that batch size (model, TP, batch, ratio): "
                  + (", ".join(map(str, outside)) if outside else "none") + ".", ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
