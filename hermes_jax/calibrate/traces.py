"""Readers for per-request serving measurements, into one canonical frame.

Canonical columns, one row per request: ``arrival_s`` (send time from the first request; NaN where
the tool does not record it), ``input`` and ``output`` (tokens), ``ttft_s``, ``e2e_s``, ``itl_s``
(mean gap between output tokens after the first; NaN with one output token), ``source`` (file) and
``record`` (1-based line of a JSON Lines or CSV file, 0-based index of a JSON list).

Formats, detected from the content:

- AIPerf ``profile_export.jsonl``: one record per line with ``metadata.request_start_ns`` and
  ``metrics.{input_sequence_length, output_sequence_length, time_to_first_token, request_latency,
  inter_token_latency}`` (each ``{"value", "unit"}``);
- vLLM ``benchmark_serving.py --save-result`` JSON: ``input_lens``, ``output_lens``, ``ttfts``,
  ``itls`` (per-request lists of gaps), optional ``e2els`` / ``start_times`` and ``errors``;
- LLMPerf ``individual_responses`` JSON (``shared/data/llmperf_leaderboard``): a list of records with
  ``ttft_s``, ``end_to_end_latency_s``, ``inter_token_latency_s``, ``number_input_tokens``,
  ``number_output_tokens``, ``error_code``;
- a generic CSV with ``arrival_s,input,output,ttft_s,e2e_s`` (``itl_s`` optional).

Failed requests are never dropped silently: they are in ``skipped`` with the tool's error message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..tomlio import json_lines, read_text
from .readers import read_csv_strings

COLUMNS = ("arrival_s", "input", "output", "ttft_s", "e2e_s", "itl_s")
_SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0}   # time units -> s
_COUNTS = ("tokens", "")                                                   # token counts, as they are


@dataclass
class RequestTrace:
    """Requests that completed, and those that did not with the reason."""

    rows: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=pd.DataFrame)
    format: str = ""

    def summary(self) -> str:
        text = f"{len(self.rows)} requests ({self.format})"
        if len(self.skipped):
            reasons = self.skipped.reason.str.replace(r"\d+", "#", regex=True).str.strip().value_counts()
            text += f"; skipped {len(self.skipped)}: " + "; ".join(f"{n} {r}" for r, n in reasons.items())
        return text


def _frame(records: list[dict], path: Path, fmt: str) -> RequestTrace:
    df = pd.DataFrame(records, columns=[*COLUMNS, "record", "error"])
    df["source"] = str(path)
    failed = df.error.fillna("").astype(str) != ""
    rows = df[~failed].drop(columns="error").reset_index(drop=True)
    for col in COLUMNS:
        rows[col] = pd.to_numeric(rows[col], errors="coerce").astype(float)
    def where(i):  # a CSV or JSON Lines row by its line, a JSON list entry by its index
        record = int(rows.record.iloc[i])
        return f"{path}:{record}" if fmt in ("csv", "aiperf") else f"{path} record {record}"

    for col in ("input", "output", "ttft_s", "e2e_s"):
        bad = ~np.isfinite(rows[col].to_numpy()) | (rows[col].to_numpy() < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"{where(i)} {col}: expected a finite number >= 0, got {rows[col].iloc[i]!r}")
    late = rows.ttft_s.to_numpy() > rows.e2e_s.to_numpy() * (1 + 1e-9)
    if late.any():
        i = int(np.flatnonzero(late)[0])
        raise ConfigError(f"{where(i)}: ttft {rows.ttft_s.iloc[i]:.6g} s after the end {rows.e2e_s.iloc[i]:.6g} s")
    if rows.arrival_s.notna().any():
        rows["arrival_s"] = rows.arrival_s - rows.arrival_s.min()
    skipped = df[failed].assign(reason=df.error[failed].astype(str)).drop(columns="error").reset_index(drop=True)
    return RequestTrace(rows, skipped, fmt)


def _metric(metrics: dict, name: str, path: Path, line: int):
    item = metrics.get(name)
    if item is None:
        return np.nan
    if not isinstance(item, dict) or "value" not in item:
        raise ConfigError(f"{path}:{line} metrics.{name}: expected {{\"value\": ..., \"unit\": ...}}")
    unit = item.get("unit", "")
    if unit not in _SCALE and unit not in _COUNTS:  # never read a value in a unit we do not know
        raise ConfigError(f"{path}:{line} metrics.{name}: unit {unit!r} unknown; known: "
                          f"{', '.join(sorted(_SCALE) + sorted(_COUNTS))}")
    value = item["value"]
    if isinstance(value, list):
        value = float(np.mean(value)) if value else np.nan
    try:
        return float(value) * _SCALE.get(unit, 1.0)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}:{line} metrics.{name}: expected a number, got {value!r}") from None


def _aiperf(path: Path, text: str) -> RequestTrace:
    out = []
    for k, rec in json_lines(path, text):
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}:{k}: expected a record object with metadata and metrics")
        meta, metrics, err = rec.get("metadata") or {}, rec.get("metrics") or {}, rec.get("error")
        start = meta.get("request_start_ns")
        if start is not None and not isinstance(start, (int, float)):
            raise ConfigError(f"{path}:{k} metadata.request_start_ns: expected a number, got {start!r}")
        row = {"record": k, "arrival_s": start * 1e-9 if start is not None else np.nan,
               "input": _metric(metrics, "input_sequence_length", path, k),
               "output": _metric(metrics, "output_sequence_length", path, k),
               "ttft_s": _metric(metrics, "time_to_first_token", path, k),
               "e2e_s": _metric(metrics, "request_latency", path, k),
               "itl_s": _metric(metrics, "inter_token_latency", path, k), "error": ""}
        if err:
            row["error"] = f"{err.get('type', 'error')} {err.get('code', '')}: {err.get('message', '')}".strip()
        elif meta.get("was_cancelled"):
            row["error"] = "cancelled"
        out.append(row)
    return _frame(out, path, "aiperf")


def _vllm(path: Path, data: dict) -> RequestTrace:
    n = len(data["input_lens"])
    for key in ("output_lens", "ttfts", "itls"):
        if len(data.get(key, [])) != n:
            raise ConfigError(f"{path} {key}: {len(data.get(key, []))} entries for {n} requests (input_lens)")
    errors = data.get("errors") or [""] * n
    for key, values in (("errors", errors), ("start_times", data.get("start_times")), ("e2els", data.get("e2els"))):
        if values is not None and len(values) != n:
            raise ConfigError(f"{path} {key}: {len(values)} entries for {n} requests (input_lens)")
    starts = data.get("start_times")
    out = []
    for i in range(n):
        gaps = data["itls"][i] or []
        ttft = data["ttfts"][i]
        e2e = data["e2els"][i] if data.get("e2els") else (ttft + float(np.sum(gaps)) if ttft is not None else np.nan)
        out.append({"record": i, "arrival_s": starts[i] if starts else np.nan, "input": data["input_lens"][i],
                    "output": data["output_lens"][i], "ttft_s": ttft, "e2e_s": e2e,
                    "itl_s": float(np.mean(gaps)) if gaps else np.nan,
                    "error": errors[i] or ("" if ttft else "no first token recorded")})
    return _frame(out, path, "vllm-benchmark-serving")


def _llmperf(path: Path, data: list) -> RequestTrace:
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ConfigError(f"{path} record {i}: expected an object")
        code = rec.get("error_code")
        out.append({"record": i, "arrival_s": np.nan, "input": rec.get("number_input_tokens"),
                    "output": rec.get("number_output_tokens"), "ttft_s": rec.get("ttft_s"),
                    "e2e_s": rec.get("end_to_end_latency_s"), "itl_s": rec.get("inter_token_latency_s"),
                    "error": f"error {code}: {rec.get('error_msg', '')}" if code else ""})
    return _frame(out, path, "llmperf")


def _csv(path: Path) -> RequestTrace:
    df = read_csv_strings(path)
    missing = [c for c in ("arrival_s", "input", "output", "ttft_s", "e2e_s") if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; a request trace CSV needs "
                          "arrival_s,input,output,ttft_s,e2e_s (itl_s, error optional)")
    out = []
    for k, r in enumerate(df.to_dict("records"), 2):  # header is line 1
        row = {"record": k, **{c: (r.get(c, "") or np.nan) for c in COLUMNS}, "error": r.get("error", "")}
        for c in COLUMNS:
            if isinstance(row[c], str):
                try:
                    row[c] = float(row[c])
                except ValueError:
                    raise ConfigError(f"{path}:{k} column {c!r}: expected a number, got {row[c]!r}") from None
        out.append(row)
    return _frame(out, path, "csv")


def read_request_trace(path: str | Path) -> RequestTrace:
    """Read a per-request measurement file in any of the module's formats."""
    path = Path(path)
    text = read_text(path)
    if path.suffix == ".csv":
        return _csv(path)
    stripped = text.lstrip()
    if path.suffix == ".jsonl" or (stripped.startswith("{") and "\n{" in stripped.rstrip()):
        return _aiperf(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if isinstance(data, dict) and "input_lens" in data and "ttfts" in data:
        return _vllm(path, data)
    if isinstance(data, list) and (not data or "ttft_s" in data[0]):
        return _llmperf(path, data)
    if isinstance(data, dict) and "experiments" in data:
        raise ConfigError(f"{path}: a GenAI-Perf profile_export.json holds texts, not token counts; export "
                          "per-request tokens (AIPerf profile_export.jsonl) or write the generic CSV")
    raise ConfigError(f"{path}: not a known request-trace format (AIPerf JSONL, vLLM benchmark_serving JSON, "
                      "LLMPerf individual_responses JSON, or CSV with arrival_s,input,output,ttft_s,e2e_s)")
