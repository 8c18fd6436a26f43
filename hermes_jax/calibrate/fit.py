"""Fit any subset of ``HardwareParams`` to measurements, with intervals and identifiability warnings.

The user gives a residual function ``params -> (pred, meas)`` arrays; the fit minimises the mean of
``loss`` over the residuals in log parameter space, inside bounds (a sigmoid map between log
bounds, so Adam and L-BFGS both run unconstrained) and with optional log-normal priors. Adam (optax)
takes it near the minimum, L-BFGS polishes to it.

Uncertainty (Laplace / Gauss-Newton): with J the Jacobian of the residuals in log parameters at the
optimum and s^2 = sum r^2 / (n - p), the information is F = J^T J / s^2 + prior precision and the
covariance of the log parameters is F^-1. An eigen-direction of F whose standard deviation exceeds
``unidentified_sd`` (in e-folds) is named in a warning with the parameters it mixes, as is every
parameter pinned at a bound; ``bootstrap`` refits on resampled rows to check the intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..errors import ConfigError
from ..hardware.params import FIELDS, HardwareParams

Z90 = 1.6448536269514722


# ----------------------------------------------------------------- losses
class _LogRatio:
    def residual(self, pred, meas):
        return jnp.log(pred) - jnp.log(meas)


@dataclass(frozen=True)
class LogHuber(_LogRatio):
    """Pseudo-Huber of the log ratio: quadratic within ``delta`` (relative), absolute-like beyond."""
    delta: float = 0.05
    name: str = "pseudo-Huber of log ratio"

    def rho(self, r):
        return self.delta ** 2 * (jnp.sqrt(1.0 + (r / self.delta) ** 2) - 1.0)


@dataclass(frozen=True)
class LogSquared(_LogRatio):
    name: str = "squared log ratio"

    def rho(self, r):
        return 0.5 * r ** 2


@dataclass(frozen=True)
class Relative:
    name: str = "squared relative error"

    def residual(self, pred, meas):
        return pred / meas - 1.0

    def rho(self, r):
        return 0.5 * r ** 2


@dataclass(frozen=True)
class Pinball(_LogRatio):
    """Quantile (pinball) loss on the log ratio, for fitting a measured ``quantile``."""
    quantile: float = 0.5
    name: str = "pinball of log ratio"

    def rho(self, r):
        return jnp.maximum(self.quantile * -r, (self.quantile - 1.0) * -r)


LOSSES = {"huber": LogHuber, "log": LogSquared, "relative": Relative, "pinball": Pinball}


# ----------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Bound:
    """Natural-unit bounds of a fitted parameter (None: default, e^10 either side of the start;
    efficiencies are capped at 1)."""
    lower: float | None = None
    upper: float | None = None


@dataclass(frozen=True)
class Prior:
    """Log-normal prior: log value ~ N(log ``value``, ``sd_log``^2)."""
    value: float
    sd_log: float


@dataclass
class FitResult:
    params: HardwareParams
    names: list[str]
    theta: dict[str, np.ndarray]          # fitted log values
    sd_log: dict[str, np.ndarray]         # standard deviation of each log value (e-folds)
    interval90: dict[str, tuple[np.ndarray, np.ndarray]]  # natural units
    at_bound: list[str]
    warnings: list[str]
    loss: float
    rmse_log: float
    n: int
    eigen: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (sd along direction, loadings)
    bootstrap_sd: dict[str, np.ndarray] = field(default_factory=dict)

    def value(self, name: str) -> np.ndarray:
        return np.exp(self.theta[name])


def _log_bounds(name, start, bound: Bound | None):
    bound = bound or Bound()
    lo = np.log(bound.lower) if bound.lower else start - 10.0
    hi = np.log(bound.upper) if bound.upper else start + 10.0
    if name.endswith("efficiency") and bound.upper is None:
        hi = np.minimum(hi, 0.0)
    lo, hi = np.broadcast_arrays(np.asarray(lo, float), np.asarray(hi, float))
    if np.any(lo >= hi):
        raise ConfigError(f"fit parameter {name}: lower bound must be below upper bound ({bound})")
    return lo, hi


def lbfgs_polish(fn: Callable, x, steps: int):
    """``steps`` L-BFGS iterations with optax's line search from ``x``; returns the new ``x``.
    Adam at a constant rate stops near a minimum, not at it; this polishes to the minimum itself."""
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fn)

    @jax.jit
    def step(x, state):
        value, grads = value_and_grad(x, state=state)
        updates, state = solver.update(grads, state, x, value=value, grad=grads, value_fn=fn)
        return optax.apply_updates(x, updates), state

    state = solver.init(x)
    for _ in range(steps):
        x, state = step(x, state)
    return x


def fit_parameters(predict: Callable[[HardwareParams], tuple[jax.Array, jax.Array]], params: HardwareParams,
                   names: list[str], *, bounds: Mapping[str, Bound] | None = None,
                   priors: Mapping[str, Prior] | None = None, loss=None, steps: int = 600,
                   learning_rate: float = 0.05, polish_steps: int = 200, unidentified_sd: float = 0.5,
                   bootstrap: int = 0, seed: int = 0, progress: Callable[[str], None] | None = None) -> FitResult:
    """Fit the log values of ``names``; ``predict(params)`` returns (pred, meas) arrays (meas may be a
    constant). Returns the fitted params with intervals and warnings (module doc)."""
    loss = loss or LogHuber()
    bounds, priors = dict(bounds or {}), dict(priors or {})
    for name in [*names, *bounds, *priors]:
        if name not in FIELDS:
            raise ConfigError(f"cannot fit {name!r}: not a hardware or stack parameter; known: {', '.join(FIELDS)}")
    dtype = params.log[names[0]].dtype
    start = {n: np.asarray(params.log[n], dtype=np.float64) for n in names}
    for n in names:
        b = bounds.get(n)
        if not np.all(np.isfinite(start[n])) and not (b and b.lower and b.upper):
            raise ConfigError(f"fit parameter {n} starts at 0 (switched off): give it Bound(lower, upper) "
                              "so the fit knows the range to search")
    lims = {n: _log_bounds(n, np.where(np.isfinite(start[n]), start[n], 0.0), bounds.get(n)) for n in names}

    def to_theta(z):
        return {n: lims[n][0] + (lims[n][1] - lims[n][0]) * jax.nn.sigmoid(z[n]) for n in names}

    def to_z(theta):
        out = {}
        for n in names:
            lo, hi = lims[n]
            t = np.asarray(theta[n], np.float64)
            t = np.where(np.isfinite(t), t, (lo + hi) / 2)  # switched off: start mid-range (log scale)
            u = np.clip((t - lo) / (hi - lo), 1e-6, 1 - 1e-6)
            out[n] = jnp.asarray(np.log(u / (1 - u)), dtype=dtype)
        return out

    def residuals(theta):
        pred, meas = predict(HardwareParams({**params.log, **theta}))
        return loss.residual(pred, meas)

    def prior_term(theta):
        return sum(0.5 * jnp.sum(((theta[n] - np.log(p.value)) / p.sd_log) ** 2) for n, p in priors.items() if n in theta)

    n_rows = int(np.size(residuals({n: jnp.asarray(start[n], dtype) for n in names})))

    def objective(z, weights):
        theta = to_theta(z)
        r = residuals(theta)
        # The prior is on the scale of a sum of squared log errors at the loss's own scale.
        return jnp.sum(weights * loss.rho(r)) / jnp.sum(weights) + prior_term(theta) / n_rows * 0.05 ** 2

    opt = optax.adam(learning_rate)

    @jax.jit
    def adam_step(z, state, weights):
        value, grads = jax.value_and_grad(objective)(z, weights)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(z, updates), state, value


    def optimise(z, weights, adam_steps):
        state = opt.init(z)
        for i in range(adam_steps):
            z, state, value = adam_step(z, state, weights)
            if progress and (i + 1) % max(adam_steps // 5, 1) == 0:
                progress(f"adam {i + 1}/{adam_steps}: loss {float(value):.5g}")
        z = lbfgs_polish(lambda x: objective(x, weights), z, polish_steps)
        return z, float(objective(z, weights))

    ones = jnp.ones((n_rows,), dtype)
    z, final = optimise(to_z(start), ones, steps)
    theta = {n: np.asarray(v, np.float64) for n, v in to_theta(z).items()}
    if progress:
        progress(f"polished: loss {final:.5g}")

    # Laplace / Gauss-Newton covariance in the flat vector of log values.
    sizes = [int(np.size(theta[n])) for n in names]
    flat = np.concatenate([np.ravel(theta[n]) for n in names])

    def unflat(v):
        out, i = {}, 0
        for n, k in zip(names, sizes):
            out[n] = v[i:i + k].reshape(np.shape(theta[n])).astype(dtype)
            i += k
        return out

    jac = np.asarray(jax.jacfwd(lambda v: residuals(unflat(v)))(jnp.asarray(flat)), np.float64).reshape(n_rows, -1)
    r = np.asarray(residuals(unflat(jnp.asarray(flat))), np.float64).ravel()
    dof = max(n_rows - flat.size, 1)
    s2 = max(float(r @ r) / dof, 1e-12)
    precision = np.zeros(flat.size)
    i = 0
    for n, k in zip(names, sizes):
        if n in priors:
            precision[i:i + k] = 1.0 / priors[n].sd_log ** 2
        i += k
    labels = [n if k == 1 else f"{n}[{j}]" for n, k in zip(names, sizes) for j in range(k)]
    at_bound = []
    i = 0
    for n, k in zip(names, sizes):
        lo, hi = (np.ravel(np.broadcast_to(x, np.shape(theta[n]))) for x in lims[n])
        v = np.ravel(theta[n])
        for j in range(k):
            if min(v[j] - lo[j], hi[j] - v[j]) < 1e-3:
                at_bound.append(labels[i + j])
                precision[i + j] = max(precision[i + j], 1e12)  # fixed by its bound, not the data
        i += k
    info = jac.T @ jac / s2 + np.diag(precision)
    evals, evecs = np.linalg.eigh(info)
    # A numerically null direction (the data do not see it at all) would swamp every variance through
    # round-off loadings: keep it out of the covariance and make only the parameters it really mixes
    # (loading > 0.05) unbounded.
    null = evals <= max(float(evals.max()), 1e-300) * 1e-12
    keep = ~null
    cov = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
    for vec in evecs[:, null].T:
        sd[np.abs(vec) > 0.05] = np.inf
    warnings, eigen = [], []
    for lam, vec in zip(evals, evecs.T):
        direction_sd = 1.0 / np.sqrt(max(lam, 1e-300))
        loads = {labels[j]: float(vec[j]) for j in np.argsort(-np.abs(vec)) if abs(vec[j]) > 0.25}
        eigen.append((float(direction_sd), loads))
        if direction_sd > unidentified_sd:
            combo = " ".join(f"{'+' if v > 0 else '-'}{abs(v):.2f}*ln({k})" for k, v in loads.items())
            warnings.append(f"not identified by these data: {combo} (sd {direction_sd:.2g} e-folds); "
                            "fix some of these or add data that separate them")
    for label in at_bound:
        warnings.append(f"{label} ended at its bound: the data push it past the allowed range")
    out_sd, out_iv, out_theta = {}, {}, {}
    i = 0
    for n, k in zip(names, sizes):
        shape = np.shape(theta[n])
        out_theta[n] = theta[n]
        out_sd[n] = sd[i:i + k].reshape(shape)
        spread = np.minimum(Z90 * out_sd[n], 300.0)  # an unidentified direction: huge, not inf
        out_iv[n] = (np.exp(theta[n] - spread), np.exp(theta[n] + spread))
        i += k
    result = FitResult(HardwareParams({**params.log, **{n: jnp.asarray(theta[n], dtype) for n in names}}), list(names),
                       out_theta, out_sd, out_iv, at_bound, warnings, final, float(np.sqrt(np.mean(r ** 2))), n_rows,
                       eigen)
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = []
        for b in range(bootstrap):
            w = jnp.asarray(rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows)), dtype)
            zb, _ = optimise(z, w, 0)
            draws.append(np.concatenate([np.ravel(np.asarray(v)) for v in to_theta(zb).values()]))
            if progress:
                progress(f"bootstrap {b + 1}/{bootstrap}")
        bsd = np.std(np.array(draws), axis=0, ddof=1)
        i = 0
        for n, k in zip(names, sizes):
            result.bootstrap_sd[n] = bsd[i:i + k].reshape(np.shape(theta[n]))
            i += k
    return result
