"""Readers for static-batch measurement tables, into one canonical frame.

Canonical columns: ``model`` (catalog name), ``hardware`` (catalog device), ``stack``, ``tp``,
``batch``, ``input``, ``output`` (tokens per request), ``latency_s`` (whole batch end to end),
``ttft_s`` (NaN where not measured), ``source`` (file) and ``line`` (1-based line in it).

Formats: the LLM-Inference-Bench tables (``Hardware, Num of Hardware, Framework, Model, Input Output
Length | Input Length + Output Length, Batch Size, Latency | TTFT Latency + end_latency``) and a
generic CSV with the canonical column names (``ttft_s`` and ``stack`` optional).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..models.config import model_names, get_model

HARDWARE_ALIASES = {
    # LLM-Inference-Bench ran its A100s on ALCF Polaris (A100-SXM4-40GB).
    "Nvidia A100 GPU": "a100-40gb", "Nvidia H100 GPU": "h100-sxm", "Nvidia GH200 GPU": "gh200",
    "AMD MI300X GPU": "mi300x", "AMD MI250 GPU": "mi250-gcd", "Habana Gaudi2": "gaudi2",
    "Intel Max 1550": "max1550",
}
EXCLUDED_HARDWARE = {
    "Intel PVC GPU": "PVC runs not modelled: 17-19 s at batch 1 and 128 tokens where Max 1550 (the same "
                     "chip) took 2 s, and 2 GPUs 2.5x faster than one at batch 1; a fixed time per run that "
                     "no per-step parameter describes",
}
"""LLM-Inference-Bench hardware whose rows are skipped with the reason (calibration/README.md)."""
DEVICES_PER_UNIT = {"AMD MI250 GPU": 2}
"""Devices the engine sees per unit the table counts: an MI250 package is two GCDs, each a GPU to
ROCm, so "Num of Hardware" N is tensor parallelism over 2N GCDs (Llama-2-70B's 140 GB of weights
run on "2" MI250s, which two 64 GB GCDs could not hold)."""
STACK_ALIASES = {"vLLM": "vllm", "TensorRT-LLM": "trt-llm", "Deepspeed-MII": "deepspeed-mii",
                 "Deepspeed": "deepspeed", "llama.cpp": "llama.cpp", "sambaflow": "sambaflow"}
CANONICAL = ("model", "hardware", "tp", "batch", "input", "output", "latency_s")


@dataclass
class StaticTable:
    """Rows that can be estimated, and those that cannot with the reason (never silently dropped)."""

    rows: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=pd.DataFrame)   # canonical columns + reason

    def summary(self) -> str:
        if self.skipped.empty:
            return f"{len(self.rows)} rows"
        reasons = self.skipped.reason.value_counts()
        return f"{len(self.rows)} rows; skipped {len(self.skipped)}: " + "; ".join(f"{n} {r}" for r, n in reasons.items())


def _model_index() -> dict[str, str]:
    """Hugging Face id (case-insensitive) and catalog name -> catalog name."""
    index = {}
    for name in model_names():
        index[name.lower()] = name
        hf_id = get_model(name).hf_id
        if hf_id:
            index[hf_id.lower()] = name
    return index


def _numeric(df: pd.DataFrame, column: str, path: Path, integer: bool, allow_empty: bool = False) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
    empty = (df[column].astype(str).str.strip() == "").to_numpy() if allow_empty else np.zeros(len(df), bool)
    bad = ~empty & ~np.isfinite(values) | (values < 0) | ((values % 1 != 0) if integer else False)
    if integer:
        bad |= values < 1
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "a whole number >= 1" if integer else "a finite number >= 0"
        raise ConfigError(f"{path}:{int(df['line'].iloc[i])} column {column!r}: expected {kind}, "
                          f"got {df[column].iloc[i]!r}")
    return values


def read_csv_strings(path: Path) -> pd.DataFrame:
    """Every cell as text (empty cells as ""), column names stripped; unreadable files name themselves."""
    try:
        df = pd.read_csv(path, skipinitialspace=True, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"{path}: cannot read as CSV ({exc})") from None
    df.columns = [c.strip() for c in df.columns]
    return df


def read_static_batch(path: str | Path, unsupported: str = "skip") -> StaticTable:
    """Read a static-batch table. Rows naming a model or device not in the catalogs are skipped with
    their reason (``unsupported="skip"``) or raise (``"error"``)."""
    path = Path(path)
    df = read_csv_strings(path)
    df = df[(df != "").any(axis=1)].copy()
    df["line"] = df.index.to_numpy() + 2          # header is line 1
    if "Framework" in df.columns:
        df = _from_inference_bench(df, path)
    else:
        missing = [c for c in CANONICAL if c not in df.columns]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; a static-batch CSV needs "
                              f"{', '.join(CANONICAL)} (optional: ttft_s, stack) or the LLM-Inference-Bench columns")
        if "stack" not in df.columns:
            df["stack"] = ""
        if "ttft_s" not in df.columns:
            df["ttft_s"] = "nan"
    if df.empty:
        raise ConfigError(f"{path}: no data rows")
    out = pd.DataFrame({"model": df["model"].str.strip(), "hardware": df["hardware"].str.strip(),
                        "stack": df["stack"].str.strip(), "source": str(path), "line": df.line.astype(int)})
    for col in ("tp", "batch", "input", "output"):
        out[col] = _numeric(df, col, path, integer=True).astype(int)
    # An empty latency cell is a run that did not complete: kept as a skipped row with its reason.
    out["latency_s"] = _numeric(df, "latency_s", path, integer=False, allow_empty=True)
    ttft = df["ttft_s"].astype(str).replace({"": "nan"})
    out["ttft_s"] = pd.to_numeric(ttft, errors="coerce").to_numpy(float)
    if (out.latency_s.fillna(1.0) <= 0).any():
        i = int(np.flatnonzero((out.latency_s <= 0).to_numpy())[0])
        raise ConfigError(f"{path}:{int(out.line.iloc[i])} column 'latency_s': must be > 0")
    return _resolve(out, path, unsupported)


def _from_inference_bench(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    need = ["Hardware", "Num of Hardware", "Framework", "Model", "Batch Size"]
    if "Input Output Length" in df.columns:
        df["input"] = df["output"] = df["Input Output Length"]
    elif {"Input Length", "Output Length"} <= set(df.columns):
        df["input"], df["output"] = df["Input Length"], df["Output Length"]
    else:
        need.append("Input Output Length")
    if "end_latency" in df.columns:
        # Fig 22 pairs the TTFT run (its Output Length, 1) with the end-to-end run of the same
        # prompt, whose output is as long as the input (the benchmark's equal-length convention).
        df["latency_s"], df["ttft_s"] = df["end_latency"], df.get("TTFT Latency", "nan")
        df["output"] = df["input"]
    elif "Latency" in df.columns:
        df["latency_s"] = df["Latency"]
        # A run with one output token is a time-to-first-token measurement (Fig 21).
        df["ttft_s"] = np.where(df["output"].astype(str).str.strip() == "1", df["Latency"], "nan")
    else:
        need.append("Latency")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: LLM-Inference-Bench table without column(s) {', '.join(missing)}")
    if "Parallelism Type" in df.columns:
        df = df[df["Parallelism Type"].str.strip() == "Tensor Parallelism"].copy()
    df["hardware"] = df["Hardware"].str.strip().map(lambda h: HARDWARE_ALIASES.get(h, h))
    df["stack"] = df["Framework"].str.strip().map(lambda f: STACK_ALIASES.get(f, f))
    units = pd.to_numeric(df["Num of Hardware"], errors="coerce")
    per_unit = df["Hardware"].str.strip().map(lambda h: DEVICES_PER_UNIT.get(h, 1))
    # A count that is not a whole number stays as written, for the line-numbered error of the tp column.
    whole = (units.notna() & (units % 1 == 0)).to_numpy()
    scaled = (units.fillna(0).round().astype(int) * per_unit).astype(str)
    df["tp"] = np.where(whole, scaled, df["Num of Hardware"])
    df["model"], df["batch"] = df["Model"], df["Batch Size"]
    return df


def _resolve(out: pd.DataFrame, path: Path, unsupported: str) -> StaticTable:
    from ..hardware.catalog import hardware_names
    models, devices = _model_index(), set(hardware_names())
    out["model"] = [models.get(m.lower(), m) for m in out.model]
    excluded = out.hardware.map(EXCLUDED_HARDWARE).fillna("").to_numpy(dtype=object)
    reason = np.select([~out.model.isin(set(models.values())), excluded != "", ~out.hardware.isin(devices),
                        out.latency_s.isna()],
                       ["model not in the catalog", excluded, "device not in the catalog", "no latency measured"],
                       default="").astype(str)
    bad = reason != ""
    if bad.any() and unsupported == "error":
        i = int(np.flatnonzero(bad)[0])
        col = "model" if reason[i].startswith("model") else "hardware"
        raise ConfigError(f"{path}:{int(out.line.iloc[i])} column {col!r}: {out[col].iloc[i]!r}: {reason[i]}")
    return StaticTable(out[~bad].reset_index(drop=True), out[bad].assign(reason=reason[bad]).reset_index(drop=True))
