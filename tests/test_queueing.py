"""Analytic queueing limits: with one slot per engine, Poisson arrivals and fixed lengths, the
simulated engine is an M/D/1 queue, so the mean wait must match Pollaczek-Khinchine,
Wq = rho D / (2 (1 - rho)). The runs are long (the sample mean of a heavily loaded queue converges
slowly: at rho = 0.8 the standard error with 4e5 requests is ~1.4%; measured 0.3% off), but both
loads have the same number of requests, so they share one compiled scan. The simulator's waits
follow the Lindley recursion request by request (test_simulator.py); this is the check of the whole
against theory."""

import pytest

from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario, simulate

ONE_SLOT = ["engine.e0.max_batch_size=1", 'client.chat.input_tokens={dist="fixed",value=128}',
            'client.chat.output_tokens={dist="fixed",value=4}', "simulation.dt_s=1.0"]


@pytest.fixture(scope="module")
def service_time():
    """D: prefill plus three decode iterations at batch 1, read from a short run (must be constant)."""
    probe = simulate(load_scenario(str(DEFAULT_SCENARIO), ONE_SLOT + ["simulation.horizon_s=10",
                                                                     "client.chat.arrival.rate_per_s=1"]))
    done = probe.requests[probe.requests.status == "finished"]
    service = done.e2e_s - done.queueing_s
    assert len(done) > 3 and service.max() - service.min() < 1e-6
    return float(service.mean())


@pytest.mark.parametrize("rho,tolerance", [(0.5, 0.02), (0.8, 0.03)])
def test_md1_mean_wait_matches_pollaczek_khinchine(service_time, rho, tolerance):
    requests = 400_000
    rate = rho / service_time
    scenario = load_scenario(str(DEFAULT_SCENARIO), ONE_SLOT + [f"client.chat.arrival.rate_per_s={rate}",
                                                                f"simulation.horizon_s={requests / rate}"])
    result = simulate(scenario)
    df = result.requests
    assert result.summary["rejected"] == 0 and result.extra["deferred_steps"]["e0"] == 0
    waited = df.queueing_s[df.admit_s.notna()]
    assert len(waited) > 0.99 * requests
    expected = rho * service_time / (2 * (1 - rho))
    print(f"rho {rho}: mean wait {waited.mean():.6g} s, Pollaczek-Khinchine {expected:.6g} s")
    assert waited.mean() == pytest.approx(expected, rel=tolerance)
