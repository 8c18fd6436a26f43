"""``hermes-jax estimate``: the static-batch table (prefill, decode, end to end, memory, bounds)."""

from __future__ import annotations

import itertools

import numpy as np

from .engine import EngineSpec
from .errors import ConfigError
from .estimate import memory_footprint
from .hardware.catalog import default_catalog, get_hardware
from .iteration import BOUNDS, operators
from .kernels.roofline import RooflineOptions
from .models.config import get_model, load_hf_config
from .models.operators import Parallelism
from .stacks import get_stack
from .stacks.kv import kv_capacity, overflow_schedule, static_batch_in_waves, static_waves
from .stacks.preemption import scheduled_time

GROUP_ORDER = ("embedding", "norms", "projections", "attention", "mlp", "moe", "lm_head", "communication", "host")


def group_bounds(engine: EngineSpec, cost) -> dict[str, dict]:
    """Per operator group: seconds and the dominant bound (compute, memory, network, overhead)."""
    terms = np.stack([np.asarray(cost.op_compute), np.asarray(cost.op_memory), np.asarray(cost.op_network),
                      np.asarray(cost.op_overhead)], axis=-1)
    times = np.asarray(cost.op_time)
    groups: dict[str, dict] = {}
    for i, op in enumerate(operators(engine)):
        g = groups.setdefault(op.group, {"time_s": 0.0, "terms": np.zeros(4)})
        g["time_s"] += float(times[i])
        g["terms"] += terms[i]
    host = float(cost.host)
    if host > 0:
        groups["host"] = {"time_s": host, "terms": np.array([0, 0, 0, host])}
    return {name: {"time_s": groups[name]["time_s"], "bound": BOUNDS[int(np.argmax(groups[name]["terms"]))]}
            for name in GROUP_ORDER if name in groups}


def _impossible(engine, stack, cap, waves, prompt: int, output: int) -> str | None:
    """Why a grid point cannot run at all (None: it runs, at once or in waves)."""
    gb = 1e9
    if prompt + output > engine.model.max_context:
        return (f"prompt + output = {prompt + output} tokens exceeds {engine.model.name}'s context of "
                f"{engine.model.max_context} tokens")
    if cap.blocks == 0:
        return (f"weights {cap.weights_bytes / gb:.1f} GB + profiling activations {cap.activation_bytes / gb:.1f} GB "
                f"+ reserves leave no KV cache under {stack.label}'s rule on {cap.capacity_bytes / gb:.1f} GB per "
                "device: use more tensor/pipeline parallelism or a smaller dtype")
    if waves.per_wave == 0:
        return (f"one request of {prompt + output} tokens needs more than the {cap.blocks} KV blocks of "
                f"{cap.block_size} tokens per device")
    if not waves.fits and stack.overflow == "refuse":
        return (f"the batch needs {waves.missing_bytes / gb:.2f} GB more KV per device and {stack.label} refuses "
                f"batches that do not fit (it would run {waves.full + (waves.last > 0)} waves)")
    return None


def estimate_rows(args, chosen_stack) -> list[dict]:
    """One row per grid point; ``chosen_stack(args)`` resolves --stack / --stack-file (after --hardware-file)."""
    catalog = default_catalog()
    if args.hardware_file:
        defined = catalog.load_user_file(args.hardware_file)
        if not args.hardware and len(defined) == 1:
            args.hardware = defined[0]
    args.stack = chosen_stack(args)
    model = load_hf_config(args.model_config) if args.model_config else get_model(args.model)
    hardware = get_hardware(args.hardware, ideal=args.ideal, catalog=catalog, stack=args.stack)
    stack = get_stack(args.stack)  # --stack catalog: the default stack's KV rule
    rows = []
    kv_reads = hardware.spec.kv_reads   # the stack's decode-attention kernel on this platform
    for tp, batch, prompt, output in itertools.product(args.tp, args.batch, args.prompt, args.output):
        engine = EngineSpec(model, hardware.spec, Parallelism(tp=tp, pp=args.pp, ep=args.ep),
                            weight_dtype=args.dtype, kv_dtype=args.kv_dtype or "",
                            roofline=RooflineOptions("smooth" if args.smooth else "max"))
        if batch < 1 or prompt < 1:
            raise ConfigError(f"--batch and --prompt must be >= 1 (got batch {batch}, prompt {prompt})")
        if model.encoder and output > 0:
            output = 0  # encoders produce no tokens: the estimate is one forward pass
        fp = memory_footprint(engine, hardware.params, batch, prompt, output)
        cap = kv_capacity(engine, hardware.params, stack)
        waves = static_waves(engine, cap, batch, prompt, output)
        row = {
            "model": model.name, "hardware": hardware.spec.name, "tp": tp, "pp": args.pp, "ep": args.ep,
            "batch": batch, "prompt": prompt, "output": output, "dtype": engine.weight_dtype,
            "kv_dtype": engine.kv_dtype, "ideal": bool(args.ideal), "calibrated": hardware.spec.calibrated,
            "stack": hardware.spec.stack, "kv_rule": stack.label,
            "decode_attention": kv_reads.name if kv_reads.applies(model) else "grouped",
            "efficiency_source": hardware.spec.provenance,
            "fits": waves.fits, "waves": waves.full + (waves.last > 0), "per_wave": waves.per_wave,
            "kv_blocks_per_device": cap.blocks, "missing_bytes_per_device": waves.missing_bytes,
            "weights_bytes": fp.weights * engine.devices, "weights_bytes_per_device": fp.weights,
            "kv_bytes_per_token": fp.kv_per_token, "kv_bytes_per_token_per_device": fp.kv_per_token_device,
            "kv_total_bytes": fp.kv_total * engine.devices, "memory_per_device_bytes": fp.required,
            "device_capacity_bytes": fp.capacity, "impossible": None,
        }
        reason = _impossible(engine, stack, cap, waves, prompt, output)
        if reason:
            rows.append({**row, "impossible": reason, "overflow": None, "preemptions": None, "recomputed_tokens": None,
                         "prefill_s": None, "decode_step_s": None, "tpot_s": None, "e2e_s": None,
                         "prefill_groups": {}, "decode_groups": {}})
            continue
        e2e, est = static_batch_in_waves(engine, hardware.params, waves.per_wave, waves.full, waves.last, prompt,
                                         output)
        prefill_s, decode_step_s, tpot_s = est.prefill_s, est.decode_step_s, est.tpot_s
        schedule = overflow_schedule(engine, cap, stack, waves, batch, prompt, output)
        if schedule is not None:  # admitted by current length, preempted when blocks run out
            timed = scheduled_time(engine, hardware.params, [schedule])
            e2e, prefill_s, decode_step_s = timed.e2e_s[0], timed.first_prefill_s[0], timed.first_decode_s[0]
            tpot_s = timed.decode_s[0] / max(float(schedule.decode_steps.sum()), 1.0)
        rows.append({**row, "overflow": None if waves.fits else ("preempt" if schedule else "waves"),
                     "preemptions": schedule.preemptions if schedule else 0,
                     "recomputed_tokens": schedule.recomputed_tokens if schedule else 0, "prefill_s": float(prefill_s), "decode_step_s": float(decode_step_s),
                     "tpot_s": float(tpot_s), "e2e_s": float(e2e),
                     "prefill_groups": group_bounds(engine, est.prefill),
                     "decode_groups": group_bounds(engine, est.decode_first) if output > 1 else {}})
    return rows


def print_table(rows: list[dict]) -> None:
    gb = 1e9
    for row in rows:
        cal = row["efficiency_source"] if row["stack"] or not row["calibrated"] else "calibrated"
        print(f"{row['model']} on {row['hardware']} tp={row['tp']} pp={row['pp']}  batch={row['batch']} "
              f"prompt={row['prompt']} output={row['output']}  [{row['dtype']}; {cal}]")
        if row["impossible"]:
            print(f"  impossible: {row['impossible']}\n")
            continue
        if row["overflow"] == "preempt":
            print(f"  does not fit at once: {row['missing_bytes_per_device'] / gb:.2f} GB more KV per device than "
                  f"the {row['kv_blocks_per_device']} blocks of {row['kv_rule']}'s rule; admitted by current length "
                  f"({row['preemptions']} preempted, {row['recomputed_tokens']} tokens prefilled again) (times below: the "
                  "whole batch; prefill: the steps before the first decode step; decode: its first step and "
                  "the mean step)")
        elif not row["fits"]:
            print(f"  does not fit at once: {row['missing_bytes_per_device'] / gb:.2f} GB more KV per device than "
                  f"the {row['kv_blocks_per_device']} blocks of {row['kv_rule']}'s rule; runs in {row['waves']} waves "
                  f"of up to {row['per_wave']} requests (times below: the whole batch, first wave's prefill)")
        if row["decode_attention"] != "grouped":
            print(f"  decode attention on the stack's paged kernel ({row['decode_attention']}): above 512 sequences "
                  "x query heads per device each query head re-reads its KV heads (kernels/kv_reads.py)")
        print(f"  prefill      {row['prefill_s'] * 1e3:10.2f} ms")
        print(f"  decode step  {row['decode_step_s'] * 1e3:10.2f} ms   (mean over output: {row['tpot_s'] * 1e3:.2f} ms)")
        print(f"  end to end   {row['e2e_s'] * 1e3:10.2f} ms")
        print(f"  memory       weights {row['weights_bytes'] / gb:.2f} GB total ({row['weights_bytes_per_device'] / gb:.2f} "
              f"per device), KV {row['kv_bytes_per_token'] / 1e3:.1f} KB/token, KV total {row['kv_total_bytes'] / gb:.3f} GB, "
              f"{row['memory_per_device_bytes'] / gb:.1f} of {row['device_capacity_bytes'] / gb:.1f} GB per device")
        print(f"  {'group':14s} {'prefill ms':>11s} {'bound':>9s} {'decode ms':>11s} {'bound':>9s}")
        for name in GROUP_ORDER:
            p, d = row["prefill_groups"].get(name), row["decode_groups"].get(name)
            if p is None and d is None:
                continue
            fmt = lambda g: (f"{g['time_s'] * 1e3:11.3f} {g['bound']:>9s}" if g else f"{'-':>11s} {'-':>9s}")
            print(f"  {name:14s} {fmt(p)} {fmt(d)}")
        print()
