"""Smoothed-regression gradients: the slope of a simulated metric averaged over small log-shifts of
the parameters, estimated from forward runs on common random numbers.

Why: a simulated latency is a jagged function of the parameters. Along one sample path it is
smooth between scheduling decisions and jumps where one flips (a request joins the next batch, a
preemption happens, a request crosses the horizon); averaged over arrivals the jumps add up to a
slope that path derivatives do not see (docs/gradients.md measures them against the exact
reference: for d mean E2E / d ln HBM bandwidth the anchored estimator gives 0.79x the true slope at
load 0.3 and 0.32x at 0.95, the plain pathwise one 12.9x to 2.4x). The quantity a
fit or a design can follow is the slope of the metric over a range of parameter values wide enough
to contain many flips. This estimator measures exactly that:

    y_r = (f(theta + s_r d_r) - f(theta - s_r d_r)) / 2,   g = argmin_g sum_r (y_r - s_r d_r . g)^2

over antithetic pairs of shifts in log space, directions d_r one parameter entry at a time (or the
rows of a Hadamard matrix, where every run informs every parameter) and magnitudes s_r cycling
through ``scales``. Antithetic pairs cancel even
curvature, so the estimate is the local slope of the smoothed function up to third-order terms.
The runs are one vmapped forward simulation (no reverse pass through the scan: memory is that of
the lanes, cost grows like the forward one, linearly in requests).

Assumption: the metric is, at the scale of ``scales``, close to linear plus jitter from decision
flips; the jitter averages over the pairs. The forward value is the plain simulation at theta (no
smoothing); the smoothed value (mean over the lanes) is reported by ``smoothing_gap`` so the
difference can be bounded. Discrete outcomes (finished requests, KV blocks, SLO attainment) get
their slope the same way: nothing in the simulated function is invisible to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from ..errors import ConfigError


def hadamard(m: int) -> np.ndarray:
    """Sylvester Hadamard matrix of order m (a power of two)."""
    h = np.ones((1, 1))
    while h.shape[0] < m:
        h = np.block([[h, h], [h, -h]])
    return h


@dataclass(frozen=True)
class Smoothed:
    """Gradient of the metric smoothed over log-shifts ``scales`` (see the module docstring).

    ``directions``: ``"coordinate"`` shifts one parameter entry per pair (the default: a weak
    parameter's slope is not buried under the jitter a strong one's shifts cause; measured in
    docs/gradients.md), ``"hadamard"`` shifts all of them along the rows of a Hadamard matrix (every
    pair informs every entry: for ``pairs`` below P * len(scales) with effects of similar size).
    ``pairs``: antithetic pairs of runs per gradient (0: one per direction and scale, i.e.
    P * len(scales) for coordinates); more pairs, less jitter. ``max_parameters`` guards against a
    gradient over every hardware entry at once (differentiate a subset: ``DifferentiableSim.function``).
    ``value``: ``"plain"`` returns the simulation at theta as the function's value; ``"smoothed"``
    the mean over the lanes, the function whose slope the estimator measures, with and without
    derivatives (for fits that must not stop in the dips decision flips leave in the plain value; its
    gap: ``smoothing_gap``). It smooths over every input entry, so use it where the input is just the
    variables (``DifferentiableSim.scaled``).
    """

    scales: tuple[float, ...] = (0.03, 0.06, 0.1)
    pairs: int = 0
    directions: str = "coordinate"
    max_parameters: int = 32
    value: str = "plain"
    name: ClassVar[str] = "smoothed"

    def __post_init__(self):
        if not self.scales or any(not (0 < s < 1) for s in self.scales):
            raise ConfigError(f"Smoothed.scales: log-shifts must lie in (0, 1), got {self.scales}")
        if self.directions not in ("coordinate", "hadamard"):
            raise ConfigError(f"Smoothed.directions: 'coordinate' or 'hadamard', got {self.directions!r}")
        if self.value not in ("plain", "smoothed"):
            raise ConfigError(f"Smoothed.value: 'plain' or 'smoothed', got {self.value!r}")
        if self.pairs < 0:
            raise ConfigError(f"Smoothed.pairs: must be >= 0 (0: automatic), got {self.pairs}")

    def design(self, p: int) -> np.ndarray:
        """(pairs, P) log-shifts of the + side of each antithetic pair."""
        if p > self.max_parameters:
            raise ConfigError(f"smoothed gradient over {p} parameter entries (limit max_parameters="
                              f"{self.max_parameters}): differentiate the parameters you need, e.g. "
                              "DifferentiableSim.function(names)")
        if self.directions == "coordinate":
            m, directions = p, np.eye(p)
        else:   # antithetic differences cancel the intercept, so every Hadamard column serves a parameter
            m = 1 << int(np.ceil(np.log2(p)))
            directions = hadamard(m)[:, :p]
        pairs = self.pairs or m * len(self.scales)
        rows = directions[np.arange(pairs) % m]
        scale = np.asarray(self.scales)[(np.arange(pairs) // m) % len(self.scales)]
        return rows * scale[:, None]

    def differentiate(self, forward: Callable, lanes_forward: Callable | None = None) -> Callable:
        """``forward(log_params: dict, *data) -> dict of scalars`` with this estimator's JVP. ``data``
        (requests, masks) are not differentiated. ``lanes_forward``: the same function in a form
        that vmaps well (the simulator's guarded conditionals), used for the runs of a gradient."""
        estimator = self
        lanes_forward = lanes_forward or forward

        @jax.custom_jvp
        def f(log, *data):
            if estimator.value == "plain":
                return forward(log, *data)
            keys = sorted(log)   # the smoothed value: over every entry, as the JVP's (checked there)
            shifts = estimator.design(sum(int(np.size(log[k])) for k in keys))
            runs = _lane_runs(lanes_forward, log, keys, _lanes(shifts), data)
            return jax.tree_util.tree_map(lambda v: v.mean(0), runs)

        def _jvp(primals, tangents):
            log, data = primals[0], primals[1:]
            tan = tangents[0]
            keys = [k for k in sorted(log) if not isinstance(tan[k], SymbolicZero)]
            if estimator.value == "smoothed" and keys != sorted(log):
                raise ConfigError("Smoothed(value='smoothed') smooths over every input, so all of them must be "
                                  f"differentiated (here only {keys} of {sorted(log)}): use "
                                  "DifferentiableSim.scaled(names), whose input is just the fitted multipliers")
            sizes = [int(np.size(log[k])) for k in keys]
            p = sum(sizes)
            if p == 0:
                out = forward(log, *data)
                return out, jax.tree_util.tree_map(jnp.zeros_like, out)
            shifts = estimator.design(p)                                  # (R, P)
            lanes = _lanes(shifts)
            dtype = jnp.result_type(*[log[k] for k in keys])
            runs = _lane_runs(lanes_forward, log, keys, lanes, data)
            R = shifts.shape[0]
            # least squares on the half differences; pinv of the static design is computed on the host
            solve = jnp.asarray(np.linalg.pinv(shifts), dtype)               # (P, R)
            t = jnp.concatenate([jnp.ravel(tan[k]).astype(dtype) for k in keys])
            primal = jax.tree_util.tree_map(lambda v: v[0] if estimator.value == "plain" else v.mean(0), runs)

            def slope(v):
                half = (v[1:R + 1] - v[R + 1:]).astype(dtype) / 2
                return (solve @ half) @ t

            return primal, jax.tree_util.tree_map(lambda v, out: slope(v).astype(out.dtype), runs, primal)

        f.defjvp(_jvp, symbolic_zeros=True)
        return f


def smoothing_gap(forward: Callable, log: dict, keys, estimator: Smoothed, *data) -> dict:
    """Per metric: the smoothed value (mean over the estimator's lanes) minus the plain one. Its
    size bounds what the smoothing changes about the value a gradient describes."""
    shifts = estimator.design(sum(int(np.size(log[k])) for k in keys))
    runs = _lane_runs(forward, log, keys, _lanes(shifts), data)
    return jax.tree_util.tree_map(lambda v: v[1:].mean() - v[0], runs)


def _lanes(shifts: np.ndarray) -> np.ndarray:
    """(1 + 2R, P) rows: the base, then the + sides, then the - sides of the R antithetic pairs."""
    return np.concatenate([np.zeros((1, shifts.shape[1])), shifts, -shifts])


def _lane_runs(forward: Callable, log: dict, keys, lanes: np.ndarray, data) -> dict:
    """``forward`` at ``log`` shifted by each row of ``lanes`` (over the entries of ``keys``, in
    order), as one vmapped call: every metric gets a leading lane axis."""
    offsets = np.cumsum([0] + [int(np.size(log[k])) for k in keys])
    dtype = jnp.result_type(*[log[k] for k in keys])

    def shifted(row):
        moved = dict(log)
        for k, a, b in zip(keys, offsets[:-1], offsets[1:]):
            moved[k] = log[k] + row[a:b].reshape(np.shape(log[k])).astype(log[k].dtype)
        return forward(moved, *data)

    return jax.vmap(shifted)(jnp.asarray(lanes, dtype))
