"""Room for more compiled programs in one process.

XLA's CPU backend maps the code and data of every compiled kernel separately: one static-batch
estimate of one engine configuration holds about 300 memory mappings, a simulator step far more.
Linux caps a process at ``vm.max_map_count`` mappings (65,530 by default), so a process that
compiles a few hundred configurations (an estimate grid over many models, devices and TP degrees;
a notebook's what-if loop) ended in ``LLVM ERROR: Unable to allocate section memory``, losing
everything it had not written. ``make_room`` clears JAX's compilation caches once the process holds
more than ``share`` of its limit (three quarters by default), which releases those mappings; a
configuration used again compiles again (a cost, never a different answer). Host-level entry
points (``static_batch`` called outside a trace, each engine group a simulation builds) call it
before compiling.
Where ``/proc`` is not there (not Linux) it does nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

_MAPS = Path("/proc/self/maps")
_LIMIT = Path("/proc/sys/vm/max_map_count")
DEFAULT_SHARE = 0.75  # of the limit: several more simulator compiles (thousands of mappings each) still fit
CHECK_EVERY_S = 1.0   # /proc/self/maps is read at most this often: a compile takes longer than that
cleared = 0           # times make_room has cleared the caches in this process
_last_check = -float("inf")


def mapping_count() -> int | None:
    """Memory mappings this process holds (None where /proc is not available)."""
    try:
        with _MAPS.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def mapping_limit() -> int | None:
    """The kernel's per-process cap on mappings (None where unknown)."""
    try:
        return int(_LIMIT.read_text().strip())
    except (OSError, ValueError):
        return None


def make_room(share: float | None = None, quiet: bool = False, inputs=None) -> bool:
    """Clear JAX's compilation caches if this process holds more than ``share`` (default
    ``DEFAULT_SHARE``, read at the call, and then looked at no more than every ``CHECK_EVERY_S``)
    of its mapping limit; returns whether it did. Call it only between computations, never while
    tracing: with ``inputs`` (a pytree of the caller's arguments) nothing is done while any of them
    is being traced."""
    global cleared, _last_check
    if share is None:   # the default call, made on hot paths (static_batch): throttled
        now = time.monotonic()
        if now - _last_check < CHECK_EVERY_S:
            return False
        _last_check, share = now, DEFAULT_SHARE
    if inputs is not None:
        import jax

        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(inputs)):
            return False
    count, limit = mapping_count(), mapping_limit()
    if count is None or limit is None or count <= share * limit:
        return False
    import gc

    import jax

    jax.clear_caches()
    programs = sys.modules.get("hermes_jax.sim.programs")
    if programs is not None:   # programs loaded from disk are held there, not in JAX's caches
        programs.forget()
    gc.collect()
    cleared += 1
    if not quiet and cleared == 1:
        print(f"hermes_jax: {count:,} memory mappings of the {limit:,} this process may hold (vm.max_map_count) are "
              "taken by compiled programs; cleared JAX's compilation caches (configurations used again compile "
              "again)", file=sys.stderr)
    return True
