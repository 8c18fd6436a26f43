"""Reading data files (TOML, JSON Lines) with errors that point at the file and line."""

from __future__ import annotations

import re
from pathlib import Path

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import ConfigError


def read_text(path: str | Path) -> str:
    """The file's text; a file that cannot be read becomes a ConfigError naming it."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file ({exc.strerror})") from None


def json_lines(path: str | Path, text: str | None = None):
    """(line number, parsed object) of every non-blank line of a JSON Lines file (``text`` if
    already read); a line that is not JSON becomes a ConfigError naming file and line."""
    import json
    for number, line in enumerate((read_text(path) if text is None else text).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: invalid JSON ({exc.msg})") from None


def load_toml(path: str | Path) -> dict:
    """Parse ``path``; a syntax error becomes a ConfigError naming the file and line."""
    path = Path(path)
    text = read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def entry_line(path: str | Path, entry: str) -> int | None:
    """Line number of the ``[entry]`` table header in a TOML file, for error messages."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    # ``[name]``, ``["name"]`` or, in user files, ``[kind.name]``
    pattern = re.compile(r"^\s*\[\s*(?:[\w-]+\.)?\"?" + re.escape(entry) + r"\"?\s*\]")
    for number, line in enumerate(lines, start=1):
        if pattern.match(line):
            return number
    return None


def field_line(path: str | Path, entry: str, field: str) -> int | None:
    """Line of ``field = ...`` inside table ``[entry]`` (dotted keys allowed), else the header line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    start = entry_line(path, entry)
    if start is None:
        return None
    key = re.compile(r"^\s*\"?" + re.escape(field) + r"\"?\s*=")
    for number in range(start, len(lines)):
        line = lines[number]
        if line.lstrip().startswith("["):
            break
        if key.match(line):
            return number + 1
    return start
