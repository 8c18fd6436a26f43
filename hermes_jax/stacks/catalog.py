"""The shipped stacks and user stack files.

``data/stacks.toml`` is written by ``calibration/fit_stacks.py`` (vLLM, TensorRT-LLM, DeepSpeed-MII
fitted to LLM-Inference-Bench). Two more stacks are read from the calibrated hardware overlay
(``hardware/data/calibrated.toml``, written by ``calibration/fit_kernels.py``) so their values live
in one place: ``splitwise-2023`` (the serving-level fit to Splitwise's 2023 engine) and
``sarathi-2024`` (the kernel-level fits to Vidur's sarathi-serve profiles: operators, attention
fields, all-reduce, host; over the Splitwise values for fields those profiles do not measure).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..hardware.catalog import default_catalog
from . import DEFAULT_STACK  # defined in the package, where the CLI reads it without JAX
from .profile import KVSizing, StackProfile, profiles_from_toml

DATA = Path(__file__).parent / "data"
OVERLAY_ORIGIN = "hermes_jax/hardware/data/calibrated.toml"   # origin of the kernel-level stacks (never borrow)
_USER: dict[str, StackProfile] = {}
_SHIPPED: dict[str, StackProfile] | None = None


def _overlay_stacks() -> dict[str, StackProfile]:
    overlay = default_catalog().calibrated
    splitwise, sarathi, prov_s, prov_v = {}, {}, {}, {}
    for device, entry in overlay.items():
        base = dict(entry.get("efficiency", {}))
        splitwise[device] = base
        prov_s[device] = {"summary": entry.get("provenance", {}).get("summary", "fitted to Splitwise")}
        kernel = dict(base)
        fits = entry.get("fits", {})
        for part in ("ops", "allreduce", "host"):
            kernel.update(fits.get(part, {}).get("values", {}))
        # The attention fit's half sizes and kernel floor describe attention kernels only; the
        # operator fit's describe every other kernel, so only the attention fields come from it.
        kernel.update({k: v for k, v in fits.get("attention", {}).get("values", {}).items() if k.startswith("attention_")})
        sarathi[device] = kernel
        prov_v[device] = {"summary": "kernel-level fits to Vidur profiles (" +
                          ", ".join(sorted(entry.get("fits", {}))) + "); other fields from the Splitwise fit"}
    origin = OVERLAY_ORIGIN
    return {
        "splitwise-2023": StackProfile("splitwise-2023", "2023", "the engine behind Splitwise's measured "
                                       "Llama-2-70B / BLOOM profiles", "refuse", KVSizing(), splitwise, prov_s, origin),
        "sarathi-2024": StackProfile("sarathi-2024", "2024", "sarathi-serve kernels as profiled by Vidur",
                                     "waves", KVSizing(), sarathi, prov_v, origin),
    }


def shipped_stacks() -> dict[str, StackProfile]:
    global _SHIPPED
    if _SHIPPED is None:
        stacks = _overlay_stacks()
        path = DATA / "stacks.toml"
        if path.exists():
            stacks.update(profiles_from_toml(path))
        _SHIPPED = stacks
    return _SHIPPED


def stack_names() -> list[str]:
    return sorted({**shipped_stacks(), **_USER})


def load_stack_file(path: str | Path) -> list[str]:
    """Register the stacks a user TOML file defines (same schema as the shipped file); returns their
    names. A user stack of a shipped name replaces it for this process."""
    stacks = profiles_from_toml(path)
    _USER.update(stacks)
    return sorted(stacks)


def register_stack(profile: StackProfile) -> None:
    """Make ``profile`` known by its name for this process (replacing a shipped one of that name)."""
    _USER[profile.name] = profile


def device_values(profile: StackProfile, device: str, same_die=(), platform: str = "") -> tuple[dict, str, bool]:
    """(values, provenance, fitted on this device?) of ``profile`` on ``device``: its own lookup
    (``StackProfile.values_for``: own fit, same die, platform fallback, default table), else the fit
    another shipped serving stack has for this device or its die (the first in ``stacks.toml``'s order
    that has one; not for the kernel-level stacks, which calibrations start from), else nothing (the
    catalog's values).

    Why another stack before the catalog: held out, a stack's runs predicted with another stack's fit
    on the same device are 15-55% off end to end against 41-122% with the catalog's values, though
    worse than the stack's own fit on another die of the platform (6-29%), which comes first
    (calibration/results/device_transfer.md). The KV rule, scheduler and kernels stay ``profile``'s."""
    values, provenance, calibrated = profile.values_for(device, same_die, platform)
    # The kernel-level stacks (splitwise-2023, sarathi-2024) are where calibrations start from: a fit
    # of a device they lack must start from the catalog, not from the shipped fit it is redoing.
    if values or calibrated or profile.origin == OVERLAY_ORIGIN:
        return values, provenance, calibrated
    for other in shipped_stacks().values():   # stacks.toml's order: the default stack first
        if other.origin != str(DATA / "stacks.toml") or other.name == profile.name:
            continue
        found, where, _ = other.values_for(device, same_die)
        if found:
            return found, (f"{profile.label} has no fit for {device}, its die or its platform: the values of "
                           f"another stack on it ({where}; calibration/results/device_transfer.md)"), False
    return values, provenance, calibrated


def get_stack(name: str | StackProfile | None = None) -> StackProfile:
    """A stack by name (``None``: the default, the current vLLM)."""
    if isinstance(name, StackProfile):
        return name
    name = name or DEFAULT_STACK
    found = _USER.get(name) or shipped_stacks().get(name)
    if found is None:
        raise ConfigError(f"unknown stack {name!r}; known stacks: {', '.join(stack_names())} "
                          "(or define one in a --stack-file)")
    return found
