"""Serving-stack profiles: what a piece of serving software reaches on a device.

A hardware entry holds datasheet physics (peaks, bandwidths, capacities). A stack profile holds what
one serving stack (vLLM, TensorRT-LLM, ...) reaches on it: the efficiency and overhead fields of
``HardwareParams`` (``hardware.params.EFFICIENCY_FIELDS`` and ``OVERHEAD_FIELDS``, plus the link
latencies a collective library sees), how it sizes its KV cache, and what it does with a batch that
does not fit. Values are keyed by (stack, device). Lookup for a device the stack has no fit for
(``StackProfile.values_for``): a device with the same die (the one its hardware entry's
``efficiency_from`` names, e.g. gh200 -> h100-sxm, then those naming it or sharing it, e.g.
a100-80gb -> a100-40gb, h200 -> h100-sxm), then the fit the stack names for the device's software
platform (``fallback = { cuda = "h100-sxm" }``: a B200 or a user's L40S takes vLLM's H100 values),
then the stack's ``[STACK.devices.default]`` table; past that (``stacks.catalog.device_values``,
which knows the other stacks) another shipped stack's fit on the device, then the hardware catalog's
own values. The returned provenance says which one was used.

Why a platform fallback: what a stack reaches is mostly software (kernels, host overheads, the
scheduler), so a fit on another die of the same platform is much closer than the catalog's generic
values. Measured on devices held out by die (``calibration/device_transfer.py``): vLLM and
TensorRT-LLM on A100-40GB from their H100 fits 16-20% MAPE end to end against 86-114% with catalog
values; on H100 from their A100 fits 6-13% against 73-122%. Across ROCm dies it is not better (vLLM
on MI250 from its MI300X fit 136% against the catalog's 25%), so no ROCm fallback is declared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ConfigError
from ..hardware.params import EFFICIENCY_FIELDS, FIELDS, OVERHEAD_FIELDS
from ..kernels.kv_reads import KV_READS, GroupedKVReads
from ..tomlio import field_line, load_toml

STACK_FIELDS = EFFICIENCY_FIELDS + OVERHEAD_FIELDS + ("intra_link_latency", "inter_link_latency")
"""HardwareParams fields a stack profile may set: what software reaches, never datasheet physics."""
OVERFLOW = ("waves", "preempt", "refuse")
"""What a stack does with a static batch whose KV cache does not fit: run it in waves of what fits
at its final length (TensorRT-LLM's guaranteed-no-evict scheduler: admit what fits, the rest after),
admit by current length and preempt by recomputation when blocks run out (vLLM's scheduler;
``stacks.preemption``; DeepSpeed-MII's FastGen also allocates blocks as tokens come, and its overflowing
runs follow that schedule, not waves: calibration/README.md), or refuse it."""


@dataclass(frozen=True)
class KVSizing:
    """How a stack sizes its KV cache on one device (vLLM's rule).

    free = gpu_memory_utilization * capacity - weights - activation peak of a profiling pass over
    ``profile_tokens`` tokens - ``non_torch_bytes``; it is cut into blocks of ``block_size`` tokens."""

    gpu_memory_utilization: float = 0.9   # share of device memory the stack may use
    profile_tokens: int = 8192            # tokens of the profiling forward pass (max_num_batched_tokens)
    profile_sequences: int = 256          # sequences of that pass (max_num_seqs): logits rows
    non_torch_bytes: float = 1.0e9        # B, CUDA context, NCCL buffers, CUDA graphs
    block_size: int = 16                  # tokens per KV block


@dataclass(frozen=True)
class StackProfile:
    """One serving stack: name, version, KV rule, overflow policy and per-device values."""

    name: str
    version: str = ""
    description: str = ""
    overflow: str = "waves"
    kv: KVSizing = field(default_factory=KVSizing)
    devices: Mapping[str, Mapping[str, object]] = field(default_factory=dict)     # device -> field -> value
    provenance: Mapping[str, Mapping[str, str]] = field(default_factory=dict)    # device -> key -> text
    origin: str = ""                       # file it came from
    # platform (a device's ``platform``: cuda, rocm, ...) -> kernels.kv_reads rule name of its decode
    # attention; a platform not named reads each KV head once (rule "grouped").
    decode_attention: Mapping[str, str] = field(default_factory=dict)
    # platform -> device whose fit a device of that platform takes when neither it nor its die has one
    fallback: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.overflow not in OVERFLOW:
            raise ConfigError(f"stack {self.name}: overflow {self.overflow!r} unknown; allowed: {', '.join(OVERFLOW)}")
        for platform, rule in self.decode_attention.items():
            if rule not in KV_READS:
                raise ConfigError(f"stack {self.name}: decode_attention.{platform} = {rule!r} unknown; allowed: "
                                  f"{', '.join(KV_READS)}")
        for platform, device in self.fallback.items():
            if device not in self.devices:
                raise ConfigError(f"stack {self.name}: fallback.{platform} = {device!r} has no fitted values in this "
                                  f"stack (fitted: {', '.join(self.devices) or 'none'})")

    def kv_reads_for(self, platform: str):
        """The ``kernels.kv_reads`` rule this stack's decode attention follows on ``platform``."""
        return KV_READS[self.decode_attention[platform]] if platform in self.decode_attention else GroupedKVReads()

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}".strip()

    def values_for(self, device: str, same_die: str | Sequence[str] | None = None,
                   platform: str = "") -> tuple[dict, str, bool]:
        """(values, provenance text, fitted on this device?) for ``device``; ``same_die`` names the
        devices with the same chip, in order of preference; ``platform`` is the device's software
        platform (its hardware entry's ``platform``); see the module doc."""
        if device in self.devices:
            return dict(self.devices[device]), self._describe(device), True
        for other in ([same_die] if isinstance(same_die, str) else list(same_die or [])):
            if other in self.devices:
                return (dict(self.devices[other]),
                        f"{self.label} fitted on {other} (no fit for {device}; same die)", False)
        other = self.fallback.get(platform)
        if other in self.devices:
            return (dict(self.devices[other]), f"{self.label} fitted on {other} (no fit for {device} or its die; "
                    f"the stack's {platform} fallback, measured on held-out dies in "
                    "calibration/results/device_transfer.md)", False)
        if "default" in self.devices:
            return dict(self.devices["default"]), f"{self.label} default values (no fit for {device})", False
        return {}, f"{self.label} has no values for {device}: hardware catalog values", False

    def _describe(self, device: str) -> str:
        prov = self.provenance.get(device, {})
        return f"{self.label} on {device}: {prov.get('summary', 'fitted')}"


def _check_values(values: dict, where: str) -> dict:
    out = {}
    for key, value in values.items():
        if key not in STACK_FIELDS:
            hint = " (datasheet physics belongs in the hardware entry)" if key in FIELDS else ""
            raise ConfigError(f"{where} {key}: not a stack field{hint}; allowed: {', '.join(STACK_FIELDS)}")
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not item >= 0:
                raise ConfigError(f"{where} {key}: expected a number >= 0, got {value!r}")
        out[key] = [float(v) for v in value] if isinstance(value, list) else float(value)
    return out


def profiles_from_toml(path: str | Path) -> dict[str, StackProfile]:
    """Stacks defined in a TOML file: ``[NAME]`` with version, description, overflow, ``kv = {...}``
    and ``[NAME.devices.DEVICE]`` tables of field values (plus an optional ``provenance`` table)."""
    path = Path(path)
    data = load_toml(path)
    out = {}
    for name, entry in data.items():
        line = field_line(path, name, name) or "?"
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}:{line} [{name}]: expected a stack table")
        unknown = set(entry) - {"version", "description", "overflow", "kv", "devices", "decode_attention", "fallback"}
        if unknown:
            raise ConfigError(f"{path}:{line} [{name}]: unknown key(s) {sorted(unknown)}; allowed: version, "
                              "description, overflow, kv, decode_attention, fallback, devices")
        fallback = entry.get("fallback", {})
        if not isinstance(fallback, dict) or not all(isinstance(v, str) for v in fallback.values()):
            raise ConfigError(f"{path}:{field_line(path, name, 'fallback') or line} [{name}] fallback: expected a "
                              'table of platform = device name, e.g. { cuda = "h100-sxm" }')
        attention = entry.get("decode_attention", {})
        if not isinstance(attention, dict) or not all(isinstance(v, str) for v in attention.values()):
            raise ConfigError(f"{path}:{field_line(path, name, 'decode_attention') or line} [{name}] decode_attention: "
                              f"expected a table of platform = rule name, e.g. {{ cuda = \"paged-sliding-window\" }}")
        kv_raw = entry.get("kv", {})
        known_kv = set(KVSizing.__dataclass_fields__)
        if set(kv_raw) - known_kv:
            raise ConfigError(f"{path}:{field_line(path, name, 'kv') or line} [{name}] kv: unknown key(s) "
                              f"{sorted(set(kv_raw) - known_kv)}; allowed: {', '.join(sorted(known_kv))}")
        for k, v in kv_raw.items():  # counts must be whole numbers: never truncate one silently
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(getattr(KVSizing(), k), int)
                                                                           and v != int(v)):
                raise ConfigError(f"{path}:{field_line(path, name, 'kv') or line} [{name}] kv.{k}: expected a "
                                  f"{'whole ' if isinstance(getattr(KVSizing(), k), int) else ''}number, got {v!r}")
        kv = KVSizing(**{k: type(getattr(KVSizing(), k))(v) for k, v in kv_raw.items()})
        if not 0 < kv.gpu_memory_utilization <= 1 or kv.block_size < 1 or kv.profile_tokens < 0:
            raise ConfigError(f"{path}:{line} [{name}] kv: gpu_memory_utilization in (0, 1], block_size >= 1, "
                              f"profile_tokens >= 0 required, got {kv}")
        devices, provenance = {}, {}
        for device, table in entry.get("devices", {}).items():
            table = dict(table)
            provenance[device] = {k: str(v) for k, v in table.pop("provenance", {}).items()}
            devices[device] = _check_values(table, f"{path}:{field_line(path, device, device) or line} "
                                                   f"[{name}.devices.{device}]")
        try:
            out[name] = StackProfile(name=name, version=str(entry.get("version", "")),
                                     description=str(entry.get("description", "")),
                                     overflow=str(entry.get("overflow", "waves")), kv=kv, devices=devices,
                                     provenance=provenance, origin=str(path), decode_attention=dict(attention),
                                     fallback=dict(fallback))
        except ConfigError as exc:
            raise ConfigError(f"{path}:{line} {exc}") from None
    return out


def _toml_scalar(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.6g}"


def profiles_to_toml(profiles: Mapping[str, StackProfile], header: str = "") -> str:
    """The TOML text ``profiles_from_toml`` reads back: headers, KV rules, device values, provenance."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()] + ([""] if header else [])
    for name, p in profiles.items():
        kv = ", ".join(f"{k} = {_toml_scalar(getattr(p.kv, k))}" for k in KVSizing.__dataclass_fields__)
        lines += [f'["{name}"]', f"version = {_toml_scalar(p.version)}", f"description = {_toml_scalar(p.description)}",
                  f"overflow = {_toml_scalar(p.overflow)}", f"kv = {{ {kv} }}"]
        if p.decode_attention:
            rules = ", ".join(f"{k} = {_toml_scalar(v)}" for k, v in p.decode_attention.items())
            lines.append(f"decode_attention = {{ {rules} }}")
        if p.fallback:
            lines.append("fallback = { " + ", ".join(f"{k} = {_toml_scalar(v)}" for k, v in p.fallback.items()) + " }")
        lines.append("")
        for device, values in p.devices.items():
            lines.append(f'["{name}".devices."{device}"]')
            lines += [f"{k} = {_toml_scalar(v)}" for k, v in values.items()]
            prov = p.provenance.get(device, {})
            if prov:
                lines.append(f'["{name}".devices."{device}".provenance]')
                lines += [f"{k} = {_toml_scalar(v)}" for k, v in prov.items()]
            lines.append("")
    return "\n".join(lines)
