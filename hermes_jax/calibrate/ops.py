"""Kernel / operator timing tables: read them, predict them with the roofline, fit them.

A generic CSV, one measured kernel per row, with columns ``hardware`` (catalog device), ``kind``,
``flop`` and ``bytes`` (per device, per execution), ``time_s`` (seconds per execution) and optional
``dtype`` (compute dtype, default bf16) and ``group_size`` (devices in a collective). ``kind`` is
``gemm``, ``attention``, ``elementwise:KERNEL`` (one of ``hardware.params.ELEMENTWISE_KERNELS``) or
``collective:OP`` (allreduce, alltoall, sendrecv; ``bytes`` is then the message size). Profilers'
own formats (Vidur's ``compute.csv`` and friends) are turned into this table by
``calibration/data.py``; ``OpTable.predict`` applies exactly the per-operator terms the iteration
model uses, so parameters fitted here mean the same thing there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..hardware.catalog import get_hardware
from ..hardware.params import DTYPES, ELEMENTWISE_KERNELS, HardwareParams
from ..kernels.collectives import collective_time
from ..iteration import kernel_terms
from ..kernels.roofline import op_time
from ..models.operators import ATTENTION, ELEMENTWISE, GEMM
from .fit import FitResult, LogHuber, fit_parameters
from .readers import read_csv_strings
from .report import fitted_profile, parameter_lines, write_report

COLLECTIVES = ("allreduce", "alltoall", "sendrecv")
REQUIRED = ("hardware", "kind", "flop", "bytes", "time_s")


VIDUR_OPS = {"emb": "embedding", "input_layernorm": "input_norm", "attn_pre_proj": "qkv_proj", "attn_rope": "rope",
             "attn_post_proj": "out_proj", "post_attention_layernorm": "post_norm", "mlp_up_proj": "mlp_up",
             "mlp_act": "mlp_act", "mlp_down_proj": "mlp_down", "add": "residual_add"}
"""Vidur ``mlp.csv`` column stems -> hermes_jax operator names."""
VIDUR_DEVICES = {"a100": "a100-80gb", "h100": "h100-sxm"}


def read_vidur_mlp(path: str | Path, model: str | None = None, hardware: str | None = None) -> pd.DataFrame:
    """Vidur's per-operator profile (``compute/<device>/<org>/<model>/mlp.csv``) as op-table rows:
    each operator's FLOP and bytes per execution at its token count from the model's shapes, its
    median time (ms in the file). Model and device come from the path unless given."""
    from ..engine import EngineSpec
    from ..models.config import get_model
    from ..models.operators import ELEMENTWISE, GEMM, Parallelism, op_specs, operator_costs
    from .readers import _model_index
    path = Path(path)
    parts = path.resolve().parts
    hardware = hardware or VIDUR_DEVICES.get(parts[-4] if len(parts) >= 4 else "", "")
    hf_id = "/".join(parts[-3:-1]) if len(parts) >= 3 else ""
    model = model or _model_index().get(hf_id.lower(), "")
    if not hardware or not model:
        raise ConfigError(f"{path}: cannot tell the {'device' if not hardware else 'model'} from the path "
                          f"(expected compute/<a100|h100>/<org>/<model>/mlp.csv); pass it explicitly")
    df = pd.read_csv(path).drop_duplicates(subset=["num_tokens", "num_tensor_parallel_workers"])
    m = get_model(model)
    frames = []
    for tp, g in df.groupby("num_tensor_parallel_workers"):
        par = Parallelism(tp=int(tp))
        specs = {op.name: op for op in op_specs(m, par)}
        tokens = g.num_tokens.to_numpy(float)
        engine = EngineSpec(m, get_hardware(hardware).spec, par)
        costs = operator_costs(m, par, engine.weight_dtype, engine.kv_dtype, engine.act_dtype, tokens[:, None],
                               0 * tokens[:, None], 0 * tokens[:, None], xp=np)
        for stem, name in VIDUR_OPS.items():
            column = f"time_stats.{stem}.median"
            if column not in g or name not in specs or specs[name].count == 0:
                continue  # e.g. phi-2 has no post-attention norm (parallel block)
            op = specs[name]
            kind = "gemm" if op.kind == GEMM else f"elementwise:{op.kernel}" if op.kind == ELEMENTWISE else None
            flop, nbytes = (np.broadcast_to(np.asarray(x, float), tokens.shape) for x in costs[name])
            frames.append(pd.DataFrame({"hardware": hardware, "kind": kind, "dtype": engine.compute_dtype,
                                        "flop": flop, "bytes": nbytes, "time_s": g[column].to_numpy(float) * 1e-3,
                                        "group_size": 1.0, "model": model, "tp": int(tp), "tokens": tokens,
                                        "op": name, "source": str(path), "line": g.index.to_numpy() + 2}))
    return pd.concat(frames, ignore_index=True)


def read_op_table(path: str | Path) -> pd.DataFrame:
    """Rows of a kernel timing CSV (module doc), checked; errors name the file, line and column.
    A Vidur ``mlp.csv`` (its ``time_stats.*`` columns) is read by ``read_vidur_mlp``."""
    path = Path(path)
    df = read_csv_strings(path)
    if any(c.startswith("time_stats.") for c in df.columns):
        return read_vidur_mlp(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; an op table needs {', '.join(REQUIRED)} "
                          "(optional: dtype, group_size)")
    out = pd.DataFrame({"hardware": df.hardware.str.strip(), "kind": df.kind.str.strip(),
                        "dtype": df.get("dtype", pd.Series(["bf16"] * len(df))).replace("", "bf16").str.strip(),
                        "source": str(path), "line": np.arange(len(df)) + 2})
    for col in ("flop", "bytes", "time_s", "group_size"):
        raw = df[col] if col in df.columns else pd.Series(["1"] * len(df))
        values = pd.to_numeric(raw.replace("", "1" if col == "group_size" else "nan"), errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values) | (values < 0) | ((values <= 0) if col == "time_s" else False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"{path}:{i + 2} column {col!r}: expected a finite number "
                              f"{'> 0' if col == 'time_s' else '>= 0'}, got {raw.iloc[i]!r}")
        out[col] = values
    for i, (kind, dtype) in enumerate(zip(out.kind, out.dtype)):
        base, _, sub = kind.partition(":")
        ok = (kind in ("gemm", "attention") or (base == "elementwise" and sub in ELEMENTWISE_KERNELS)
              or (base == "collective" and sub in COLLECTIVES))
        if not ok:
            raise ConfigError(f"{path}:{i + 2} column 'kind': {kind!r} unknown; use gemm, attention, "
                              f"elementwise:{{{','.join(ELEMENTWISE_KERNELS)}}} or collective:{{{','.join(COLLECTIVES)}}}")
        if dtype not in DTYPES:
            raise ConfigError(f"{path}:{i + 2} column 'dtype': {dtype!r} unknown; known: {', '.join(DTYPES)}")
    return out


class OpTable:
    """Predicted seconds per execution of every row on one device, differentiable in the parameters."""

    def __init__(self, rows: pd.DataFrame, device: str):
        self.rows = rows[rows.hardware == device].reset_index(drop=True)
        if self.rows.empty:
            raise ConfigError(f"no op rows on {device}")
        self.devices_per_node = get_hardware(device).spec.devices_per_node
        # one vectorised call per (kind, dtype, collective group): the static parts of a kernel's time
        self.groups = [(key, g.index.to_numpy()) for key, g in self.rows.groupby(["kind", "dtype", "group_size"])]

    def predict(self, params: HardwareParams):
        """Seconds per execution of every row (table order), with the iteration model's kernel terms."""
        times = []
        for (kind, dtype, group), index in self.groups:
            g = self.rows.iloc[index]
            flop, nbytes = (jnp.asarray(g[c].to_numpy(float), params.log["hbm_bandwidth"].dtype) for c in ("flop", "bytes"))
            base, _, sub = kind.partition(":")
            if base == "collective":
                times.append(collective_time(sub, nbytes, int(group), params, self.devices_per_node))
            else:
                op_kind = {"gemm": GEMM, "attention": ATTENTION, "elementwise": ELEMENTWISE}[base]
                terms = kernel_terms(params, op_kind, sub, params.peak(dtype))
                times.append(op_time(flop, nbytes, params, *terms)[0])
        order = np.argsort(np.concatenate([index for _, index in self.groups]))
        return jnp.concatenate(times)[order]

    def measured(self) -> np.ndarray:
        return self.rows.time_s.to_numpy(float)


OP_NAMES = ("compute_efficiency", "compute_half_flop", "memory_efficiency", "memory_half_bytes", "kernel_overhead_s")
"""Default kernel-level fit: GEMM roofline efficiencies, their half sizes and the per-kernel floor."""


@dataclass
class OpCalibration:
    """Kernel-level values fitted on one device, scored per kernel kind."""

    fit: FitResult
    rows: pd.DataFrame            # op rows + before, after (s per execution)
    device: str
    stack: str | None             # the stack the fit started from and whose profile it extends
    data: list[dict]              # {"path", "sha256"}

    def errors(self) -> pd.DataFrame:
        """MAPE (%) before and after the fit, per kernel kind."""
        out = []
        for kind, g in self.rows.groupby("kind", sort=True):
            out.append({"kind": kind, "points": len(g), "mape_before_pct": float((g.before / g.time_s - 1).abs().mean() * 100),
                        "mape_after_pct": float((g.after / g.time_s - 1).abs().mean() * 100)})
        return pd.DataFrame(out)

    def write(self, out) -> list:
        """Markdown and JSON report and a stack file (``--stack-file``) with this device's fitted values."""
        import datetime
        date = datetime.date.today().isoformat()
        err = self.errors()
        md = [f"# Kernel fit on {self.device} ({date})", "", "| kind | points | MAPE before | MAPE after |",
              "|---|---|---|---|"]
        md += [f"| {r.kind} | {r.points} | {r.mape_before_pct:.1f}% | {r.mape_after_pct:.1f}% |" for r in err.itertuples()]
        md += [""] + parameter_lines(self.fit)
        prov = {"summary": f"fitted to {len(self.rows)} kernel timings on {date}", "fitted": ", ".join(self.fit.names),
                "data": "; ".join(f"{d['path']} sha256 {d['sha256'][:16]}" for d in self.data),
                "warnings": " | ".join(self.fit.warnings) or "none"}
        profile = fitted_profile(self.stack or f"kernels-{self.device}", self.device, self.fit, prov)
        record = {"by_kind": err.to_dict("records"), "warnings": self.fit.warnings,
                  "parameters": {n: np.asarray(self.fit.value(n)).tolist() for n in self.fit.names}}
        return write_report(out, f"{self.stack or 'kernels'}-{self.device}-ops", md, record, profile,
                            f"Written by hermes-jax calibrate --ops ({date}).")


def calibrate_ops(rows: pd.DataFrame, device: str, names=OP_NAMES, *, stack: str | None = None, loss=None,
                  bounds=None, priors=None, steps: int = 300, polish_steps: int = 60, bootstrap: int = 0,
                  data_files=(), progress=None) -> OpCalibration:
    """Fit ``names`` to the op rows on ``device``, starting from ``stack``'s values there (None: the
    catalog's)."""
    from .static_fit import data_record
    table = OpTable(rows, device)
    hw = get_hardware(device, stack=stack)
    meas = table.measured()
    fit = fit_parameters(lambda p: (table.predict(p), meas), hw.params, list(names), loss=loss or LogHuber(),
                         bounds=bounds, priors=priors, steps=steps, polish_steps=polish_steps, bootstrap=bootstrap,
                         progress=progress)
    return OpCalibration(fit, table.rows.assign(before=fit.predicted_start, after=fit.predicted), device, stack,
                         data_record(data_files))
