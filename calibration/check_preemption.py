"""The static preempting schedule (hermes_jax/stacks/preemption.py) against the exact event-driven
serving reference on the same batches arriving at once.

    python calibration/check_preemption.py      # about 15 s on 2 cores

Llama-3.1-8B on an H100 under vLLM's stack, device memory cut so the batch overflows the KV cache.
Prints, per batch, the reference's last finish and preemptions beside the schedule's time and
preemptions. The reference's continuous-batching engine admits and preempts on its own
(``hermes_jax.sim.reference``); the schedule is computed on the host and priced with the static
step costs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hermes_jax import EngineSpec, Parallelism, get_hardware, get_model
from hermes_jax.sim import load_scenario
from hermes_jax.sim.simulate import simulate
from hermes_jax.stacks import get_stack
from hermes_jax.stacks.kv import kv_capacity
from hermes_jax.stacks.preemption import preempt_schedule, scheduled_time

CASES = [(48, 512, 512, 22e9), (32, 1024, 256, 20e9), (64, 256, 768, 21e9), (16, 2048, 2048, 21.5e9)]
SCENARIO = """[simulation]
horizon_s = 2000
dt_s = 0.0625
[[engine]]
name = "e0"
model = "llama-3.1-8b"
hardware = "h100-sxm"
scheduler = "continuous"
max_batch_size = 256
max_batch_tokens = 8192
stack = "vllm"
hardware_overrides = {{ hbm_capacity = {capacity} }}
[[client]]
name = "c"
engine = "e0"
trace = {{ path = "{trace}", format = "csv" }}
"""


def compare(batch: int, prompt: int, output: int, capacity: float, directory: Path) -> dict:
    """One batch through the reference (scenario and trace written to ``directory``) and on the schedule."""
    trace, scenario = Path(directory) / "batch.csv", Path(directory) / "batch.toml"
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + f"0.0,{prompt},{output}\n" * batch)
    scenario.write_text(SCENARIO.format(capacity=capacity, trace=trace))
    requests = simulate(load_scenario(scenario), reference=True).requests
    hw = get_hardware("h100-sxm", stack="vllm")
    engine = EngineSpec(get_model("llama-3.1-8b"), hw.spec, Parallelism(tp=1))
    params = hw.params.replace(hbm_capacity=capacity)
    blocks = kv_capacity(engine, params, get_stack("vllm")).blocks
    schedule = preempt_schedule(blocks, 16, batch, prompt, output)
    return {"blocks": blocks, "finished": bool((requests.status == "finished").all()),
            "reference_s": float(requests.finish_s.max()), "reference_preemptions": int(requests.preemptions.sum()),
            "schedule_s": float(scheduled_time(engine, params, [schedule]).e2e_s[0]),
            "schedule_preemptions": schedule.preemptions}


def main() -> None:
    print("batch  prompt  output  KV blocks  reference s  preemptions  schedule s  preemptions  ratio")
    with tempfile.TemporaryDirectory() as tmp:
        for batch, prompt, output, capacity in CASES:
            r = compare(batch, prompt, output, capacity, Path(tmp))
            print(f"{batch:5d}  {prompt:6d}  {output:6d}  {r['blocks']:9d}  {r['reference_s']:11.3f}  "
                  f"{r['reference_preemptions']:11d}  {r['schedule_s']:10.3f}  {r['schedule_preemptions']:11d}  "
                  f"{r['schedule_s'] / r['reference_s']:.4f}")


if __name__ == "__main__":
    main()
