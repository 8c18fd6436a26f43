"""Exact, differentiable departure times of the two kinds of shared resource a pipeline stage uses.

Both take the times jobs reach the resource (any order) and return when each starts and finishes.
Both are exact (no time step): the tests compare them with an event-driven heap simulation
(``pipeline.reference``) and with M/M/1, M/D/1 and M/M/c results.

* ``batch_servers``: ``servers`` identical servers, FCFS. A server that becomes free takes every
  waiting job up to ``max_batch`` as one batch (a job arriving exactly when a batch starts joins it);
  an idle server starts a job the moment it arrives. ``max_batch = 1`` is the FCFS G/G/c queue.
  The batch's service time is ``service(count, size)`` of its job count and summed job size (e.g.
  query tokens), so it can come from the roofline kernels. Computed by a scan over jobs in arrival
  order (Kiefer-Wolfowitz recursion with batches): O(n c).
* ``shared``: processor sharing over ``capacity`` units: n jobs present each progress at rate
  ``min(1, capacity / n)`` (a link's bandwidth split among transfers; cores among searches).
  ``work`` is the seconds a job takes alone. Computed by a scan over events (each arrival and each
  departure), O(n) per event, so O(n^2): fine for stages of up to ~10^4 jobs.

Times are differentiable almost everywhere in the releases, work and service parameters (they are
built from max, min, sums and sorts); the gradient is the pathwise one.

``table_servers`` and ``shared_padded`` are what a pipeline run calls: compiled once per (server
bucket, batch, padded job count), the server count an argument (a design over CPU cores reuses
one program), with the jobs padded to ``sim.shapes.bucket`` sizes by jobs that arrive
after every real one (``LATE``), so they change no real job's times. Called eagerly, each call of
the plain functions traced and compiled its scan again (0.5 s of a 1.1 s rag_kv run).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

from ..sim.shapes import bucket

NEVER = 1e30   # "before anything" / "after everything": finite, so no inf - inf in gradients
LATE = 1e20    # a padding job's release: after every real event, far below NEVER


def batch_servers(release, size, service: Callable, servers, max_batch: int = 1, slots: int | None = None):
    """(start, finish) of each job; ``release`` and ``size`` have shape (n,). ``service(count,
    size_sum)`` gives a batch's seconds and must accept JAX scalars. ``slots`` (static, at least
    ``servers``): the size of the server pool's array, so ``servers`` may be traced (the extra
    slots are busy forever)."""
    release = jnp.asarray(release)
    n = release.shape[0]
    if n == 0:
        return release, release
    order = jnp.argsort(release, stable=True)
    a, z = release[order], jnp.asarray(size, release.dtype)[order]
    dtype = release.dtype

    def step(carry, job):
        free, start, count, total, batch = carry
        t, s = job
        join = (t <= start) & (count < max_batch)
        # the open batch closes: its server is free again at start + service; the earliest free
        # server starts the next batch when this job is there
        done_at = start + service(count, total)
        pool = jnp.sort(jnp.concatenate([free, done_at[None]]))
        new_start = jnp.maximum(t, pool[0])
        free = jnp.where(join, free, pool[1:])
        start = jnp.where(join, start, new_start)
        count = jnp.where(join, count + 1, 1)
        total = jnp.where(join, total + s, s)
        batch = jnp.where(join, batch, batch + 1)
        return (free, start, count, total, batch), (start, count, total, batch)

    slots = servers if slots is None else slots
    free = jnp.where(jnp.arange(slots - 1) < servers - 1, -NEVER, NEVER).astype(dtype)
    init = (free, jnp.asarray(-NEVER, dtype), jnp.asarray(max_batch, jnp.int32),
            jnp.zeros((), dtype), jnp.asarray(-1, jnp.int32))
    _, (start, count, total, batch) = jax.lax.scan(step, init, (a, z))
    # a batch's members are contiguous in arrival order: its last member carries its final size
    last = jnp.searchsorted(batch, batch, side="right") - 1
    finish = start + jax.vmap(service)(count[last], total[last])
    inverse = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return start[inverse], finish[inverse]


def shared(release, work, capacity):
    """Finish time of each job under processor sharing of ``capacity`` units (rate min(1, c / n))."""
    release, work = jnp.asarray(release), jnp.asarray(work)
    n = release.shape[0]
    if n == 0:
        return release
    dtype = release.dtype
    capacity = jnp.asarray(capacity, dtype)
    inf = jnp.asarray(NEVER, dtype)

    def step(carry, _):
        t, left, finish, done = carry
        arrived = release <= t
        active = arrived & ~done
        present = active.sum()
        rate = jnp.minimum(1.0, capacity / jnp.maximum(present, 1))
        smallest = jnp.min(jnp.where(active, left, inf))
        to_departure = jnp.where(present > 0, smallest / rate, inf)
        to_arrival = jnp.min(jnp.where(arrived, inf, release - t))
        dt = jnp.minimum(to_departure, to_arrival)
        dt = jnp.where(dt >= inf, 0.0, dt)                      # nothing left to happen
        leaving = active & (to_departure <= to_arrival) & (left <= smallest * (1 + 1e-6) + 1e-15)
        t = t + dt
        left = jnp.where(leaving, 0.0, jnp.where(active, left - rate * dt, left))
        finish = jnp.where(leaving, t, finish)
        return (t, left, finish, done | leaving), None

    init = (jnp.min(release), work, jnp.full((n,), inf), jnp.zeros(n, bool))
    (_, _, finish, _), _ = jax.lax.scan(step, init, None, length=2 * n)
    return finish


@partial(jax.jit, static_argnames=("slots", "max_batch"))
def _table_servers(release, size, table, servers, slots: int, max_batch: int):
    return batch_servers(release, size, lambda count, total: table[count - 1] + total, servers, max_batch, slots)


def table_servers(release, size, table, servers: int, max_batch: int = 1):
    """``batch_servers`` with the service ``table[count - 1] + size_sum`` (a batch of k jobs takes
    table[k - 1] seconds plus its jobs' own seconds): compiled once per shape class (see the module
    docstring). ``table`` has shape (max_batch,)."""
    release = jnp.asarray(release)
    n = release.shape[0]
    if n == 0:
        return release, release
    start, finish = _table_servers(*_padded(release, size), jnp.asarray(table, release.dtype),
                                   jnp.asarray(int(servers), jnp.int32), slots=bucket(int(servers), smallest=4),
                                   max_batch=int(max_batch))
    return start[:n], finish[:n]


_shared = jax.jit(shared)


def shared_padded(release, work, capacity):
    """``shared`` compiled once per shape class (see the module docstring)."""
    release = jnp.asarray(release)
    n = release.shape[0]
    if n == 0:
        return release
    return _shared(*_padded(release, work), jnp.asarray(capacity, release.dtype))[:n]


def _padded(release, per_job):
    """Release times and a per-job quantity (a scalar or shape (n,)) padded to the bucket by jobs
    released at ``LATE`` with nothing to do."""
    n = release.shape[0]
    pad = bucket(n) - n
    per_job = jnp.broadcast_to(jnp.asarray(per_job, release.dtype), (n,))
    return (jnp.concatenate([release, jnp.full((pad,), LATE, release.dtype)]),
            jnp.concatenate([per_job, jnp.zeros((pad,), release.dtype)]))
