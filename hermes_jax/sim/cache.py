"""JAX's persistent compilation cache for the command line: a second run of a scenario of the same
shape class (``shapes``) loads the compiled programs from disk instead of compiling them again.

Where: ``$HERMES_JAX_CACHE`` if set (``off`` disables it), else ``~/.cache/hermes_jax/xla``. The
library leaves JAX's configuration alone unless ``enable_compilation_cache`` is called.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE = Path.home() / ".cache" / "hermes_jax" / "xla"


def enable_compilation_cache(path: str | Path | None = None) -> Path | None:
    """Turn the persistent cache on (every compiled program is kept); returns its directory, or None
    when ``$HERMES_JAX_CACHE`` is ``off`` or the directory cannot be created."""
    setting = os.environ.get("HERMES_JAX_CACHE", "")
    if setting.lower() in ("off", "0", "false", "none"):
        return None
    directory = Path(path or setting or DEFAULT_CACHE).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from . import programs

    programs.keep_in(directory / "programs")
    return directory
