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

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..hardware.catalog import get_hardware
from ..hardware.params import DTYPES, ELEMENTWISE_KERNELS, HardwareParams
from ..kernels.collectives import collective_time
from ..kernels.roofline import op_time
from .readers import read_csv_strings

COLLECTIVES = ("allreduce", "alltoall", "sendrecv")
REQUIRED = ("hardware", "kind", "flop", "bytes", "time_s")


def read_op_table(path: str | Path) -> pd.DataFrame:
    """Rows of a kernel timing CSV (module doc), checked; errors name the file, line and column."""
    path = Path(path)
    df = read_csv_strings(path)
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
        self.spec = get_hardware(device).spec
        self.kinds = sorted(set(self.rows.kind))

    def predict(self, params: HardwareParams):
        times, index = [], []
        for kind in self.kinds:
            g = self.rows[self.rows.kind == kind]
            flop, nbytes = (jnp.asarray(g[c].to_numpy(float), params.log["hbm_bandwidth"].dtype) for c in ("flop", "bytes"))
            base, _, sub = kind.partition(":")
            if base == "collective":
                t = jnp.concatenate([collective_time(sub, nbytes[k:k + 1], int(p), params, self.spec.devices_per_node)
                                     for k, p in enumerate(g.group_size.astype(int))])
            else:
                peak = jnp.stack([params.peak(d) for d in g.dtype]) if base != "elementwise" else params.peak("fp32")
                if base == "elementwise":
                    eff, half = params.compute_efficiency, 0.0
                    mem = params.elementwise_efficiency[ELEMENTWISE_KERNELS.index(sub)]
                else:
                    eff = params.compute_efficiency if base == "gemm" else params.attention_efficiency
                    half, mem = params.compute_half_flop, params.memory_efficiency
                    if base == "attention":
                        mem = mem * params.attention_memory_efficiency
                t = op_time(flop, nbytes, params, peak, eff, half, mem)[0]
            times.append(t)
            index.append(g.index.to_numpy())
        order = np.argsort(np.concatenate(index))
        return jnp.concatenate(times)[order]

    def measured(self) -> np.ndarray:
        return self.rows.time_s.to_numpy(float)


OP_NAMES = ("compute_efficiency", "compute_half_flop", "memory_efficiency", "memory_half_bytes", "kernel_overhead_s")
"""Default kernel-level fit: GEMM roofline efficiencies, their half sizes and the per-kernel floor."""


def calibrate_ops(rows: pd.DataFrame, device: str, names=OP_NAMES, *, stack: str | None = None, loss=None,
                  bounds=None, priors=None, steps: int = 300, polish_steps: int = 60, bootstrap: int = 0, progress=None):
    """(FitResult, rows with before/after seconds) of ``names`` fitted to the op rows on ``device``,
    starting from ``stack``'s values there (None: the catalog's)."""
    from .fit import LogHuber, fit_parameters
    table = OpTable(rows, device)
    hw = get_hardware(device, stack=stack)
    meas = table.measured()
    fit = fit_parameters(lambda p: (table.predict(p), meas), hw.params, list(names), loss=loss or LogHuber(),
                         bounds=bounds, priors=priors, steps=steps, polish_steps=polish_steps, bootstrap=bootstrap,
                         progress=progress)
    return fit, table.rows.assign(before=fit.predicted_start, after=fit.predicted)
