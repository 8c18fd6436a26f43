"""The evidence behind the held-out misses the README lists, from the measured data and the fits.

    python calibration/data_checks.py        # a few seconds; run fit_kernels.py first

Prints three checks, each a property of the measurements that no smooth cost model can follow:
1. Splitwise A100: a static batch of equal prompts against the same prompts run one at a time;
2. Vidur GEMMs: the share of rows slower by more than 10% than some larger token count of the same
   operator (cuBLAS kernel switches), per part and model;
3. Vidur NCCL all-reduce: the held-out (4-GPU) error of the shipped all-reduce fit by message size.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402
from fit_kernels import allreduce_predict, uncalibrated  # noqa: E402

from hermes_jax.hardware.catalog import DATA as CATALOG_DATA  # noqa: E402

GEMMS = ["qkv_proj", "out_proj", "mlp_up", "mlp_down"]


def batch_against_singles() -> pd.DataFrame:
    df = data.splitwise([])
    df = df[df.prompt_size == 512].groupby(["hardware", "tensor_parallel", "batch_size"]).prompt_time.mean()
    out = []
    for (hw, tp), g in df.groupby(level=[0, 1]):
        g = g.droplevel([0, 1])
        for batch in (4, 16, 32):
            if batch in g.index:
                out.append({"hardware": hw, "tp": tp, "batch": batch, "batch_ms": g[batch],
                            "singles_ms": batch * g[1], "batch / singles": g[batch] / (batch * g[1])})
    return pd.DataFrame(out)


def gemm_kernel_switches() -> pd.DataFrame:
    df = data.vidur_mlp([])
    df = df[df.op.isin(GEMMS)]
    flags = [pd.Series(data.slower_than_larger(g.sort_values("tokens").time_s.to_numpy(), 0.1), name=key)
             for key, g in df.groupby(["hardware", "model", "tp", "op"])]
    rows = [{"hardware": k[0], "model": k[1], "rows": len(f), "slower": int(f.sum())} for f in flags for k in [f.name]]
    out = pd.DataFrame(rows).groupby(["hardware", "model"]).sum()
    out["share"] = out.slower / out.rows
    return out


def allreduce_by_size() -> pd.DataFrame:
    overlay = tomllib.loads((CATALOG_DATA / "calibrated.toml").read_text())
    df = data.vidur_allreduce([])
    out = []
    for hw_name, rows in df[df.workers == 4].groupby("hardware"):
        hw = uncalibrated(hw_name)
        fitted = overlay[hw_name]["fits"]["allreduce"]["values"]
        params = type(hw.params)({**hw.params.log, **{k: jnp.log(jnp.asarray(v, float)) for k, v in fitted.items()}})
        rows = rows.reset_index(drop=True)
        err = np.abs(np.asarray(allreduce_predict(hw.spec, params, rows)) / rows.time_s.to_numpy() - 1) * 100
        band = pd.cut(rows.bytes, [0, 1e6, 4e6, 1e9], labels=["< 1 MB", "1-4 MB", ">= 4 MB"])
        for (label, monotone), e in pd.Series(err).groupby([band, rows.monotone], observed=True):
            out.append({"hardware": hw_name, "size": label, "rows": "kept" if monotone else "excluded",
                        "points": len(e), "MAPE %": e.mean()})
    return pd.DataFrame(out)


def main() -> None:
    pd.set_option("display.width", 160)
    print("1. Splitwise prefill of a batch of 512-token prompts against the same prompts one at a time\n")
    print(batch_against_singles().round(2).to_string(index=False))
    print("\n2. GEMM rows more than 10% slower than a larger token count of the same operator\n")
    print(gemm_kernel_switches().round(3).to_string())
    print("\n3. Held-out 4-GPU all-reduce error of the shipped fit, by message size\n")
    print(allreduce_by_size().round(1).to_string(index=False))


if __name__ == "__main__":
    main()
