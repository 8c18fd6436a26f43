"""The validation every input file shares: where a value sits (file and line), the checks of
numbers and choices, and token-length distributions. JAX-free and below both the scenario
(``sim.scenario``) and the pipeline stages (``pipeline.parse``, ``pipeline.spec``), which use it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

LENGTHS = ("fixed", "uniform", "lognormal", "empirical")


class Where:
    """Error context: the file and the line of each array-of-tables entry's fields."""

    def __init__(self, path: Path | None):
        self.path = path
        self.lines = path.read_text().splitlines() if path else []

    def line(self, table: str, index: int, key: str) -> int | None:
        """Line of ``key`` inside the ``index``-th ``[[table]]`` (or ``[table]``) block."""
        header = re.compile(r"^\s*\[\[?\s*" + re.escape(table) + r"\s*\]\]?\s*$")
        starts = [i for i, text in enumerate(self.lines) if header.match(text)]
        if index >= len(starts):
            return None
        first = re.sub(r"\[\d+\]$", "", key.split(".")[0])   # pipeline[2].on is on the pipeline = line
        pattern = re.compile(r"^\s*" + re.escape(first) + r"\s*=")
        for i in range(starts[index] + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                break
            if pattern.match(self.lines[i]):
                return i + 1
        return starts[index] + 1

    def error(self, table: str, index: int, name: str, key: str, message: str) -> ConfigError:
        line = self.line(table, index, key) if self.path else None
        place = f"{self.path}:{line}" if line else (str(self.path) if self.path else "<scenario>")
        label = f"[[{table}]] {name!r}" if name else f"[{table}]"
        return ConfigError(f"{place} {label} {key}: {message}")


def check_keys(where: Where, table: str, index: int, name: str, data: dict, allowed: set, prefix: str = ""):
    for key in data:
        if key not in allowed:
            raise where.error(table, index, name, prefix + key, f"unknown field; allowed: {', '.join(sorted(allowed))}")


def positive(where, table, index, name, data, key, default=None, integer=False, allow_zero=False):
    value = data.get(key.split(".")[-1], default)
    if value is None:
        raise where.error(table, index, name, key, "required")
    if key.split(".")[-1] not in data and value == math.inf:   # an unlimited default, e.g. no SLO
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise where.error(table, index, name, key, f"must be a number, got {value!r}")
    if integer and int(value) != value:
        raise where.error(table, index, name, key, f"must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise where.error(table, index, name, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return int(value) if integer else float(value)


def choice(where, table, index, name, data, key, allowed, default=None):
    value = data.get(key.split(".")[-1], default)
    if value not in allowed:
        raise where.error(table, index, name, key, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Distribution:
    """A token-length distribution: fixed | uniform | lognormal | empirical."""

    dist: str
    value: float = 0.0
    low: float = 0.0
    high: float = 0.0
    median: float = 0.0
    sigma: float = 0.0
    path: str = ""

    @staticmethod
    def parse(data: Any, where: Where, index: int, name: str, key: str, base: Path | None) -> "Distribution":
        if not isinstance(data, dict):
            raise where.error("client", index, name, key, "expected a table like { dist = \"fixed\", value = 512 }")
        kind = choice(where, "client", index, name, data, f"{key}.dist", LENGTHS)
        allowed = {"fixed": {"value"}, "uniform": {"low", "high"}, "lognormal": {"median", "sigma"},
                   "empirical": {"path"}}[kind]
        check_keys(where, "client", index, name, data, allowed | {"dist"}, prefix=key + ".")
        if kind == "empirical":
            path = data.get("path")
            if not isinstance(path, str):
                raise where.error("client", index, name, f"{key}.path", "required (a file of one length per line)")
            resolved = Path(path) if Path(path).is_absolute() or base is None else base / path
            return Distribution(kind, path=str(resolved))
        values = {k: positive(where, "client", index, name, data, f"{key}.{k}") for k in allowed}
        if kind == "uniform" and values["low"] > values["high"]:
            raise where.error("client", index, name, f"{key}.low", f"must be <= high ({values['high']})")
        return Distribution(kind, **values)


def hardware_overrides(where: Where, table: str, index: int, name: str, data: dict) -> dict:
    """``data["hardware_overrides"]`` checked: a table of known hardware parameters, finite numbers
    >= 0 (or lists of them for vector fields), > 0 for rates, sizes and efficiencies."""
    from .hardware.params import FIELDS, POSITIVE_FIELDS   # lazy: schema stays free of JAX
    overrides = data.get("hardware_overrides", {})
    if not isinstance(overrides, dict):
        raise where.error(table, index, name, "hardware_overrides", "expected a table, e.g. { hbm_bandwidth = 4e12 }")
    for key, value in overrides.items():
        field_name = f"hardware_overrides.{key}"
        if key not in FIELDS:
            raise where.error(table, index, name, field_name, f"unknown hardware parameter; known: {', '.join(FIELDS)}")
        values = value if isinstance(value, list) else [value]
        unit = FIELDS[key][1]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise where.error(table, index, name, field_name, f"must be a finite number >= 0 ({unit}), got {value!r}")
            if v == 0 and key in POSITIVE_FIELDS:
                raise where.error(table, index, name, field_name, f"must be > 0 ({unit}): with 0 every operation "
                                  f"that needs it would take forever, got {value!r}")
    return dict(overrides)
