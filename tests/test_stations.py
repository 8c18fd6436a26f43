"""Shared resources of pipeline stages: exact against an event-driven heap simulation, against
queueing theory (M/M/1, M/D/1, M/M/c, processor sharing), and differentiable."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hermes_jax.pipeline.reference import batch_servers_events, shared_events
from hermes_jax.pipeline.stations import batch_servers, shared


def affine(base, per_item):
    return lambda count, total: base + per_item * total


def jobs(n, rate, seed, ties=False):
    rng = np.random.default_rng(seed)
    release = np.cumsum(rng.exponential(1 / rate, n))
    if ties:   # batch arrivals at identical instants
        release = np.round(release, 1)
    return rng.permutation(release), rng.uniform(1, 4, n)


_batch_jit = {}


def run_batch(release, size, servers, max_batch, base=0.02, per_item=0.01):
    key = (servers, max_batch, len(release))
    if key not in _batch_jit:
        _batch_jit[key] = jax.jit(lambda r, z, b, p: batch_servers(r, z, affine(b, p), servers, max_batch))
    return [np.asarray(x) for x in _batch_jit[key](jnp.asarray(release), jnp.asarray(size), base, per_item)]


@pytest.mark.parametrize("servers,max_batch,ties", [(1, 1, False), (3, 1, False), (1, 8, False), (2, 4, True)])
def test_batch_servers_match_event_simulation(servers, max_batch, ties):
    release, size = jobs(300, rate=40.0 * servers, seed=servers * 10 + max_batch, ties=ties)
    start, finish = run_batch(release, size, servers, max_batch)
    ref_start, ref_finish = batch_servers_events(release, size, affine(0.02, 0.01), servers, max_batch)
    np.testing.assert_allclose(start, ref_start, atol=1e-9)
    np.testing.assert_allclose(finish, ref_finish, atol=1e-9)
    assert (start >= release - 1e-12).all()
    # never more than `servers` batches at once
    edges = np.unique(np.round(start, 12))
    busy = max(len(np.unique(np.round(start[(start <= t) & (finish > t)], 12))) for t in edges)
    assert busy <= servers


@pytest.mark.parametrize("capacity,ties", [(1.0, False), (4.0, False), (2.0, True)])
def test_processor_sharing_matches_event_simulation(capacity, ties):
    release, size = jobs(200, rate=30.0 * capacity, seed=int(capacity), ties=ties)
    work = 0.01 * size
    finish = np.asarray(jax.jit(shared)(jnp.asarray(release), jnp.asarray(work), capacity))
    np.testing.assert_allclose(finish, shared_events(release, work, capacity), atol=1e-9)
    # a job alone gets rate 1 at most, so it can never beat its work
    assert (finish - release >= work - 1e-12).all()


def test_fcfs_mean_waits_match_queueing_theory():
    rng = np.random.default_rng(0)
    n, lam = 100_000, 8.0
    release = np.cumsum(rng.exponential(1 / lam, n))
    # M/D/1 at rho = 0.8: Pollaczek-Khinchine Wq = rho / (2 mu (1 - rho))
    mu = 10.0
    start, _ = run_batch(release, np.ones(n), 1, 1, base=1 / mu, per_item=0.0)
    rho = lam / mu
    assert np.mean(start - release) == pytest.approx(rho / (2 * mu * (1 - rho)), rel=0.05)
    # M/M/c (c = 3, rho = 0.7): Erlang C (measured 0.0-0.7% off over seeds 0-3 at 2e5 jobs)
    n = 200_000
    release = np.cumsum(rng.exponential(1 / lam, n))
    c, mu = 3, lam / (3 * 0.7)
    service = rng.exponential(1 / mu, n)
    start, _ = run_batch(release, service, c, 1, base=0.0, per_item=1.0)
    a = lam / mu
    tail = a**c / math.factorial(c) / (1 - a / c)
    erlang_c = tail / (sum(a**k / math.factorial(k) for k in range(c)) + tail)
    assert np.mean(start - release) == pytest.approx(erlang_c / (c * mu - lam), rel=0.03)


def test_processor_sharing_mean_sojourn_is_mm1():
    # M/M/1-PS has the M/M/1 mean sojourn 1 / (mu - lambda), for any service distribution
    rng = np.random.default_rng(1)
    n, lam, mu = 6000, 6.0, 10.0
    release = np.cumsum(rng.exponential(1 / lam, n))
    work = rng.exponential(1 / mu, n)
    finish = np.asarray(jax.jit(shared)(jnp.asarray(release), jnp.asarray(work), 1.0))
    assert np.mean(finish - release) == pytest.approx(1 / (mu - lam), rel=0.08)


def test_station_times_are_differentiable():
    release, size = jobs(40, rate=60.0, seed=3)
    release, size = jnp.asarray(release), jnp.asarray(size)

    def mean_finish(log_per_item):
        _, finish = batch_servers(release, size, affine(0.02, jnp.exp(log_per_item)), 2, 4)
        return finish.mean()

    def mean_shared(log_scale):
        return shared(release, 0.01 * size * jnp.exp(log_scale), 1.0).mean()

    for f in (mean_finish, mean_shared):
        x = jnp.asarray(np.log(0.01))
        g = float(jax.grad(f)(x))
        h = 1e-6
        fd = float((f(x + h) - f(x - h)) / (2 * h))
        assert np.isfinite(g) and g > 0
        assert g == pytest.approx(fd, rel=1e-4)


def test_padded_stations_equal_plain_ones_and_compile_once_per_bucket():
    """What a pipeline run calls: padding jobs arrive after every real one and change nothing; a
    second call of another size and server count in the same buckets (another seed, another design
    of a CPU pool) compiles nothing."""
    from hermes_jax.pipeline.stations import _shared, _table_servers, shared_padded, table_servers
    table = jnp.asarray([0.02, 0.025, 0.03, 0.034])
    for n, servers in ((70, 2), (90, 3)):   # one job bucket (96), one server bucket (4)
        release, size = jobs(n, rate=60.0, seed=n)
        start, finish = table_servers(release, 0.01 * size, table, servers, 4)
        ref_start, ref_finish = batch_servers(jnp.asarray(release), jnp.asarray(0.01 * size),
                                              lambda k, total: table[k - 1] + total, servers, 4)
        np.testing.assert_allclose(start, ref_start, rtol=1e-12)
        np.testing.assert_allclose(finish, ref_finish, rtol=1e-12)
        np.testing.assert_allclose(shared_padded(release, 0.01 * size, 2.0),
                                   shared(jnp.asarray(release), jnp.asarray(0.01 * size), 2.0), rtol=1e-12)
        if n == 70:
            sizes = (_table_servers._cache_size(), _shared._cache_size())
    assert (_table_servers._cache_size(), _shared._cache_size()) == sizes
