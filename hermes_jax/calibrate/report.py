"""What every calibration writes: the fitted stack profile (a file ``--stack-file`` reads) and a
Markdown + JSON report beside it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..stacks import STACK_FIELDS, StackProfile, get_stack
from .fit import FitResult


def stack_values(fit: FitResult) -> dict:
    """Every stack field of the fitted parameters (natural units): a self-contained device table."""
    nat = fit.params.natural()
    return {k: (np.asarray(nat[k]).tolist() if np.ndim(nat[k]) else float(nat[k])) for k in STACK_FIELDS}


def fitted_profile(stack: str, device: str, fit: FitResult, provenance: dict[str, str],
                   base: StackProfile | None = None) -> StackProfile:
    """``stack`` (shipped or user, or a new one of that name) with this device's fitted values."""
    if base is None:
        try:
            base = get_stack(stack)
        except ConfigError:  # a new stack name: start an empty profile
            base = StackProfile(stack)
    return dataclasses.replace(base, devices={**base.devices, device: stack_values(fit)},
                               provenance={**base.provenance, device: provenance})


def parameter_lines(fit: FitResult) -> list[str]:
    """Markdown table of fitted values, 90% intervals, sd and (with a bootstrap) its sd."""
    boot = bool(fit.bootstrap_sd)
    lines = ["| parameter | value | 90% interval (Laplace) | sd (e-folds) |" + (" bootstrap sd |" if boot else ""),
             "|---|---|---|---|" + ("---|" if boot else "")]
    for n in fit.names:  # a vector parameter gets one row per entry
        lo, hi = fit.interval90[n]
        size = np.size(fit.value(n))
        for j, (v, a, b, sd) in enumerate(zip(*(np.ravel(x) for x in (fit.value(n), lo, hi, fit.sd_log[n])))):
            label = n if size == 1 else f"{n}[{j}]"
            row = f"| {label} | {v:.4g} | [{a:.3g}, {b:.3g}] | {sd:.3g} |"
            lines.append(row + (f" {np.ravel(fit.bootstrap_sd[n])[j]:.3g} |" if boot else ""))
    lines += ["", "Warnings:" if fit.warnings else "No identifiability warnings."]
    return lines + [f"- {w}" for w in fit.warnings]


def jsonable(value):
    """``value`` with NumPy scalars and arrays as plain numbers and lists, and every NaN or infinity
    (an unmeasured TTFT, an unbounded interval) as null: the JSON stays valid and says 'none'."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def write_report(out: str | Path, stem: str, markdown: list[str], record: dict, profile: StackProfile,
                 header: str) -> list[Path]:
    """``stem``.md, .json and .toml (the profile) in ``out``."""
    from ..stacks.profile import profiles_to_toml
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.md", out / f"{stem}.json", out / f"{stem}.toml"]
    paths[0].write_text("\n".join(markdown) + "\n")
    paths[1].write_text(json.dumps(jsonable(record), indent=1, allow_nan=False))
    paths[2].write_text(profiles_to_toml({profile.name: profile}, header))
    return paths
