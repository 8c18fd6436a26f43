"""How well a stack's fit on one device predicts another device: the evidence for a stack's
platform ``fallback`` (``stacks.profile``).

Each device a stack is fitted on is held out in turn and its measured static batches are predicted
with the values fitted on every other device of the same software platform, with the catalog's own
values (what a device without any fit got before), and with its own fit (the floor). Devices of the
same die are marked: their transfer is the same-die rule's, not the platform fallback's.
Assumption: the stack's values (efficiencies as shares of each device's datasheet peaks, host and
kernel overheads) describe its software more than the chip, so they carry across dies of one
platform; the table measures how far.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pandas as pd

from ..hardware.catalog import default_catalog, get_hardware, same_die_devices
from ..stacks import StackProfile, get_stack
from .static import StaticBatchTable


def predict_with(rows: pd.DataFrame, profile: StackProfile, device: str, sources) -> tuple[list[np.ndarray], np.ndarray]:
    """([predicted / measured end-to-end latency per kept row, one array per entry of ``sources``],
    which rows are kept (bool per row; the others cannot run at all, ``StaticBatchTable.impossible``))
    of ``rows`` on ``device`` under ``profile``'s KV rule and kernels, with each entry
    of ``sources`` (a dict of stack values, or None: the catalog's own) as the device's values. The
    table (schedules, KV capacity: datasheet physics) is built once and its prediction compiled once."""
    # the values straight onto the catalog entry: no stack lookup, so no fallback of any kind
    hws = [get_hardware(device, **(values or {})) for values in sources]
    params = [hw.params for hw in hws]
    spec = dataclasses.replace(hws[0].spec, kv_reads=profile.kv_reads_for(hws[0].spec.platform))
    table = StaticBatchTable(rows.reset_index(drop=True), spec, params[0], profile)
    predict = jax.jit(lambda p: table.predict(p)[0])
    measured = table.measured()[0]
    return [np.asarray(predict(p)) / measured for p in params], table.keep


def device_transfer(rows: pd.DataFrame, stack: str | StackProfile) -> pd.DataFrame:
    """One row per (held-out device, values from): MAPE (%) and median predicted / measured of the
    end-to-end latency of ``rows`` (canonical static-batch columns, any devices) of ``stack``."""
    profile = get_stack(stack)
    catalog = default_catalog()
    platform = {d: str(catalog.get("device", d).get("platform", "")) for d in profile.devices if d != "default"}
    out = []
    for device in platform:
        mine = rows[(rows["stack"] == profile.name) & (rows.hardware == device)]
        if mine.empty:
            continue
        same_die = set(same_die_devices(device))
        sources = [d for d in platform if platform[d] == platform[device]]
        candidates = sources + [None]
        ratios, keep = predict_with(mine, profile, device, [None if c is None else profile.devices[c] for c in candidates])
        dropped = int((~keep).sum())
        for source, ratio in zip(candidates, ratios):
            kind = ("own fit" if source == device else "catalog values" if source is None
                    else "same die" if source in same_die else "other die, same platform")
            out.append({"stack": profile.name, "device": device, "platform": platform[device],
                        "values_from": source or "catalog", "kind": kind, "rows": len(ratio), "dropped": dropped,
                        "mape_pct": float(np.mean(np.abs(ratio - 1)) * 100), "median_ratio": float(np.median(ratio)),
                        "fallback": kind == "other die, same platform"
                        and profile.fallback.get(platform[device]) == source})
    return pd.DataFrame(out)


def stack_transfer(rows: pd.DataFrame, stacks) -> pd.DataFrame:
    """The other order of fallback, measured: each (stack, device) fit held out and its runs predicted
    with another stack's values on the same device (the stack's own KV rule, scheduler and kernels).
    One row per (stack, device, values from) with MAPE (%) and median predicted / measured."""
    profiles = [get_stack(s) for s in stacks]
    out = []
    for profile in profiles:
        for device in profile.devices:
            mine = rows[(rows["stack"] == profile.name) & (rows.hardware == device)]
            others = [o for o in profiles if o is not profile and device in o.devices]
            if mine.empty or not others:
                continue
            ratios, keep = predict_with(mine, profile, device, [o.devices[device] for o in others])
            dropped = int((~keep).sum())
            for other, ratio in zip(others, ratios):
                out.append({"stack": profile.name, "device": device, "values_from": f"{other.name} on {device}",
                            "rows": len(ratio), "dropped": dropped, "mape_pct": float(np.mean(np.abs(ratio - 1)) * 100),
                            "median_ratio": float(np.median(ratio))})
    return pd.DataFrame(out)
