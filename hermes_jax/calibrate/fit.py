"""Fit any subset of ``HardwareParams`` to measurements, with intervals and identifiability warnings.

The user gives a residual function ``params -> (pred, meas)`` arrays; the fit minimises the mean of
``loss`` over the residuals in log parameter space, inside bounds (a sigmoid map between log
bounds, so the optimisers run unconstrained) and with optional log-normal priors. Adam (optax)
takes it near the minimum, Levenberg-Marquardt on the reweighted Gauss-Newton system polishes to it.

Uncertainty (Laplace / Gauss-Newton): with J the Jacobian of the residuals in log parameters at the
optimum and s^2 = sum r^2 / (n - p), the information is F = J^T J / s^2 + prior precision and the
covariance of the log parameters is F^-1. An eigen-direction of F whose standard deviation exceeds
``unidentified_sd`` (in e-folds) is named in a warning with the parameters it mixes, as is every
parameter pinned at a bound; ``bootstrap`` refits on resampled rows to check the intervals.
"""

from __future__ import annotations

import functools
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
    efficiencies are capped at 1). Fits run in log space, so a given bound must be > 0."""
    lower: float | None = None
    upper: float | None = None

    def __post_init__(self):
        for side in ("lower", "upper"):
            value = getattr(self, side)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ConfigError(f"bound {side} must be a finite number > 0 (fits are in log space), got {value!r}")


@dataclass(frozen=True)
class Prior:
    """Log-normal prior: log value ~ N(log ``value``, ``sd_log``^2)."""
    value: float
    sd_log: float

    def __post_init__(self):
        if not (np.isfinite(self.value) and self.value > 0 and np.isfinite(self.sd_log) and self.sd_log > 0):
            raise ConfigError(f"prior needs value > 0 and sd_log > 0 (e-folds), got {self.value!r}, {self.sd_log!r}")


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
    predicted_start: np.ndarray | None = None   # predictions at the start, every row (train and held out)
    predicted: np.ndarray | None = None         # predictions at the optimum, every row
    unused: list[str] = field(default_factory=list)  # asked for, but no fitted row depends on them: not fitted

    def value(self, name: str) -> np.ndarray:
        return np.exp(self.theta[name])


def _log_bounds(name, start, bound: Bound | None):
    bound = bound or Bound()
    lo = np.log(bound.lower) if bound.lower is not None else start - 10.0
    hi = np.log(bound.upper) if bound.upper is not None else start + 10.0
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


_JACOBIANS: dict = {}


def _compiled_jacobian(predict, params, names, lo, hi, unflat):
    """jit(jacfwd) of the predictions in the unconstrained variables, compiled once per (predict,
    names, dtype): the start values and the bounds are arguments, so fits of the same predictions from
    several starts (a trace fit's screened starts) or within other bounds share one program. The
    cache holds ``predict`` itself, so its id stays unique. Returns ``z -> (jac, (pred, meas))``."""
    dtype = params.log[names[0]].dtype
    key = (id(predict), names, tuple(np.shape(params.log[n]) for n in names), str(dtype))
    if key not in _JACOBIANS:
        def predictions(z, log, lo_j, hi_j):
            theta = lo_j + (hi_j - lo_j) * jax.nn.sigmoid(z)
            pred, meas = predict(HardwareParams({**log, **unflat(theta)}))
            return pred, (pred, jnp.broadcast_to(meas, jnp.shape(pred)))

        while len(_JACOBIANS) >= 8:
            _JACOBIANS.pop(next(iter(_JACOBIANS)))
        _JACOBIANS[key] = (predict, jax.jit(jax.jacfwd(predictions, has_aux=True)))
    compiled = _JACOBIANS[key][1]
    log, lo_j, hi_j = dict(params.log), jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
    return lambda z: compiled(z, log, lo_j, hi_j)


@functools.lru_cache(maxsize=32)
def _loss_derivatives(loss):
    """(d residual / d prediction, d rho / d residual), elementwise and compiled once per loss."""
    return (jax.jit(jax.vmap(jax.grad(loss.residual, argnums=0))), jax.jit(jax.vmap(jax.grad(loss.rho))))


def fit_parameters(predict: Callable[[HardwareParams], tuple[jax.Array, jax.Array]], params: HardwareParams,
                   names: list[str], *, bounds: Mapping[str, Bound] | None = None,
                   priors: Mapping[str, Prior] | None = None, loss=None, steps: int = 300,
                   learning_rate: float = 0.05, polish_steps: int = 60, unidentified_sd: float = 0.5,
                   bootstrap: int = 0, seed: int = 0, train=None, measured=None, residual_sd=None,
                   progress: Callable[[str], None] | None = None) -> FitResult:
    """Fit the log values of ``names``; ``predict(params)`` returns (pred, meas) arrays (meas may be a
    constant). ``train`` (boolean per row) fits on those rows only; predictions at the start and the
    optimum are returned for every row; ``measured`` replaces the measurements ``predict`` returns.
    Returns the fitted params with intervals and warnings.

    One function is compiled: the predictions and their forward-mode Jacobian in the unconstrained
    variables (p tangents, cheap for the few parameters a calibration fits). It is kept for the same
    ``predict``, start ``params``, names and bounds, so refits to other measurements (seeds, noise,
    cross-validation) do not compile again. Adam (optax) runs on the
    gradient built from it; the polish is Levenberg-Marquardt on the iteratively reweighted
    Gauss-Newton system of the robust loss, which converges in a few dozen steps where a first-order
    method stalls; the Laplace covariance and the bootstrap reuse the same compiled Jacobian."""
    loss = loss or LogHuber()
    bounds, priors = dict(bounds or {}), dict(priors or {})
    for name in [*names, *bounds, *priors]:
        if name not in FIELDS:
            raise ConfigError(f"cannot fit {name!r}: not a hardware or stack parameter; known: {', '.join(FIELDS)}")
    dtype = params.log[names[0]].dtype
    start = {n: np.asarray(params.log[n], dtype=np.float64) for n in names}
    for n in names:
        b = bounds.get(n)
        if not np.all(np.isfinite(start[n])) and not (b and b.lower is not None and b.upper is not None):
            raise ConfigError(f"fit parameter {n} starts at 0 (switched off): give it Bound(lower, upper) "
                              "so the fit knows the range to search")
    lims = {n: _log_bounds(n, np.where(np.isfinite(start[n]), start[n], 0.0), bounds.get(n)) for n in names}
    shapes = [np.shape(start[n]) for n in names]
    sizes = [int(np.prod(sh)) for sh in shapes]
    labels = [n if np.ndim(start[n]) == 0 else f"{n}[{j}]" for n, k in zip(names, sizes) for j in range(k)]
    lo = np.concatenate([np.ravel(np.broadcast_to(lims[n][0], sh)) for n, sh in zip(names, shapes)])
    hi = np.concatenate([np.ravel(np.broadcast_to(lims[n][1], sh)) for n, sh in zip(names, shapes)])
    prior_mu = np.zeros(lo.size)
    prior_prec = np.zeros(lo.size)
    i = 0
    for n, k in zip(names, sizes):
        if n in priors:
            prior_mu[i:i + k], prior_prec[i:i + k] = np.log(priors[n].value), 1.0 / priors[n].sd_log ** 2
        i += k

    def unflat(theta_flat):
        out, i = {}, 0
        for n, sh, k in zip(names, shapes, sizes):
            out[n] = jnp.reshape(theta_flat[i:i + k], sh).astype(dtype)
            i += k
        return out

    def sigmoid(z):
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow far out

    def theta_of(z):
        return lo + (hi - lo) * sigmoid(z)

    def dtheta_of(z):  # d(log value) / dz of the bounded map
        return (hi - lo) * sigmoid(z) * (1 - sigmoid(z))

    def z_of(theta):
        t = np.where(np.isfinite(theta), theta, (lo + hi) / 2)  # switched off: start mid-range (log scale)
        # A start on a bound would sit where the map is flat and gradients vanish: start just inside.
        u = np.clip((t - lo) / (hi - lo), 0.02, 0.98)
        return np.log(u / (1 - u))

    jac_fn = _compiled_jacobian(predict, params, tuple(names), lo, hi, unflat)
    dres_fn, psi_fn = _loss_derivatives(loss)
    noise = None
    if residual_sd is not None:
        noise = np.asarray(residual_sd, np.float64)
        if not np.all(np.isfinite(noise)) or np.any(noise <= 0):
            raise ConfigError(f"residual_sd must be finite and > 0 for every row, got {noise}")

    def evaluate(z):
        jac, (pred, meas) = jac_fn(jnp.asarray(z, dtype))
        pred = np.asarray(pred, np.float64)
        meas = np.broadcast_to(np.asarray(meas if measured is None else measured, np.float64), pred.shape)
        r = np.asarray(loss.residual(pred, meas), np.float64)
        dr = np.asarray(dres_fn(jnp.asarray(pred), jnp.asarray(meas)), np.float64)
        if noise is not None:   # residuals in units of their noise
            r, dr = r / np.broadcast_to(noise, r.shape), dr / np.broadcast_to(noise, dr.shape)
        with np.errstate(invalid="ignore", over="ignore"):   # non-finite rows are handled by the callers
            return r, dr[:, None] * np.asarray(jac, np.float64).reshape(pred.size, -1), pred

    z0 = z_of(np.concatenate([np.ravel(start[n]) for n in names]))
    r0, jac0, pred0 = evaluate(z0)
    n_all = r0.size
    mask = np.ones(n_all, bool) if train is None else np.asarray(train, bool)
    if mask.shape != (n_all,) or not mask.any():
        raise ConfigError(f"train mask must be {n_all} booleans with at least one True")
    # A parameter no fitted row depends on (a kernel path the data never take) is not fitted: it
    # keeps its start value and the result says so, rather than reporting an arbitrary value.
    columns = np.split(np.arange(jac0.shape[1]), np.cumsum(sizes)[:-1])
    unused = [n for n, cols in zip(names, columns) if not np.any(jac0[np.ix_(mask & np.isfinite(r0), cols)])]
    if unused and len(unused) < len(names):
        result = fit_parameters(predict, params, [n for n in names if n not in unused], bounds=bounds, priors=priors,
                                loss=loss, steps=steps, learning_rate=learning_rate, polish_steps=polish_steps,
                                unidentified_sd=unidentified_sd, bootstrap=bootstrap, seed=seed, train=train,
                                measured=measured, residual_sd=residual_sd, progress=progress)
        result.unused = unused
        result.warnings += [f"{n}: no fitted row's prediction changes with it at the start values (a kernel "
                            "path or bound the data never reach); not fitted, kept at its start value "
                            f"{np.array2string(np.exp(start[n]), precision=4)}" for n in unused]
        return result
    n_rows = int(mask.sum())
    bad = mask & ~np.isfinite(r0)
    if bad.any():  # a non-positive measurement or prediction has no log ratio: say which, never fit NaN
        raise ConfigError(f"{int(bad.sum())} of {n_rows} fitted rows give no finite residual at the start (first: "
                          f"row {int(np.flatnonzero(bad)[0])}, predicted {pred0[bad][0]!r}); measurements and "
                          "predictions must be finite and > 0")
    # the prior on the scale of a sum of squared log errors at the loss's scale (in noise units: 1)
    prior_scale = (0.05 ** 2 if noise is None else 1.0) / n_rows

    def rho(r):
        return np.asarray(loss.rho(jnp.asarray(r)), np.float64)

    def psi(r):
        return np.asarray(psi_fn(jnp.asarray(r, dtype)), np.float64)

    def objective(z, r, w):
        theta = theta_of(z)
        on = w > 0
        return float(np.sum(w[on] * rho(r[on])) / np.sum(w)
                     + prior_scale * 0.5 * np.sum(prior_prec * (theta - prior_mu) ** 2))

    def gradient(z, r, jac, w):
        dtheta = dtheta_of(z)
        on = w > 0   # rows outside the fit (held out, weight 0) may be non-finite: 0 * nan would spread
        g = jac[on].T @ (w[on] * psi(r[on])) / np.sum(w) + prior_scale * prior_prec * (theta_of(z) - prior_mu) * dtheta
        return g, dtheta

    def polish(z, w, iterations):
        r, jac, _ = evaluate(z)
        value, mu = objective(z, r, w), 1e-3
        for _ in range(iterations):
            g, dtheta = gradient(z, r, jac, w)
            safe = np.where(np.abs(r) > 1e-12, r, 1e-12)
            with np.errstate(invalid="ignore"):   # rows outside the fit may be nan; they are left out below
                omega = np.where(np.abs(r) > 1e-12, psi(r) / safe, psi(np.full_like(r, 1e-6)) / 1e-6)
            on = w > 0
            h = (jac[on] * (w[on] * omega[on])[:, None]).T @ jac[on] / np.sum(w) \
                + np.diag(prior_scale * prior_prec * dtheta ** 2)
            improved = False
            for _ in range(8):
                step = np.linalg.solve(h + mu * (np.diag(np.diag(h)) + 1e-12 * np.eye(len(z))), -g)
                r_new, jac_new, _ = evaluate(z + step)
                new = objective(z + step, r_new, w)
                if np.isfinite(new) and new <= value:
                    converged = value - new < 1e-12 * max(abs(value), 1e-30)
                    z, r, jac, value, mu, improved = z + step, r_new, jac_new, new, max(mu / 3, 1e-9), True
                    break
                mu *= 4
            if not improved or converged:
                break
        return z, value

    stopped: list[str] = []

    def optimise(z, w, adam_steps):
        opt = optax.adam(learning_rate)
        state = opt.init(jnp.asarray(z))
        for i in range(adam_steps):
            r, jac, _ = evaluate(z)
            g, _ = gradient(z, r, jac, w)
            if not np.all(np.isfinite(g)):   # a step into a region where the model gives no value
                stopped.append(f"Adam stopped at step {i + 1} of {adam_steps}: the prediction or its gradient is not "
                               "finite there; the polish continued from the last finite point")
                break
            updates, state = opt.update(jnp.asarray(g), state)
            z = z + np.asarray(updates, np.float64)
            if progress and (i + 1) % max(adam_steps // 5, 1) == 0:
                progress(f"adam {i + 1}/{adam_steps}: loss {objective(z, r, w):.5g}")
        return polish(z, w, polish_steps)

    weights = mask.astype(np.float64)
    z, final = optimise(z0, weights, steps)
    if not np.isfinite(final):
        raise ConfigError(f"the fit of {', '.join(names)} reached no finite loss (last {final!r}): the model gives no "
                          "finite prediction for some fitted row there; narrow the bounds or check the data")
    if progress:
        progress(f"polished: loss {final:.5g}")
    r_all, jac_z, pred_all = evaluate(z)
    flat = theta_of(z)
    theta = {n: v.astype(np.float64) for n, v in zip(names, np.split(flat, np.cumsum(sizes)[:-1]))}
    theta = {n: theta[n].reshape(sh) for n, sh in zip(names, shapes)}

    # Laplace / Gauss-Newton covariance in the flat vector of log values (chain rule through the map).
    dtheta = dtheta_of(z)
    at_bound = [labels[j] for j in range(flat.size) if min(flat[j] - lo[j], hi[j] - flat[j]) < 1e-3]
    jac = jac_z[mask] / np.where(dtheta > 1e-300, dtheta, np.inf)
    r = r_all[mask]
    dof = max(n_rows - flat.size, 1)
    s2 = max(float(r @ r) / dof, 1e-12 if noise is None else 1.0)
    # A parameter at its bound is fixed by the bound, not the data: it leaves the information matrix.
    free = np.array([labels[j] not in at_bound for j in range(flat.size)])
    info = jac[:, free].T @ jac[:, free] / s2 + np.diag(prior_prec[free])
    sd = np.zeros(flat.size)
    evals, evecs = np.linalg.eigh(info) if free.any() else (np.zeros(0), np.zeros((0, 0)))
    # A numerically null direction (the data do not see it at all) would swamp every variance through
    # round-off loadings: keep it out of the covariance and make only the parameters it really mixes
    # (loading > 0.05) unbounded.
    null = evals <= max(float(evals.max(initial=0.0)), 1e-300) * 1e-12
    cov = (evecs[:, ~null] / evals[~null]) @ evecs[:, ~null].T
    sd_free = np.sqrt(np.maximum(np.diag(cov), 0.0))
    for vec in evecs[:, null].T:
        sd_free[np.abs(vec) > 0.05] = np.inf
    sd[free] = sd_free
    free_labels = [lab for lab, f in zip(labels, free) if f]
    warnings, eigen = [], []
    for lam, vec in zip(evals, evecs.T):
        direction_sd = 1.0 / np.sqrt(max(lam, 1e-300))
        loads = {free_labels[j]: float(vec[j]) for j in np.argsort(-np.abs(vec)) if abs(vec[j]) > 0.25}
        eigen.append((float(direction_sd), loads))
        if direction_sd > unidentified_sd:
            combo = " ".join(f"{'+' if v > 0 else '-'}{abs(v):.2f}*ln({k})" for k, v in loads.items())
            warnings.append(f"not identified by these data: {combo} (sd {direction_sd:.2g} e-folds); "
                            "fix some of these or add data that separate them")
    for label in at_bound:
        warnings.append(f"{label} ended at its bound: the data push it past the allowed range")
    warnings += stopped
    out_sd, out_iv, out_theta = {}, {}, {}
    i = 0
    for n, k in zip(names, sizes):
        shape = np.shape(theta[n])
        out_theta[n] = theta[n]
        out_sd[n] = sd[i:i + k].reshape(shape)
        spread = np.minimum(Z90 * out_sd[n], 300.0)  # an unidentified direction: huge, not inf
        lo_n, hi_n = (np.reshape(b[i:i + k], shape) for b in (lo, hi))
        out_iv[n] = (np.exp(np.maximum(theta[n] - spread, lo_n)), np.exp(np.minimum(theta[n] + spread, hi_n)))
        i += k
    result = FitResult(HardwareParams({**params.log, **{n: jnp.asarray(theta[n], dtype) for n in names}}), list(names),
                       out_theta, out_sd, out_iv, at_bound, warnings, final, float(np.sqrt(np.mean(r ** 2))), n_rows,
                       eigen, predicted_start=pred0, predicted=pred_all)
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = []
        rows = np.flatnonzero(mask)
        for b in range(bootstrap):
            w = np.zeros(n_all)
            w[rows] = rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows))
            zb, _ = polish(z, w, polish_steps)
            draws.append(theta_of(zb))
            if progress:
                progress(f"bootstrap {b + 1}/{bootstrap}")
        bsd = np.std(np.array(draws), axis=0, ddof=1)
        i = 0
        for n, k in zip(names, sizes):
            result.bootstrap_sd[n] = bsd[i:i + k].reshape(np.shape(theta[n]))
            i += k
    return result
