"""Closed-loop users against the exact reference at several time steps: how large a step keeps
every admission where the event-driven reference puts it (docs/simulator.md, "Closed-loop clients").

    python benchmarks/closed_loop_step.py      # ~1 minute on 2 cores

Llama-3.1-8B on one H100 (the default scenario's engine), 60 s, seed 1, N users thinking an
exponential time of mean T between a reply and their next request; per step: the share of requests
whose admission moves by more than 1e-5 s, the largest move, and the mean E2E of both simulators.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from hermes_jax.sim import DEFAULT_SCENARIO, load_scenario, simulate  # noqa: E402
from hermes_jax.sim.reference import simulate_reference  # noqa: E402

CASES = ((1.0, 16), (8.0, 64))          # (mean think time s, users)
SHARES = (2.0**-8, 2.0**-6, 2.0**-4)    # step as a share of the think time (2^-8: the automatic rule)


def main() -> None:
    print("| think time T (s) | users | dt (s) | dt / T | requests | admissions moved | largest move (s) | mean E2E (s) | reference (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for think, users in CASES:
        base = load_scenario(str(DEFAULT_SCENARIO), ["simulation.horizon_s=60", "simulation.seed=1"])
        client = dataclasses.replace(base.clients[0], name="users", users=users, think_time_s=think, arrival={})
        exact = None
        for share in SHARES:
            sc = dataclasses.replace(base, clients=(client,),
                                     simulation=dataclasses.replace(base.simulation, dt_s=share * think))
            if exact is None:
                exact = simulate_reference(sc).requests
            fast = simulate(sc).requests
            moved = np.abs(fast.admit_s.to_numpy() - exact.admit_s.to_numpy())
            print(f"| {think:g} | {users} | {sc.dt_s:g} | 1/{round(1 / share)} | {len(fast)} | "
                  f"{np.nanmean(moved > 1e-5):.1%} | {np.nanmax(moved):.3g} | {fast.e2e_s.mean():.4f} | "
                  f"{exact.e2e_s.mean():.4f} |")


if __name__ == "__main__":
    main()
