"""vLLM's preempting schedule of a static batch that does not fit (stacks/preemption.py)."""

import numpy as np
import pytest

from hermes_jax import EngineSpec, Parallelism, get_hardware, get_model
from hermes_jax.estimate import static_batch
from hermes_jax.stacks.preemption import preempt_schedule, scheduled_time


def test_schedule_by_hand():
    """Block size 1, 10 blocks (watermark 0), three requests of 2 + 4 tokens, traced by hand: all three
    admitted by their prompts; at the second decode step the latest one is preempted; it is prefilled
    again over prompt and its 2 generated tokens once the other two finish."""
    s = preempt_schedule(blocks=10, block_size=1, batch=3, prompt=2, output=4)
    assert s.prefill_requests.tolist() == [3, 1] and s.prefill_tokens.tolist() == [2, 4]
    assert s.decode_requests.tolist() == [3, 2, 2, 1]
    assert s.decode_context.tolist() == [2, 3, 4, 4]
    assert s.decode_steps.tolist() == [1, 1, 1, 1]
    assert (s.first_prefill_steps, s.preemptions, s.recomputed_tokens) == (1, 1, 2)


@pytest.mark.parametrize("seed", range(4))
def test_every_request_gets_its_tokens_within_the_blocks(seed):
    """Conservation: prefill steps plus decode steps produce exactly batch x output tokens; no decode
    stretch holds more KV than the blocks (each request holds its context, rounded up to blocks)."""
    rng = np.random.default_rng(seed)
    for _ in range(60):
        bs = int(rng.choice([1, 16])); batch = int(rng.integers(1, 70))
        prompt, output = int(rng.integers(1, 400)), int(rng.integers(1, 400))
        blocks = int(-(-(prompt + output) // bs) * rng.uniform(1.05, 20)) + 1
        s = preempt_schedule(blocks, bs, batch, prompt, output, max_num_seqs=int(rng.choice([8, 256])),
                             max_batched_tokens=int(rng.choice([512, 8192])))
        assert s.prefill_requests.sum() + (s.decode_requests * s.decode_steps).sum() == batch * output
        held = s.decode_requests * (s.decode_context + s.decode_steps) / bs   # at the stretch's last step
        assert np.all(held <= blocks + s.decode_requests)                     # + rounding of each request
        assert np.all(s.decode_requests <= min(batch, 256))
        assert s.recomputed_tokens <= s.preemptions * (prompt + output)


def test_a_batch_that_fits_is_one_prefill_and_one_stretch():
    s = preempt_schedule(blocks=10_000, block_size=16, batch=32, prompt=100, output=50)
    assert s.prefill_requests.tolist() == [32] and s.decode_requests.tolist() == [32]
    assert s.decode_steps.tolist() == [49] and s.preemptions == 0
    hw = get_hardware("h100-sxm", stack="vllm")
    engine = EngineSpec(get_model("llama-3.1-8b"), hw.spec, Parallelism(tp=1))
    timed = scheduled_time(engine, hw.params, [s, s])
    ref = static_batch(engine, hw.params, 32, 100, 50)
    np.testing.assert_allclose(np.asarray(timed.e2e_s), float(ref.e2e_s), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(timed.first_prefill_s), float(ref.prefill_s), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(timed.first_decode_s), float(ref.decode_step_s), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(timed.decode_s), float(ref.decode_total_s), rtol=1e-5)


def test_admitting_by_current_length_runs_more_requests_than_waves():
    """With blocks for 4 requests at full length, vLLM starts 7 (their prompts fit, less the 1% watermark), sheds them as
    they grow and ends with fewer decode steps than 16 requests in 4 waves of 4."""
    s = preempt_schedule(blocks=4 * 64, block_size=16, batch=16, prompt=512, output=512)
    assert s.decode_requests[0] == 7 and s.preemptions > 0
    assert s.decode_steps.sum() < 4 * 511


def test_one_request_larger_than_the_cache_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        preempt_schedule(blocks=10, block_size=16, batch=2, prompt=100, output=100)


def test_static_table_prices_overflow_rows_on_the_stack_schedule():
    """A measurement table under vLLM: a row that fits is the closed-form static batch, a row that
    overflows the KV cache is its preempting schedule; under a waves stack the same row runs in waves."""
    import dataclasses

    import pandas as pd

    from hermes_jax.calibrate.static import StaticBatchTable
    from hermes_jax.stacks import get_stack
    from hermes_jax.stacks.kv import kv_capacity

    rows = pd.DataFrame({"model": "llama-3.1-8b", "hardware": "a100-40gb", "tp": 1, "batch": [4, 64],
                         "input": 2048, "output": 2048, "latency_s": [40.0, 150.0]})
    hw = get_hardware("a100-40gb", stack="vllm")
    vllm = get_stack("vllm")
    table = StaticBatchTable(rows, hw.spec, hw.params, vllm)
    latency, _ = table.predict(hw.params)
    engine = table.groups[0].engine
    blocks = kv_capacity(engine, hw.params, vllm).blocks
    schedule = preempt_schedule(blocks, 16, 64, 2048, 2048)
    assert table.waves[1] > 1 and table.preemptions[1] == schedule.preemptions > 0
    assert float(latency[0]) == pytest.approx(float(static_batch(engine, hw.params, 4, 2048, 2048).e2e_s), rel=1e-5)
    assert float(latency[1]) == pytest.approx(float(scheduled_time(engine, hw.params, [schedule]).e2e_s[0]), rel=1e-5)
    waves = StaticBatchTable(rows, hw.spec, hw.params, dataclasses.replace(vllm, overflow="waves"))
    assert waves.preemptions[1] == 0 and float(waves.predict(hw.params)[0][1]) != pytest.approx(float(latency[1]))


def test_scheduled_time_is_differentiable():
    """The slope of a preempting schedule's time in ln(HBM bandwidth) against a central difference."""
    import jax

    from hermes_jax.hardware.params import HardwareParams

    hw = get_hardware("h100-sxm", stack="vllm")
    engine = EngineSpec(get_model("llama-3.1-8b"), hw.spec, Parallelism(tp=1))
    s = preempt_schedule(blocks=400, block_size=16, batch=12, prompt=512, output=512)
    assert s.preemptions > 0

    def e2e(shift):
        log = dict(hw.params.log)
        log["hbm_bandwidth"] = log["hbm_bandwidth"] + shift
        return scheduled_time(engine, HardwareParams(log), [s]).e2e_s[0]

    slope = float(jax.grad(e2e)(0.0))
    h = 1e-2
    fd = (float(e2e(h)) - float(e2e(-h))) / (2 * h)
    assert slope < 0 and slope == pytest.approx(fd, rel=2e-2)


def test_static_schedule_matches_the_exact_serving_reference(tmp_path):
    """The same static batch (every request arriving at 0) through the exact event-driven serving
    reference, whose continuous-batching engine admits and preempts on its own: the batch's last
    finish within 1% of the schedule's time, preemptions within 15% (the other batches of
    calibration/check_preemption.py also agree within 0.3%)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from calibration.check_preemption import CASES, compare

    row = compare(*CASES[0], tmp_path)
    assert row["finished"] and row["schedule_preemptions"] > 0
    assert row["schedule_s"] == pytest.approx(row["reference_s"], rel=0.01)
    assert row["schedule_preemptions"] == pytest.approx(row["reference_preemptions"], rel=0.15)
