"""Whole compiled programs kept on disk, so a warm one-shot run skips tracing and lowering too.

JAX's persistent compilation cache keys a program by its lowered module: a hit still traces the
Python function and lowers it (about half a second for the simulator's segment program on a
2-core machine) before it loads the executable. Here a program is keyed by everything that decides
that module before tracing: the function, the repr of its static arguments, the tree, shapes and
dtypes of its other arguments, the source of hermes_jax, JAX's version, backend and x64 flag, and
``XLA_FLAGS``.
A hit loads the serialized executable (``jax.experimental.serialize_executable``) in about 0.1 s.

Assumption: a static argument's repr names all of its content (true of the frozen dataclasses and
NamedTuples used as static configuration; a repr holding an object address or a summarised array
is never stored).
Off until ``keep_in`` names a directory (``cache.enable_compilation_cache`` does, for the command
line); a stored program that fails to load is removed and compiled again, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
from pathlib import Path

_directory: Path | None = None
_loaded: dict[str, object] = {}   # key -> compiled program, this process
_source: str | None = None
stats = {"loaded": 0, "stored": 0, "rejected": 0}


def keep_in(directory: str | Path | None) -> None:
    """Store and look up programs in ``directory`` (None: stop)."""
    global _directory
    _directory = None if directory is None else Path(directory)
    if _directory is not None:
        _directory.mkdir(parents=True, exist_ok=True)


def forget() -> None:
    """Drop the programs this process holds (``mappings.make_room`` releases their memory)."""
    _loaded.clear()


def source_digest() -> str:
    """Digest of every Python file of the package: any edit makes new keys."""
    global _source
    if _source is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _source = h.hexdigest()
    return _source


def _key(fn, static: tuple, dynamic: tuple) -> str | None:
    import jax

    text = repr(static)
    if " at 0x" in text or "..." in text:   # an object address, or an array repr NumPy summarised
        return None
    leaves, tree = jax.tree_util.tree_flatten(dynamic)
    avals = []
    for leaf in leaves:
        aval = jax.typeof(leaf)
        avals.append(f"{aval.str_short()}:{getattr(aval, 'weak_type', False)}")
    device = jax.devices()[0]
    parts = (getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn)), text, str(tree), ",".join(avals),
             source_digest(), jax.__version__, getattr(jax.lib, "__version__", ""), device.platform,
             getattr(device, "device_kind", ""), str(jax.config.jax_enable_x64), sys.version.split()[0],
             os.environ.get("XLA_FLAGS", ""))   # compiler options travel with the executable
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def call(fn, static_argnums: tuple[int, ...], *args):
    """``fn(*args)`` for a ``jax.jit`` function with ``static_argnums``, through a stored program
    when there is one. Inside a trace, or with no directory set, it is simply ``fn(*args)``."""
    import jax

    static = tuple(args[i] for i in static_argnums)
    dynamic = tuple(a for i, a in enumerate(args) if i not in static_argnums)
    if _directory is None or any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(dynamic)):
        return fn(*args)
    key = _key(fn, static, dynamic)
    if key is None:
        return fn(*args)
    program = _loaded.get(key)
    if program is not None:
        return program(*dynamic)
    program = _load(key)
    if program is None:
        program = _compile_fresh(fn, args)
        _store(key, program)
        _loaded[key] = program
        return program(*dynamic)
    try:   # a program read from disk runs once to the end first: a broken one fails at run time
        out = jax.block_until_ready(program(*dynamic))
    except jax.errors.JaxRuntimeError:   # stored, loaded, but broken: never trusted again
        stats["rejected"] += 1
        (_directory / f"{key}.program").unlink(missing_ok=True)
        program = _compile_fresh(fn, args)
        out = program(*dynamic)
    _loaded[key] = program
    return out


def _compile_fresh(fn, args):
    """Compile ``fn`` without JAX's persistent cache. An executable JAX loaded from its own cache and
    serialized again lacks kernels on CPU: loaded in the next process it failed with "NOT_FOUND:
    Function wrapped_broadcast.1 not found" (a new hermes_jax source changes this store's keys, not
    JAX's, so every upgrade hit it). A compiler option at its default value is part of JAX's key,
    so the lookup misses; with the minimum compile time for a cache write raised meanwhile, JAX
    never writes an entry under that key that a later lookup could hit."""
    import jax

    floor = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
    try:
        return fn.lower(*args).compile(compiler_options={"xla_embed_ir_in_executable": False})
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", floor)

def _load(key: str):
    from jax.experimental.serialize_executable import deserialize_and_load

    path = _directory / f"{key}.program"
    if not path.exists():
        return None
    try:
        program = deserialize_and_load(*pickle.loads(path.read_bytes()))
    except Exception:   # written by another JAX, truncated, or unreadable: compile again
        stats["rejected"] += 1
        path.unlink(missing_ok=True)
        return None
    stats["loaded"] += 1
    return program


def _store(key: str, program) -> None:
    from jax.experimental.serialize_executable import serialize

    tmp = None
    try:
        data = pickle.dumps(serialize(program))
        fd, tmp = tempfile.mkstemp(dir=_directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, _directory / f"{key}.program")   # atomic: a reader never sees half a file
    except Exception:   # a full disk or a program that cannot be serialized costs a compile next time
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        return
    stats["stored"] += 1
