"""One exception type for every bad input, so callers and the CLI can report it cleanly."""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid user input: the message names the file, the entry and the field at fault."""


def where(path: str | None, entry: str | None = None, field: str | None = None, line: int | None = None) -> str:
    """Human-readable location prefix such as ``devices.toml:12 [h100-sxm] hbm_bandwidth``."""
    parts = []
    if path:
        parts.append(f"{path}:{line}" if line else str(path))
    if entry:
        parts.append(f"[{entry}]")
    if field:
        parts.append(field)
    return " ".join(parts) if parts else "<input>"
