"""Gradient estimators for the simulator's discrete decisions.

Event times in the simulator are sums of iteration times, so they are differentiable in the hardware
parameters along the path of decisions actually taken. That path derivative is exact for the sample
(checked against tiny finite differences) but not for the expected metric, because admission is a
discontinuity: a request waits for the next iteration boundary, and as parameters change the
boundaries sweep past it, so its wait is a sawtooth whose path slope (the derivative of the whole
busy period before it) has nothing to do with the slope of its average. Estimators:

- ``Pathwise``: decisions fixed, gradients through times only (hard masks).
- ``Anchored``: pathwise, except that a request admitted at the first boundary after its arrival
  gets the gradient of its wait from the iteration it arrived during, in proportion to the part it
  waited, (b - a) / tau * d tau (smoothed perturbation analysis: averaged over the arrival's phase,
  earlier iterations only move the phase). Forward results identical to ``Pathwise``.
- ``StraightThrough(temperature_s)``: anchored, plus the admission decision's flip: the tokens of a
  newly admitted request are scaled by a gate equal to 1 forward, with the slope of
  sigmoid((b - a) / temperature) backward, so d(iteration time)/d(boundary) flows back.
- ``Relaxed(temperature_s)``: anchored, and the gate is the sigmoid itself forward and backward: a
  smooth but biased simulation (a request arriving exactly at a boundary counts half its prompt).

Preemption, KV-block and finish decisions stay pathwise under every estimator. Which request
finishes inside the horizon is also held fixed. Estimators are small frozen objects in the engine's
static configuration (hashable, so jit caches by them). How far each is from the true slope of the
exact reference is in docs/gradients.md (benchmarks/gradient_check.py); the default estimator of
``DifferentiableSim`` is not one of these path estimators but ``sim.smoothing.Smoothed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp


class _Estimator:
    def gate(self, margin_s):
        """Token multiplier for admitted requests (``margin_s`` = boundary - arrival, >= 0)."""
        return jnp.ones_like(margin_s)

    def shift(self, now, arrival, last_tau):
        """Zero-valued correction added to an admitted request's event times (gradient only)."""
        return jnp.zeros_like(arrival * now)

    def differentiate(self, forward, lanes_forward=None):
        """Path estimators differentiate the simulation itself (reverse mode through the scan)."""
        return forward


@dataclass(frozen=True)
class Pathwise(_Estimator):
    name: ClassVar[str] = "pathwise"


@dataclass(frozen=True)
class Anchored(_Estimator):
    """Wait gradients of requests admitted at the first boundary after arrival from the iteration
    they arrived during only (see the module docstring)."""

    name: ClassVar[str] = "anchored"

    def shift(self, now, arrival, last_tau):
        sg = jax.lax.stop_gradient
        wait = now - arrival
        within = (last_tau > 0) & (wait >= 0) & (wait < last_tau)
        local = sg(wait) * last_tau / jnp.where(within, sg(last_tau), 1.0)   # value: wait; slope: wait / tau
        correction = (local - sg(local)) - (now - sg(now))
        return jnp.where(within, correction, 0.0)


@dataclass(frozen=True)
class StraightThrough(Anchored):
    temperature_s: float = 1e-3
    name: ClassVar[str] = "straight_through"

    def gate(self, margin_s):
        soft = jax.nn.sigmoid(margin_s / self.temperature_s)
        return 1.0 + soft - jax.lax.stop_gradient(soft)


@dataclass(frozen=True)
class Relaxed(Anchored):
    temperature_s: float = 1e-3
    name: ClassVar[str] = "relaxed"

    def gate(self, margin_s):
        return jax.nn.sigmoid(margin_s / self.temperature_s)


ESTIMATORS = {"pathwise": Pathwise, "anchored": Anchored, "straight_through": StraightThrough, "relaxed": Relaxed}
