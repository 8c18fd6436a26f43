"""Price and power of a hypothetical accelerator as functions of its datasheet parameters.

Model (an assumption, stated so it can be replaced): price per device-hour and peak power are
linear in bf16 peak FLOP/s, HBM bandwidth and HBM capacity,

    price_per_hour = k * (F / F_ref + B / B_ref + C / C_ref) / 3      (ref: the H100 SXM entry)
    power_max_w    = p_flops * PFLOP/s + p_bw * TB/s + p_cap * (100 GB)
    power_idle_w   = idle_share * power_max_w

fitted by least squares to the catalog's accelerators (GPUs and ASICs; every price and power there
carries its own source in hardware/data/devices.toml), so the coefficients are traceable to those
entries. The three features correlate 0.84-0.95 across those devices, so their prices cannot
separate what compute, bandwidth and capacity each cost (a free fit puts it all on bandwidth and
makes compute free); the price model therefore assumes each is a third of a device's price at the
reference and fits only the scale k. Power is fitted freely (non-negative coefficients). ``CostModel.residuals`` gives each device's fit error:
the spread of real prices around any such model is large (vendors price by market, not by
bandwidth), so a design's cost is a what-if number, not a quote.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jax.numpy as jnp
import numpy as np
from scipy.optimize import nnls

FEATURES = ("bf16 PFLOP/s", "HBM TB/s", "HBM 100 GB")
KINDS = ("gpu", "asic")
REFERENCE = "h100-sxm"


def features(log: dict):
    """(3,) features of a parameter pytree (natural logs of SI values); traceable."""
    peak = jnp.exp(log["peak_flops"][1]) / 1e15      # DTYPES order: fp32, bf16, ...
    return jnp.stack([peak, jnp.exp(log["hbm_bandwidth"]) / 1e12, jnp.exp(log["hbm_capacity"]) / 1e11])


@dataclass(frozen=True)
class CostModel:
    price_coef: tuple[float, float, float]    # $/h per unit of FEATURES
    power_coef: tuple[float, float, float]    # W per unit of FEATURES
    idle_share: float                         # power_idle_w / power_max_w (median of the devices)
    devices: tuple[str, ...]                  # the catalog entries it was fitted to
    residuals: dict                           # device -> (price error %, power error %)

    def price_per_hour(self, log: dict):
        return features(log) @ jnp.asarray(self.price_coef)

    def power_max_w(self, log: dict):
        return features(log) @ jnp.asarray(self.power_coef)

    def power_idle_w(self, log: dict):
        return self.idle_share * self.power_max_w(log)

    def describe(self) -> list[str]:
        lines = ["price per device-hour = " + " + ".join(f"{c:.3g} $/h x {f}" for c, f in zip(self.price_coef, FEATURES)),
                 "peak power = " + " + ".join(f"{c:.3g} W x {f}" for c, f in zip(self.power_coef, FEATURES)),
                 f"idle power = {self.idle_share:.3f} x peak power",
                 f"price: one scale fitted by least squares (compute, bandwidth and capacity each a third of the "
                 f"{REFERENCE}'s price, an assumption); power: non-negative least squares; over the catalog's "
                 f"{', '.join(self.devices)}"]
        return lines


@lru_cache(maxsize=1)
def catalog_cost_model() -> CostModel:
    """The linear model fitted to the catalog's GPUs and ASICs (see the module docstring)."""
    from ..hardware.catalog import default_catalog, get_hardware
    names = [n for n in default_catalog().names("device") if get_hardware(n).spec.kind in KINDS]
    X, price, power, idle = [], [], [], []
    for n in names:
        p = get_hardware(n).params
        X.append(np.asarray(features(p.log)))
        price.append(float(p.price_per_hour))
        power.append(float(p.power_max_w))
        idle.append(float(p.power_idle_w) / float(p.power_max_w))
    X = np.array(X)
    ref = X[names.index(REFERENCE)]
    z = (X / ref).mean(axis=1)
    k = float(z @ np.array(price) / (z @ z))
    pc = k / 3 / ref
    wc, _ = nnls(X, np.array(power))
    res = {n: (float(X[i] @ pc / price[i] - 1) * 100, float(X[i] @ wc / power[i] - 1) * 100) for i, n in enumerate(names)}
    return CostModel(tuple(map(float, pc)), tuple(map(float, wc)), float(np.median(idle)), tuple(names), res)
