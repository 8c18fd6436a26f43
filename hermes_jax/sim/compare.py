"""``hermes-jax compare``: runs or configurations side by side, as one table and one plot.

Each item is a run directory written by ``hermes-jax simulate --out`` (its summary.json), a scenario
TOML (simulated now), or, with ``--vary KEY=V1,V2,...``, the first scenario once per value.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import ConfigError

# (label, path into summary.json, scale, unit)
ROWS = (("requests", ("requests",), 1, ""), ("finished", ("finished",), 1, ""),
        ("unfinished", ("unfinished",), 1, ""), ("rejected", ("rejected",), 1, ""),
        ("throughput", ("throughput_rps",), 1, "req/s"), ("output tokens/s", ("output_tokens_per_s",), 1, "tok/s"),
        ("goodput", ("goodput_rps",), 1, "req/s"),
        *((f"{m.upper()} {q}", ("latency", f"{m}_s", q), 1e3, "ms") for m in ("ttft", "tpot", "e2e")
          for q in ("p50", "p99")),
        ("energy per token", ("energy", "j_per_token"), 1, "J"), ("cost per Mtok", ("energy", "usd_per_mtok"), 1, "$"))


def _get(summary: dict, path: tuple):
    value = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def summary_of(item: str, overrides: list[str], stack: str | None) -> tuple[str, dict]:
    """(label, summary) of a run directory or a scenario file."""
    path = Path(item)
    if path.is_dir():
        file = path / "summary.json"
        if not file.exists():
            raise ConfigError(f"{item}: no summary.json (a directory written by hermes-jax simulate --out)")
        return path.name, json.loads(file.read_text())
    if path.suffix == ".toml" and path.exists():
        from .report import standard_json
        from .scenario import load_scenario
        from .simulate import simulate
        return path.stem, standard_json(simulate(load_scenario(path, overrides, stack)).summary)[0]
    raise ConfigError(f"{item}: neither a run directory nor a scenario .toml file")


def collect_summaries(items: list[str], overrides: list[str], vary: str | None, stack: str | None) -> dict[str, dict]:
    """Label -> summary of each item (default: the bundled scenario), or of the first item once per
    value of ``vary`` (``KEY=V1,V2,...``); at least two."""
    from .report import DEFAULT_SCENARIO

    items = list(items) or [str(DEFAULT_SCENARIO)]
    summaries: dict[str, dict] = {}
    if vary:
        key, sep, values = vary.partition("=")
        if not sep or not values:
            raise ConfigError(f"--vary {vary!r}: expected KEY=V1,V2,...")
        for value in values.split(","):
            summaries[f"{key.split('.')[-1]}={value}"] = summary_of(items[0], overrides + [f"{key}={value}"], stack)[1]
    else:
        for item in items:
            label, summary = summary_of(item, overrides, stack)
            while label in summaries:
                label += "'"
            summaries[label] = summary
    if len(summaries) < 2:
        raise ConfigError("compare needs two or more runs (items, or --vary with several values)")
    return summaries


def compare_table(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per metric, one column per run (values in the unit of the row label)."""
    data = {}
    for label, summary in summaries.items():
        data[label] = [None if _get(summary, p) is None else _get(summary, p) * scale for _, p, scale, _ in ROWS]
    index = [f"{name} ({unit})" if unit else name for name, _, _, unit in ROWS]
    return pd.DataFrame(data, index=index)


def write_compare(table: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "compare.csv", out / "compare.png"]
    table.to_csv(paths[0])
    rows = [r for r in table.index if r.endswith("(ms)")]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) * len(table.columns) / 2), 4))
    width = 0.8 / max(len(table.columns), 1)
    for k, run in enumerate(table.columns):
        values = pd.to_numeric(table.loc[rows, run], errors="coerce").to_numpy(float)
        ax.bar(np.arange(len(rows)) + k * width, np.nan_to_num(values), width, label=run)
    ax.set_xticks(np.arange(len(rows)) + width * (len(table.columns) - 1) / 2, [r[:-5] for r in rows])
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Latency percentiles per run")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
