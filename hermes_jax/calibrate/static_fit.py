"""Calibrate a serving stack on one device to a static-batch table: split, fit, score, write.

``calibrate_static`` is what ``hermes-jax calibrate`` and ``calibration/fit_stacks.py`` call. It
starts from a stack's values on the device (by default the kernel-level fits of ``sarathi-2024``:
kernel physics from measured kernels, so the end-to-end fit only has to find what the serving
software adds), holds out rows by any column (by model, for transfer to models the fit never saw),
fits the named parameters on the rest and scores both parts before and after. The result carries
the fitted stack profile with provenance (data files and their SHA-256, split, loss, date,
versions) and writes a Markdown + JSON report with a residual plot.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..hardware.catalog import get_hardware, same_die_devices
from ..stacks import StackProfile, get_stack
from .fit import Bound, FitResult, LogHuber, Prior, fit_parameters
from .report import fitted_profile, parameter_lines, write_report
from .static import StaticBatchTable

DEFAULT_START = "sarathi-2024"
DEFAULT_NAMES = ("memory_efficiency", "memory_half_bytes", "attention_efficiency", "attention_memory_efficiency",
                 "kernel_overhead_s", "host_overhead_s", "host_overhead_per_seq_s",
                 "host_overhead_per_context_token_s", "host_overhead_multiworker_s", "collective_overhead_s",
                 "paged_attention_memory_efficiency", "paged_kv_reread")
"""What a serving stack changes over measured kernels: streaming and attention efficiencies, fixed
per-kernel, per-collective and host costs (CUDA graphs, the scheduler, block tables), and the KV
re-reads of a decode kernel that does not share them across a query-head group (fitted only where
rows take that path: ``kernels.kv_reads``)."""
KERNEL_NAMES = ("compute_efficiency", "compute_half_flop")
"""Fitted as well where the start has no kernel-level measurements of the device or of one with its
die (its values are the catalog's generic prior): then what the software reaches on GEMMs is only
known from these data."""
DEFAULT_BOUNDS = {"host_overhead_per_context_token_s": Bound(1e-11, 1e-6),
                  # a share of the re-reads; above 1 the kernel also streams them worse than the first read
                  "paged_kv_reread": Bound(0.01, 2.0), "paged_attention_memory_efficiency": Bound(0.05, 1.4),
                  # relative to memory_efficiency: KV reads may stream as well as the weights or better
                  "attention_memory_efficiency": Bound(0.05, 1.4)}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _display_path(path: str | Path) -> str:
    """A data file as provenance names it: from its ``shared/data`` folder on where it lies in one
    (the same on every machine), else as given."""
    parts = Path(path).resolve().parts
    for i in range(len(parts) - 1):
        if parts[i:i + 2] == ("shared", "data"):
            return "/".join(parts[i:])
    return str(path)


def data_record(paths: Sequence[str | Path]) -> list[dict]:
    """Provenance of the data files a fit read: ``{"path", "sha256"}`` each."""
    return [{"path": _display_path(p), "sha256": file_sha256(p)} for p in paths]


def _versions() -> dict[str, str]:
    import jax
    from importlib.metadata import PackageNotFoundError, version
    try:
        own = version("hermes_jax")
    except PackageNotFoundError:
        own = "source"
    return {"hermes_jax": own, "jax": jax.__version__, "numpy": np.__version__, "pandas": pd.__version__}


def _mape(pred, meas) -> float:
    return float(np.mean(np.abs(np.asarray(pred) / np.asarray(meas) - 1.0)) * 100) if len(meas) else float("nan")


@dataclass
class StaticCalibration:
    """A fitted stack on one device, with its scores on train and held-out rows."""

    stack: str
    device: str
    start: str
    fit: FitResult
    rows: pd.DataFrame            # kept rows + split ("train" / "test"), before, after (s)
    impossible: pd.DataFrame      # rows that cannot run at all, with the reason
    split: str
    loss: str
    data: list[dict]              # {"path", "sha256"}
    date: str
    seconds: float
    versions: dict[str, str] = field(default_factory=_versions)
    notes: list[str] = field(default_factory=list)   # where start values came from (e.g. a GEMM ceiling)

    def errors(self, by: Sequence[str] = ()) -> pd.DataFrame:
        """MAPE (%) of end-to-end latency before and after the fit, per split (and ``by`` groups)."""
        keys = ["split", *by]
        out = []
        for key, g in self.rows.groupby(keys, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            out.append({**dict(zip(keys, key)), "points": len(g), "mape_before_pct": _mape(g.before, g.latency_s),
                        "mape_after_pct": _mape(g.after, g.latency_s),
                        "median_ape_after_pct": float(np.median(np.abs(g.after / g.latency_s - 1)) * 100)})
        return pd.DataFrame(out)

    def provenance(self) -> dict[str, str]:
        err = self.errors().set_index("split")
        score = "; ".join(f"{s} {int(err.loc[s, 'points'])} rows MAPE {err.loc[s, 'mape_after_pct']:.1f}%"
                          for s in err.index)
        intervals = ", ".join(f"{n}{'' if np.size(lo) == 1 else f'[{j}]'} [{a:.3g}, {b:.3g}]"
                              for n, (lo, hi) in self.fit.interval90.items()
                              for j, (a, b) in enumerate(zip(np.ravel(lo), np.ravel(hi))))
        return {"summary": f"fitted to {len(self.rows)} static-batch runs ({score}) on {self.date}",
                "data": "; ".join(f"{d['path']} sha256 {d['sha256'][:16]}" for d in self.data),
                "split": self.split, "loss": f"{self.loss}: {self.fit.loss:.5g}", "start": self.start,
                "fitted": ", ".join(self.fit.names), "interval90": intervals, "date": self.date,
                "versions": ", ".join(f"{k} {v}" for k, v in self.versions.items()),
                "warnings": " | ".join(self.fit.warnings) or "none",
                **({"notes": " | ".join(self.notes)} if self.notes else {})}

    def profile(self, base: StackProfile | None = None) -> StackProfile:
        """The stack with this device's fitted values (other devices of ``base`` kept)."""
        return fitted_profile(self.stack, self.device, self.fit, self.provenance(), base)

    def to_json(self) -> dict:
        return {"stack": self.stack, "device": self.device, "start": self.start, "split": self.split,
                "loss": self.loss, "final_loss": self.fit.loss, "rows": len(self.rows),
                "impossible": self.impossible.to_dict("records"), "data": self.data, "date": self.date,
                "seconds": self.seconds, "versions": self.versions,
                "errors": self.errors().to_dict("records"),
                "errors_by_group": self.errors(["model", "tp"]).to_dict("records"),
                "parameters": {n: {"value": np.asarray(self.fit.value(n)).tolist(),
                                   "sd_log": np.asarray(self.fit.sd_log[n]).tolist(),
                                   "interval90": [np.asarray(v).tolist() for v in self.fit.interval90[n]],
                                   "bootstrap_sd_log": (np.asarray(self.fit.bootstrap_sd[n]).tolist()
                                                        if n in self.fit.bootstrap_sd else None)}
                               for n in self.fit.names},
                "warnings": self.fit.warnings, "notes": self.notes}

    def to_markdown(self) -> str:
        lines = [f"# {self.stack} on {self.device}: static-batch calibration ({self.date})", "",
                 f"Start: `{self.start}` values. Split: {self.split}. Loss: {self.loss}. "
                 f"{len(self.rows)} rows, {len(self.impossible)} impossible. Fit took {self.seconds:.0f} s.", "",
                 "| split | points | MAPE before | MAPE after | median APE after |", "|---|---|---|---|---|"]
        for r in self.errors().itertuples():
            lines.append(f"| {r.split} | {r.points} | {r.mape_before_pct:.1f}% | {r.mape_after_pct:.1f}% | "
                         f"{r.median_ape_after_pct:.1f}% |")
        lines += ["", "| split | model | tp | points | MAPE before | MAPE after |", "|---|---|---|---|---|---|"]
        for r in self.errors(["model", "tp"]).itertuples():
            lines.append(f"| {r.split} | {r.model} | {r.tp} | {r.points} | {r.mape_before_pct:.1f}% | "
                         f"{r.mape_after_pct:.1f}% |")
        lines += [""] + parameter_lines(self.fit)
        if self.notes:
            lines += ["", "Start values:"] + [f"- {n}" for n in self.notes]
        if len(self.impossible):
            lines += ["", "Impossible rows:"] + [f"- {r.source}:{r.line}: {r.reason}" for r in self.impossible.itertuples()]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, col, title in ((axes[0], "before", f"before ({self.start})"), (axes[1], "after", "after fit")):
            for split, marker in (("train", "o"), ("test", "x")):
                g = self.rows[self.rows.split == split]
                ax.scatter(g.latency_s, g[col] / g.latency_s - 1, marker=marker, s=14, label=split)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("measured end-to-end latency (s)")
            ax.set_title(title)
        axes[0].set_ylabel("predicted / measured - 1")
        axes[1].legend()
        fig.suptitle(f"{self.stack} on {self.device}")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def write(self, out: str | Path, stem: str | None = None) -> list[Path]:
        """report Markdown, JSON and residual PNG, plus a stack file ``--stack-file`` reads."""
        stem = stem or f"{self.stack}-{self.device}"
        paths = write_report(out, stem, self.to_markdown().splitlines(), self.to_json(), self.profile(),
                             f"Written by hermes-jax calibrate ({self.date}); use with --stack-file.")
        return paths + [self.plot(Path(out) / f"{stem}.png")]


def split_rows(rows: pd.DataFrame, held_out: Mapping[str, Sequence] | None = None, test_fraction: float = 0.0,
               seed: int = 0) -> tuple[np.ndarray, str]:
    """Boolean test mask and its description: rows whose ``column`` is in the held-out values, or a
    random ``test_fraction`` of rows."""
    if held_out:
        test = np.zeros(len(rows), bool)
        parts = []
        for column, values in held_out.items():
            if column not in rows.columns:
                raise ConfigError(f"split column {column!r} not in the data; columns: {', '.join(rows.columns)}")
            try:
                values = [type(rows[column].iloc[0])(v) if len(rows) else v for v in values]
            except ValueError:
                raise ConfigError(f"split column {column!r}: held-out values {values} are not of the column's "
                                  f"type ({rows[column].dtype})") from None
            absent = [v for v in values if not (rows[column] == v).any()]
            if absent:  # a misspelt value would silently hold out nothing
                raise ConfigError(f"split column {column!r}: no row has {', '.join(map(str, absent))}; values: "
                                  f"{', '.join(map(str, sorted(rows[column].unique())))}")
            test |= rows[column].isin(values).to_numpy()
            parts.append(f"{column} in {{{', '.join(map(str, values))}}}")
        return test, "held out: " + " or ".join(parts)
    if test_fraction > 0:
        rng = np.random.default_rng(seed)
        test = rng.random(len(rows)) < test_fraction
        return test, f"held out: random {test_fraction:.0%} of rows (seed {seed})"
    return np.zeros(len(rows), bool), "no held-out rows (all fitted)"


def calibrate_static(rows: pd.DataFrame, device: str, stack: str, *, names: Sequence[str] | None = None,
                     start: str | StackProfile = DEFAULT_START, bounds: Mapping[str, Bound] | None = None,
                     priors: Mapping[str, Prior] | None = None, loss=None,
                     held_out: Mapping[str, Sequence] | None = None, test_fraction: float = 0.0, seed: int = 0,
                     steps: int = 300, polish_steps: int = 60, bootstrap: int = 0, dtype=None,
                     data_files: Sequence[str | Path] = (), progress: Callable[[str], None] | None = None,
                     notes: Sequence[str] = ()) -> StaticCalibration:
    """Fit ``names`` of ``stack`` on ``device`` to the static-batch ``rows`` (canonical columns of
    ``readers.read_static_batch``, all on this device); see the module doc. ``names`` defaults to
    ``DEFAULT_NAMES``, plus ``KERNEL_NAMES`` where the start has no fit for the device. ``start`` is a
    stack name or profile (``prefill.GemmCeiling.apply`` gives one with a measured GEMM ceiling); the
    values of fields not in ``names`` are its values, kept."""
    rows = rows[rows.hardware == device].reset_index(drop=True)
    if rows.empty:
        raise ConfigError(f"no rows on {device} to calibrate {stack} with")
    hw = get_hardware(device, stack=start, dtype=dtype)
    if names is None:  # kernel values measured on this chip (this device or one with its die)?
        measured, _, _ = get_stack(start).values_for(device, same_die_devices(device))
        names = DEFAULT_NAMES + (() if measured else KERNEL_NAMES)
    loss = loss or LogHuber()
    t0 = time.perf_counter()
    profile = get_stack(stack)
    # The start stack gives the values; the kernels the rows ran on are the calibrated stack's.
    spec = dataclasses.replace(hw.spec, kv_reads=profile.kv_reads_for(hw.spec.platform))
    table = StaticBatchTable(rows, spec, hw.params, profile)
    kept = rows[table.keep].reset_index(drop=True)
    meas, _ = table.measured()
    test, split = split_rows(kept, held_out, test_fraction, seed)
    if test.all():
        raise ConfigError(f"the split ({split}) leaves no rows to fit on {device}")
    train = ~test
    result = fit_parameters(lambda p: (table.predict(p)[0], meas), hw.params, list(names), train=train,
                            bounds={**DEFAULT_BOUNDS, **(bounds or {})}, priors=priors, loss=loss, steps=steps,
                            polish_steps=polish_steps, bootstrap=bootstrap, seed=seed, progress=progress)
    kept = kept.assign(split=np.where(test, "test", "train"), before=result.predicted_start, after=result.predicted,
                       fits=table.waves[table.keep] <= 1, preemptions=table.preemptions[table.keep])
    impossible = rows.iloc[table.impossible.row].assign(reason=table.impossible.reason.to_numpy()) \
        if len(table.impossible) else rows.iloc[:0].assign(reason=[])
    start_label = start if isinstance(start, str) else start.name
    return StaticCalibration(stack, device, start_label, result, kept, impossible, split, loss.name, data_record(data_files),
                             datetime.date.today().isoformat(), time.perf_counter() - t0, notes=list(notes))
