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

import numpy as np
import pandas as pd

from ..hardware.catalog import default_catalog, get_hardware, same_die_devices
from ..stacks import StackProfile, get_stack
from .static import StaticBatchTable


def predict_with(rows: pd.DataFrame, profile: StackProfile, device: str, values: dict | None) -> tuple[np.ndarray, int]:
    """(predicted / measured end-to-end latency per kept row, rows dropped) of ``rows`` on ``device``
    under ``profile``'s KV rule and kernels with ``values`` as the device's table (None: no table,
    i.e. the catalog's values)."""
    trial = dataclasses.replace(profile, name=f"{profile.name}-transfer", fallback={},
                                devices={} if values is None else {device: dict(values)})
    hw = get_hardware(device, stack=trial)
    spec = dataclasses.replace(hw.spec, kv_reads=trial.kv_reads_for(hw.spec.platform))
    table = StaticBatchTable(rows.reset_index(drop=True), spec, hw.params, trial)
    predicted = np.asarray(table.predict(hw.params)[0])
    return predicted / table.measured()[0], int((~table.keep).sum())


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
        for source in sources + [None]:
            ratio, dropped = predict_with(mine, profile, device, None if source is None else profile.devices[source])
            kind = ("own fit" if source == device else "catalog values" if source is None
                    else "same die" if source in same_die else "other die, same platform")
            out.append({"stack": profile.name, "device": device, "platform": platform[device],
                        "values_from": source or "catalog", "kind": kind, "rows": len(ratio), "dropped": dropped,
                        "mape_pct": float(np.mean(np.abs(ratio - 1)) * 100), "median_ratio": float(np.median(ratio)),
                        "fallback": kind == "other die, same platform"
                        and profile.fallback.get(platform[device]) == source})
    return pd.DataFrame(out)
