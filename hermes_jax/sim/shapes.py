"""Shape classes: pad requests and steps to buckets so runs of similar size share one compiled function.

XLA compiles one program per array shape and static configuration. Padding the request arrays to
64, 96, 128, 192, 256, ... (at most 1.5x) and the steps to the same ladder means two seeds, two
rates or two horizons of similar size reuse the compiled scan, within a process (JAX's jit cache) and
across processes (JAX's persistent compilation cache, ``hermes_jax.sim.cache``). Padded requests
never arrive; padded steps run with no decision allowed (``engine.step(active=False)``), so neither
changes a result.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .state import Requests


def bucket(n: int, smallest: int = 64) -> int:
    """The next of smallest, 1.5x, 2x, 3x, 4x, ... (alternately x1.5 and x4/3 from a power of two)."""
    size = smallest
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def request_bucket(n: int) -> int:
    """Padded request count (at most 1.5x the requests)."""
    return bucket(n)


def pad_requests(req: Requests, size: int) -> Requests:
    """``req`` with ``size - N`` requests appended that never arrive (step past every horizon, not
    admissible); ``step_first`` is unchanged, so routing never reaches them."""
    extra = size - req.input_tokens.shape[0]
    if extra <= 0:
        return req
    fill = {"arrival_step": 2**30, "arrival_off": 0.0, "input_tokens": 1, "output_tokens": 1, "cached": 0,
            "admissible": False, "priority": 0, "next_request": -1, "think": 0.0, "user": -1}
    # on the host: eager jnp ops on these per-run shapes would each compile a small program
    return req._replace(**{k: jnp.asarray(np.concatenate([np.asarray(getattr(req, k)),
                                                          np.full(extra, v, getattr(req, k).dtype)]))
                           for k, v in fill.items()})


def pad_steps(req: Requests, steps: int) -> Requests:
    """``req`` whose ``step_first`` covers ``steps`` steps: the added steps have no arrivals."""
    first = req.step_first
    extra = steps + 1 - first.shape[0]
    if extra <= 0:
        return req
    first = np.asarray(first)
    return req._replace(step_first=jnp.asarray(np.concatenate([first, np.full(extra, first[-1], first.dtype)])))
