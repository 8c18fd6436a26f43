"""Hardware catalog: datasheet entries shipped as TOML, user files, and the calibrated overlay.

A device entry names its links, host CPU and memory tiers; ``get_hardware`` composes them into one
static ``SystemSpec`` plus one differentiable ``HardwareParams``. Efficiency and overhead values
come, in order of precedence, from the calibrated overlay (``data/calibrated.toml``, written by
``calibration/fit_kernels.py``), the device entry's own ``[name.efficiency]`` table, the calibrated
values of the device named by ``efficiency_from``, and finally ``GENERIC_PRIOR``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..kernels.kv_reads import GroupedKVReads
from ..tomlio import field_line, load_toml
from .params import DTYPES, EFFICIENCY_FIELDS, FIELDS, OVERHEAD_FIELDS, TIERS, HardwareParams

DATA = Path(__file__).parent / "data"
KINDS = ("device", "link", "cpu", "tier")
FILES = {"device": "devices.toml", "link": "links.toml", "cpu": "cpus.toml", "tier": "tiers.toml"}

REQUIRED = {
    "device": ("devices_per_node", "intra_link", "inter_link", "host_link", "host_cpu", "tiers",
               "peak_flops", "hbm_bandwidth", "hbm_capacity", "power_idle_w", "power_max_w", "price_per_hour"),
    "link": ("bandwidth", "latency"),
    "cpu": ("cores", "core_flops", "dram_bandwidth", "dram_capacity", "power_max_w"),
    "tier": ("bandwidth", "latency", "capacity"),
}
POSITIVE = {
    "device": ("devices_per_node", "hbm_bandwidth", "hbm_capacity", "power_max_w"),
    "link": ("bandwidth",),
    "cpu": ("cores", "core_flops", "dram_bandwidth", "dram_capacity"),
    "tier": ("bandwidth", "capacity"),
}

# Prior for parts with no measurements here: round values between the A100 and H100 fits. It is a
# prior, not a fact; estimates made with it say "uncalibrated".
GENERIC_PRIOR = {
    "compute_efficiency": 0.65, "compute_half_flop": 2e9, "attention_efficiency": 0.35,
    "attention_causal_efficiency": 1.0, "attention_row_keys": 64.0,
    # Where a stack's rule says KV re-reads are unshared, assume they reach HBM until measured.
    "paged_kv_reread": 1.0, "paged_attention_memory_efficiency": 1.0,
    "memory_efficiency": 0.8, "memory_half_bytes": 2e6,
    "attention_memory_efficiency": 1.0, "elementwise_efficiency": 0.5, "kernel_overhead_s": 4e-6,
    "collective_overhead_s": 1e-5,
    # Neutral low-latency protocol (never faster than the bandwidth one) until a part is measured.
    "collective_ll_overhead_s": 1e-5, "collective_ll_latency_ratio": 1.0, "collective_ll_bandwidth_efficiency": 0.5,
    "host_overhead_s": 2e-3, "host_overhead_per_seq_s": 5e-5, "host_overhead_per_context_token_s": 0.0, "host_overhead_multiworker_s": 4e-4,
    "host_overhead_per_vocab_s": 3e-9, "host_overhead_per_logit_s": 4e-11,
    "intra_link_efficiency": 0.6, "inter_link_efficiency": 0.8,
}
IDEAL = {**{n: 1.0 for n in EFFICIENCY_FIELDS}, **{n: 0.0 for n in OVERHEAD_FIELDS}}


@dataclass(frozen=True)
class SystemSpec:
    """Static structure of a node type: shapes and names, never differentiated. Hashable, so it can
    be a static argument of jitted functions."""

    name: str
    kind: str                      # "gpu" | "asic" | "cpu"
    devices_per_node: int
    native_dtypes: tuple[str, ...]
    intra_link: str
    inter_link: str
    host_link: str
    host_cpu: str
    tiers: tuple[str, ...]         # catalog tier names, TIERS order
    calibrated: bool = False
    provenance: str = ""
    stack: str = ""                # serving stack whose efficiencies and overheads apply ("" = catalog values)
    platform: str = ""             # software platform the device runs (cuda, rocm, ...): stacks pick kernels by it
    kv_reads: object = GroupedKVReads()   # kernels.kv_reads rule of the stack's decode attention here


@dataclass(frozen=True)
class Hardware:
    """A node type: static ``spec`` plus differentiable ``params``."""

    spec: SystemSpec
    params: HardwareParams


@dataclass
class Catalog:
    """Entries by kind and name, each remembering the file it came from (for error messages)."""

    entries: dict[str, dict[str, dict]] = field(default_factory=lambda: {k: {} for k in KINDS})
    origin: dict[tuple[str, str], Path] = field(default_factory=dict)
    calibrated: dict[str, dict] = field(default_factory=dict)

    def add(self, kind: str, name: str, entry: dict, path: Path) -> None:
        _validate(kind, name, entry, path)
        self.entries[kind][name] = entry
        self.origin[(kind, name)] = path

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str, context: str = "") -> dict:
        try:
            return self.entries[kind][name]
        except KeyError:
            known = ", ".join(self.names(kind))
            where = f" (named by {context})" if context else ""
            raise ConfigError(f"unknown {kind} {name!r}{where}; known {kind}s: {known}") from None

    def load_user_file(self, path: str | Path) -> list[str]:
        """Add entries from a user TOML file with tables ``[device.NAME]``, ``[link.NAME]``,
        ``[cpu.NAME]``, ``[tier.NAME]``. Returns the device names it defines."""
        path = Path(path)
        data = load_toml(path)
        unknown = set(data) - set(KINDS)
        if unknown:
            raise ConfigError(f"{path}: unknown top-level table(s) {sorted(unknown)}; allowed: {', '.join(KINDS)} "
                              "(e.g. [device.my-gpu])")
        for kind in KINDS:
            for name, entry in data.get(kind, {}).items():
                self.add(kind, name, entry, path)
        return sorted(data.get("device", {}))


def _number(value, path, kind, name, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        line = field_line(path, name, key.split(".")[0])
        raise ConfigError(f"{path}:{line} [{name}] {key}: expected a number, got {value!r}")
    return float(value)


def _validate(kind: str, name: str, entry: dict, path: Path) -> None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path} [{name}]: expected a table")
    missing = [f for f in REQUIRED[kind] if f not in entry]
    if missing:
        raise ConfigError(f"{path}:{field_line(path, name, name) or '?'} [{name}] ({kind}): missing field(s) {', '.join(missing)}")
    for key in POSITIVE[kind]:
        if _number(entry[key], path, kind, name, key) <= 0:
            raise ConfigError(f"{path}:{field_line(path, name, key)} [{name}] {key} must be > 0, got {entry[key]}")
    if kind == "device":
        flops = entry["peak_flops"]
        if not isinstance(flops, dict) or "bf16" not in flops:
            raise ConfigError(f"{path}:{field_line(path, name, 'peak_flops')} [{name}] peak_flops: expected a table "
                              f"with at least bf16, e.g. {{ bf16 = 989e12 }}; dtypes: {', '.join(DTYPES)}")
        for dtype, value in flops.items():
            if dtype not in DTYPES:
                raise ConfigError(f"{path}:{field_line(path, name, 'peak_flops')} [{name}] peak_flops.{dtype}: "
                                  f"unknown dtype; known: {', '.join(DTYPES)}")
            if _number(value, path, kind, name, f"peak_flops.{dtype}") <= 0:
                raise ConfigError(f"{path}:{field_line(path, name, 'peak_flops')} [{name}] peak_flops.{dtype} "
                                  f"must be > 0 FLOP/s, got {value}")
        if not isinstance(entry.get("platform", ""), str):
            raise ConfigError(f"{path}:{field_line(path, name, 'platform')} [{name}] platform: expected a name such as "
                              f"\"cuda\" or \"rocm\", got {entry['platform']!r}")
        tiers = entry["tiers"]
        if not isinstance(tiers, dict) or set(tiers) != set(TIERS):
            raise ConfigError(f"{path}:{field_line(path, name, 'tiers')} [{name}] tiers: expected a table naming "
                              f"exactly {', '.join(TIERS)}")
        for key, value in entry.get("efficiency", {}).items():
            if key not in GENERIC_PRIOR:
                raise ConfigError(f"{path} [{name}.efficiency] {key}: unknown; known: {', '.join(GENERIC_PRIOR)}")
            # Vector fields (elementwise_efficiency) take one number for all entries or a list.
            for item in value if isinstance(value, list) else [value]:
                if _number(item, path, kind, name, f"efficiency.{key}") < 0:
                    raise ConfigError(f"{path} [{name}.efficiency] {key} must be >= 0, got {value}")
    else:
        optional = ("price_per_core_hour",) if kind == "cpu" and "price_per_core_hour" in entry else ()
        for key in REQUIRED[kind] + optional:
            if _number(entry[key], path, kind, name, key) < 0:
                raise ConfigError(f"{path}:{field_line(path, name, key)} [{name}] {key} must be >= 0, got {entry[key]}")


_DEFAULT: Catalog | None = None


def shipped_catalog(calibrated: bool = True) -> Catalog:
    """A fresh copy of the shipped datasheet entries, with the calibrated overlay unless told not to
    (calibration/ fits start from the datasheet values and the generic prior)."""
    catalog = Catalog()
    for kind, filename in FILES.items():
        path = DATA / filename
        for name, entry in load_toml(path).items():
            catalog.add(kind, name, entry, path)
    overlay = DATA / "calibrated.toml"
    if calibrated and overlay.exists():
        catalog.calibrated = load_toml(overlay)
    return catalog


def default_catalog() -> Catalog:
    """The shipped catalog with the calibrated overlay, loaded once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = shipped_catalog()
    return _DEFAULT


def hardware_names(catalog: Catalog | None = None) -> list[str]:
    return (catalog or default_catalog()).names("device")


def _efficiency(catalog: Catalog, name: str, entry: dict) -> tuple[dict, bool, str]:
    values = dict(GENERIC_PRIOR)
    provenance = "generic prior (uncalibrated)"
    calibrated = False
    source = entry.get("efficiency_from")
    if source and source in catalog.calibrated:
        values.update(catalog.calibrated[source]["efficiency"])
        provenance = f"calibrated values of {source} (no measurements of {name} here)"
    if entry.get("efficiency"):
        values.update(entry["efficiency"])
        provenance = f"[{name}.efficiency] table"
    if name in catalog.calibrated:
        values.update(catalog.calibrated[name]["efficiency"])
        calibrated = True
        provenance = catalog.calibrated[name].get("provenance", {}).get("summary", "calibrated")
    return values, calibrated, provenance


def same_die_devices(name: str, catalog: Catalog | None = None) -> list[str]:
    """Devices with the same chip as ``name``, in order of preference (see ``_same_die``)."""
    return _same_die(catalog or default_catalog(), name)


def _same_die(catalog: Catalog, name: str) -> list[str]:
    """Devices with the same chip as ``name``: the one its entry's ``efficiency_from`` names, then
    those that name ``name`` or share that source (in catalog order)."""
    source = catalog.get("device", name).get("efficiency_from")
    out = [source] if source else []
    for other in catalog.names("device"):
        entry = catalog.get("device", other)
        if other != name and other not in out and entry.get("efficiency_from") in {name, source} - {None}:
            out.append(other)
    return out


def get_hardware(name: str, *, ideal: bool = False, catalog: Catalog | None = None, dtype=None,
                 stack=None, **overrides) -> Hardware:
    """Compose a device entry with its links, CPU and tiers into a ``Hardware``.

    ``stack`` (a name or ``stacks.StackProfile``) applies what that serving stack reaches on the
    device over the catalog's values (lookup and fallback: ``stacks.profile``). ``ideal=True`` gives
    the datasheet roofline: efficiencies 1 and overheads 0. ``overrides`` set any ``HardwareParams``
    field in natural units.
    """
    catalog = catalog or default_catalog()
    device = catalog.get("device", name)
    ctx = f"device {name}"
    intra = catalog.get("link", device["intra_link"], ctx)
    inter = catalog.get("link", device["inter_link"], ctx)
    host_link = catalog.get("link", device["host_link"], ctx)
    cpu = catalog.get("cpu", device["host_cpu"], ctx)
    tiers = [catalog.get("tier", device["tiers"][t], ctx) for t in TIERS]
    efficiency, calibrated, provenance = _efficiency(catalog, name, device)
    stack_name, kv_reads = "", GroupedKVReads()
    if stack is not None:
        from ..stacks import get_stack  # stacks read this catalog's overlay: import here, not at the top
        from ..stacks.catalog import device_values
        profile = get_stack(stack)
        stack_values, provenance, calibrated = device_values(profile, name, _same_die(catalog, name),
                                                             str(device.get("platform", "")))
        efficiency.update(stack_values)
        stack_name = profile.name
        kv_reads = profile.kv_reads_for(device.get("platform", ""))
    if ideal:
        efficiency.update(IDEAL)
        calibrated, provenance = False, "ideal datasheet roofline (efficiency 1, overheads 0)"
    sockets = float(device.get("cpu_sockets", 1))
    flops = device["peak_flops"]
    # Emulated dtypes default to the bf16 rate when an entry does not say otherwise.
    peak = [float(flops.get(d, flops["bf16"])) for d in DTYPES]
    values = {
        "peak_flops": np.array(peak),
        "hbm_bandwidth": device["hbm_bandwidth"],
        "hbm_capacity": device["hbm_capacity"],
        "intra_link_bandwidth": intra["bandwidth"], "intra_link_latency": intra["latency"],
        "inter_link_bandwidth": inter["bandwidth"], "inter_link_latency": inter["latency"],
        # A tier reaches the device through the host link unless it is a network store.
        "tier_bandwidth": np.array([min(t["bandwidth"], host_link["bandwidth"]) if k != "remote_store"
                                    else t["bandwidth"] for k, t in zip(TIERS, tiers)]),
        "tier_latency": np.array([t["latency"] for t in tiers]),
        "tier_capacity": np.array([t["capacity"] for t in tiers]),
        "cpu_cores": cpu["cores"] * sockets,
        "cpu_core_flops": cpu["core_flops"],
        "cpu_dram_bandwidth": cpu["dram_bandwidth"] * sockets,
        "power_idle_w": device["power_idle_w"], "power_max_w": device["power_max_w"],
        "price_per_hour": device["price_per_hour"],
        **efficiency,
    }
    for key, value in overrides.items():
        if key not in FIELDS:
            raise ConfigError(f"unknown hardware parameter {key!r}; known: {', '.join(FIELDS)}")
        values[key] = value
    spec = SystemSpec(
        name=name, kind=device.get("kind", "gpu"), devices_per_node=int(device["devices_per_node"]),
        native_dtypes=tuple(device.get("native_dtypes", DTYPES)), intra_link=device["intra_link"],
        inter_link=device["inter_link"], host_link=device["host_link"], host_cpu=device["host_cpu"],
        tiers=tuple(device["tiers"][t] for t in TIERS), calibrated=calibrated, provenance=provenance,
        stack=stack_name, platform=str(device.get("platform", "")), kv_reads=kv_reads)
    return Hardware(spec, HardwareParams.from_natural(values, dtype=dtype))
