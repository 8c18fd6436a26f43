"""Analytic queueing limits: with one slot per engine, Poisson arrivals and fixed lengths, the
simulated engine is an M/D/1 queue, so the mean wait must match Pollaczek-Khinchine,
Wq = rho D / (2 (1 - rho)). The sample mean of a loaded queue converges slowly and its waits are
correlated, so the test states its own precision: the standard error of the mean from batch means
(BATCHES consecutive blocks of arrivals, each far longer than the queue's relaxation time), and
asks the mean to sit within Z_LIMIT of them and that error to be small. (Before, 400k requests
and fixed 2% / 3% bands; at this seed the bands are now about 3% / 8% of the wait: the test is
cheaper and its bound follows the run's own noise rather than a guess.) Both loads have the same
number of requests, so they share one compiled scan. The simulator's waits follow the Lindley
recursion request by request (test_simulator.py); this is the check of the whole against theory."""

import numpy as np
import pytest

from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario, simulate

ONE_SLOT = ["engine.e0.max_batch_size=1", 'client.chat.input_tokens={dist="fixed",value=128}',
            'client.chat.output_tokens={dist="fixed",value=4}', "simulation.dt_s=1.0"]
REQUESTS = 120_000
BATCHES = 20      # 6,000 requests each; relaxation at rho = 0.8 is ~ 1 / (1 - rho)^2 = 25 services
Z_LIMIT = 4.0     # |t| > 4 with 19 degrees of freedom: about once in 1,300 seeds for a correct simulator


@pytest.fixture(scope="module")
def service_time():
    """D: prefill plus three decode iterations at batch 1, read from a short run (must be constant)."""
    probe = simulate(load_scenario(str(DEFAULT_SCENARIO), ONE_SLOT + ["simulation.horizon_s=10",
                                                                     "client.chat.arrival.rate_per_s=1"]))
    done = probe.requests[probe.requests.status == "finished"]
    service = done.e2e_s - done.queueing_s
    assert len(done) > 3 and service.max() - service.min() < 1e-6
    return float(service.mean())


@pytest.mark.parametrize("rho,max_standard_error", [(0.5, 0.02), (0.8, 0.04)])
def test_md1_mean_wait_matches_pollaczek_khinchine(service_time, rho, max_standard_error):
    rate = rho / service_time
    scenario = load_scenario(str(DEFAULT_SCENARIO), ONE_SLOT + [f"client.chat.arrival.rate_per_s={rate}",
                                                                f"simulation.horizon_s={REQUESTS / rate}"])
    result = simulate(scenario)
    df = result.requests.sort_values("arrival_s")
    assert result.summary["rejected"] == 0 and result.extra["deferred_steps"]["e0"] == 0
    waited = df.queueing_s[df.admit_s.notna()].to_numpy()
    assert len(waited) > 0.99 * REQUESTS
    expected = rho * service_time / (2 * (1 - rho))
    batch_means = np.array([b.mean() for b in np.array_split(waited, BATCHES)])
    standard_error = batch_means.std(ddof=1) / np.sqrt(BATCHES)
    print(f"rho {rho}: mean wait {waited.mean():.6g} s +- {standard_error:.3g}, Pollaczek-Khinchine {expected:.6g} s")
    assert standard_error < max_standard_error * expected      # the run is long enough to say anything
    assert abs(waited.mean() - expected) < Z_LIMIT * standard_error
