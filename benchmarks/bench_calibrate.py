"""Calibration speed: the shipped fitter against a first-order baseline, side by side.

    python benchmarks/bench_calibrate.py      # about 4 min on 2 cores

Both fit the same ten vLLM stack parameters to the same LLM-Inference-Bench rows (vLLM on
A100-40GB, Qwen2-7B held out), from the same start, with the same loss:

- hermes_jax: ``calibrate.fit.fit_parameters`` (one compiled forward-mode Jacobian; Adam then a
  Levenberg-Marquardt polish on the reweighted Gauss-Newton system);
- baseline: the textbook path it replaced, a jitted reverse-mode Adam step and an optax L-BFGS polish
  (``calibrate.fit.lbfgs_polish``) on the same objective, same step counts.

Reports wall time (compiles included: a calibration compiles once) and the final loss of each, and
writes the table into benchmarks/README.md.
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hermes_jax.calibrate import LogHuber, StaticBatchTable, fit_parameters, read_static_batch
from hermes_jax.calibrate.fit import lbfgs_polish
from hermes_jax.calibrate.static_fit import DEFAULT_BOUNDS, DEFAULT_NAMES, DEFAULT_START
from hermes_jax.hardware.catalog import get_hardware
from hermes_jax.hardware.params import HardwareParams
from hermes_jax.stacks import get_stack

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "llm_inference_bench" / "All_results.csv"
MARK = ("<!-- bench-calibrate:start -->", "<!-- bench-calibrate:end -->")
STEPS, POLISH = 300, 60


def setup():
    rows = read_static_batch(DATA).rows
    rows = rows[(rows["stack"] == "vllm") & (rows.hardware == "a100-40gb")].reset_index(drop=True)
    hw = get_hardware("a100-40gb", stack=DEFAULT_START)
    table = StaticBatchTable(rows, hw.spec, hw.params, get_stack("vllm"))
    meas, _ = table.measured()
    train = ~rows[table.keep].model.isin(["qwen2-7b"]).to_numpy()
    return hw, table, meas, train


def baseline(hw, table, meas, train, loss):
    """Reverse-mode Adam on the bounded log parameters, then optax L-BFGS: the same objective."""
    names = list(DEFAULT_NAMES)
    lo, hi = {}, {}
    for n in names:
        start = float(hw.params.log[n])
        b = DEFAULT_BOUNDS.get(n)
        lo[n] = np.log(b.lower) if b else start - 10.0
        hi[n] = np.log(b.upper) if b else (min(start + 10.0, 0.0) if n.endswith("efficiency") else start + 10.0)

    def objective(z):
        theta = {n: lo[n] + (hi[n] - lo[n]) * jax.nn.sigmoid(z[n]) for n in names}
        pred = table.predict(HardwareParams({**hw.params.log, **theta}))[0]
        r = jnp.log(pred[train]) - jnp.log(meas[train])
        return jnp.mean(loss.rho(r))

    def z_of(n):
        t = float(hw.params.log[n])
        t = t if np.isfinite(t) else (lo[n] + hi[n]) / 2
        u = np.clip((t - lo[n]) / (hi[n] - lo[n]), 0.02, 0.98)
        return jnp.asarray(np.log(u / (1 - u)), jnp.float32)

    z = {n: z_of(n) for n in names}
    opt = optax.adam(0.05)
    state = opt.init(z)

    @jax.jit
    def step(z, state):
        value, grads = jax.value_and_grad(objective)(z)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(z, updates), state, value

    for _ in range(STEPS):
        z, state, _ = step(z, state)
    z = lbfgs_polish(objective, z, POLISH)
    return float(objective(z))


def main() -> None:
    loss = LogHuber()
    hw, table, meas, train = setup()
    t0 = time.perf_counter()
    ours = fit_parameters(lambda p: (table.predict(p)[0], meas), hw.params, list(DEFAULT_NAMES), train=train,
                          bounds=DEFAULT_BOUNDS, loss=loss, steps=STEPS, polish_steps=POLISH)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    base_loss = baseline(hw, table, meas, train, loss)
    t_base = time.perf_counter() - t0
    lines = [MARK[0], "| fit (vLLM on A100-40GB, 100 rows, 10 parameters) | hermes_jax fitter | Adam + L-BFGS "
             "baseline | speed-up |", "|---|---|---|---|",
             f"| wall time, compiles included | {t_ours:.1f} s | {t_base:.1f} s | {t_base / t_ours:.1f}x |",
             f"| final loss (pseudo-Huber of log ratio) | {ours.loss:.4g} | {base_loss:.4g} | - |", "",
             f"Machine: {platform.machine()}, {len(jax.devices())} {jax.devices()[0].platform} device(s), JAX "
             f"{jax.__version__}, float32; {STEPS} Adam steps then at most {POLISH} polish steps each.", MARK[1]]
    block = "\n".join(lines)
    readme = ROOT / "benchmarks" / "README.md"
    text = readme.read_text()
    if MARK[0] in text:
        text = re.sub(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), lambda _: block, text, flags=re.S)
    else:
        text += "\n## Calibration (`python benchmarks/bench_calibrate.py`)\n\n" + block + "\n"
    readme.write_text(text)
    print(block)


if __name__ == "__main__":
    main()
