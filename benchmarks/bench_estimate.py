"""Speed of the service-time kernels: one estimate, and a grid of 10,000 configurations.

    python benchmarks/bench_estimate.py        # prints the table and rewrites benchmarks/README.md

Baseline, run side by side in this script: a plain NumPy loop over configurations using the same
operator formulas (hermes_jax.models.operators with numpy) and the same roofline, summing decode
steps one by one as a straightforward implementation would. The two agree to 1e-9 (checked here).
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hermes_jax import EngineSpec, Parallelism, get_hardware, get_model, static_batch
from hermes_jax.hardware.params import ELEMENTWISE_KERNELS
from hermes_jax.iteration import operators
from hermes_jax.models.operators import ATTENTION, COLLECTIVE, ELEMENTWISE, operator_costs

GRID = 10_000


def numpy_collective(kind, nbytes, p, nat):
    """Ring all-reduce or send/recv on the intra-node link, the faster of the two protocols."""
    def alpha_beta(a, b):
        return 2 * (p - 1) * (a + nbytes / (p * b)) if kind == "allreduce" else a + nbytes / b

    a, b = nat["intra_link_latency"], nat["intra_link_bandwidth"] * nat["intra_link_efficiency"]
    simple = alpha_beta(a, b) + nat["collective_overhead_s"]
    low_latency = (alpha_beta(a * nat["collective_ll_latency_ratio"], b * nat["collective_ll_bandwidth_efficiency"])
                   + nat["collective_ll_overhead_s"])
    return min(simple, low_latency)


def numpy_static_batch(engine, nat, batch, prompt, output):
    """NumPy baseline: same formulas, one configuration, decode steps summed in a Python loop."""
    ops = operators(engine)
    peak = nat["peak_flops"][["fp32", "bf16", "fp8", "int8", "fp4"].index(engine.compute_dtype)]

    def iteration(new, context):
        c = operator_costs(engine.model, engine.parallel, engine.weight_dtype, engine.kv_dtype, engine.act_dtype,
                           np.array([new]), np.array([context]), np.array([1.0]), np.array([batch]), xp=np,
                           kv_reads=engine.system.kv_reads)
        total = 0.0
        for op in ops:
            flop, nbytes = (float(x) for x in c[op.name])
            if op.kind == ATTENTION:
                flop += (1.0 - nat["attention_causal_efficiency"]) * float(c["_attention_masked_flop"][0])
                flop += nat["attention_row_keys"] * float(c["_attention_row_flop"][0])
                if "_attention_paged_kv_bytes" in c:
                    reread, paged = (float(x) for x in c["_attention_paged_kv_bytes"])
                    eta = nat["paged_attention_memory_efficiency"]
                    nbytes += paged * (1.0 / eta - 1.0) + nat["paged_kv_reread"] * reread / eta
            if op.kind == COLLECTIVE:
                t = numpy_collective(op.collective, nbytes, op.group_size, nat)
            else:
                elementwise = op.kind == ELEMENTWISE
                pk = nat["peak_flops"][0] if elementwise else peak
                eff = nat["attention_efficiency"] if op.kind == ATTENTION else nat["compute_efficiency"]
                half = 0.0 if elementwise else nat["compute_half_flop"]
                meff = (nat["elementwise_efficiency"][ELEMENTWISE_KERNELS.index(op.kernel)] if elementwise
                        else nat["memory_efficiency"])
                if op.kind == ATTENTION:
                    meff *= nat["attention_memory_efficiency"]
                tc = (flop + half) / (pk * eff) if flop > 0 else 0.0
                tm = (nbytes + nat["memory_half_bytes"]) / (nat["hbm_bandwidth"] * meff) if nbytes > 0 else 0.0
                t = max(tc, tm) + nat["kernel_overhead_s"]
            total += op.count * t
        sampler = engine.model.vocab * (nat["host_overhead_per_vocab_s"] + nat["host_overhead_per_logit_s"] * batch)
        multiworker = nat["host_overhead_multiworker_s"] if engine.parallel.devices > 1 else 0.0
        held = nat["host_overhead_per_context_token_s"] * float(c["_held_tokens"][0])
        return total + nat["host_overhead_s"] + nat["host_overhead_per_seq_s"] * batch + held + multiworker + sampler

    prefill = iteration(prompt, 0.0)
    decode = sum(iteration(1.0, prompt + k) for k in range(int(output) - 1))
    return prefill + decode


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    hw = get_hardware("h100-sxm")
    engine = EngineSpec(get_model("llama-2-70b"), hw.spec, Parallelism(tp=8))
    params = hw.params
    nat = {k: (v if v.shape else float(v)) for k, v in hw.params.natural().items()}

    # one estimate through the Python API
    start = time.perf_counter()
    jax.block_until_ready(static_batch(engine, params, 1.0, 2048.0, 256.0))
    compile_s = time.perf_counter() - start
    one_s = timed(lambda: static_batch(engine, params, 1.0, 2048.0, 256.0).e2e_s, 200)
    one_np_s = timed(lambda: numpy_static_batch(engine, nat, 1.0, 2048.0, 256.0), 5)
    check = abs(numpy_static_batch(engine, nat, 1.0, 2048.0, 256.0) / float(static_batch(engine, params, 1.0, 2048.0, 256.0).e2e_s) - 1)

    # a grid of 10,000 configurations: batch x prompt x output x HBM bandwidth
    rng = np.random.default_rng(0)
    batch = jnp.asarray(rng.choice([1, 2, 4, 8, 16, 32, 64], GRID).astype(float))
    prompt = jnp.asarray(rng.integers(64, 4096, GRID).astype(float))
    output = jnp.asarray(rng.integers(2, 512, GRID).astype(float))
    bandwidth = rng.uniform(1e12, 8e12, GRID)
    sets = jax.vmap(lambda b: params.replace(hbm_bandwidth=b))(jnp.asarray(bandwidth, dtype=jnp.float32))
    grid = jax.jit(jax.vmap(lambda p, b, i, o: static_batch(engine, p, b, i, o).e2e_s))
    start = time.perf_counter()
    jax.block_until_ready(grid(sets, batch, prompt, output))
    grid_compile_s = time.perf_counter() - start
    grid_s = timed(lambda: grid(sets, batch, prompt, output), 10)
    sample = 20  # the NumPy loop is timed on a sample and scaled to the grid size
    idx = np.arange(sample)
    start = time.perf_counter()
    baseline = [numpy_static_batch(engine, {**nat, "hbm_bandwidth": bandwidth[i]}, float(batch[i]), float(prompt[i]),
                                   float(output[i])) for i in idx]
    grid_np_s = (time.perf_counter() - start) / sample * GRID
    jax_values = np.asarray(grid(sets, batch, prompt, output))[idx]
    grid_check = float(np.max(np.abs(np.array(baseline) / jax_values - 1)))

    rows = [
        ("one estimate (llama-2-70b, h100-sxm TP8, 1 x 2048 in / 256 out), after warm-up", one_s, one_np_s),
        (f"grid of {GRID:,} configurations (vmap), after warm-up", grid_s, grid_np_s),
    ]
    lines = ["| what | hermes_jax (JAX, jit) | NumPy loop, same formulas | speed-up |", "|---|---|---|---|"]
    for what, ours, base in rows:
        lines.append(f"| {what} | {ours * 1e3:.3f} ms | {base * 1e3:.1f} ms | {base / ours:.0f}x |")
    lines.append(f"| compile, first call (one estimate / grid) | {compile_s:.2f} s / {grid_compile_s:.2f} s | - | - |")
    table = "\n".join(lines)
    info = (f"Machine: {platform.machine()}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
            f"JAX {jax.__version__}, float32. Agreement with the NumPy loop: {check:.1e} (one), "
            f"{grid_check:.1e} (grid sample, float32). The NumPy grid time is measured on {sample} configurations "
            "and scaled to the grid size.")
    print(table)
    print(info)
    readme = Path(__file__).with_name("README.md")
    text = readme.read_text() if readme.exists() else ""
    block = f"<!-- bench-estimate:start -->\n{table}\n\n{info}\n<!-- bench-estimate:end -->"
    if "<!-- bench-estimate:start -->" in text:
        text = re.sub(r"<!-- bench-estimate:start -->.*<!-- bench-estimate:end -->", lambda _: block, text, flags=re.S)
    else:
        text += "\n## Service-time kernels (`python benchmarks/bench_estimate.py`)\n\n" + block + "\n"
    readme.write_text(text)


if __name__ == "__main__":
    main()
