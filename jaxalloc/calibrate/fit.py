"""Fit the accuracy curve (eq. 2) and the service time (eq. 1) of each task to measurements.

**Accuracy.** p(ℓ) = A (1 − e^{−bℓ}) + D (eq. 2) with A ∈ (0, 1], D ∈ [0, 1], A + D ≤ 1,
b > 0 is fitted by binomial maximum likelihood: each answer at budget ℓ_j is a Bernoulli
trial with success probability p(ℓ_j). Maximum likelihood rather than least squares
because the variance of a measured accuracy, p(1 − p)/n, changes along the curve and
vanishes near 0 and 1, where least squares would need weights it does not know.

The constraints are kept by a change of coordinates θ ∈ R³ whose image is exactly the
feasible box, boundary included:

    A + D = sin²θ₁,   D / (A + D) = sin²θ₂,   log b = lo + (hi − lo) sin²θ₃.

Unlike a logistic or softmax map, sin² reaches its bounds at finite θ: a fit on a
boundary (D = 0 as for AIME in Table I, or A + D = 1) is an ordinary minimum where
the negative log-likelihood grows like θ², not a point at infinity that an
optimiser chases until its step limit. b is confined to [e^lo, e^hi] with
b·ℓ_max-measured ≥ 10⁻³ (below, the curve is a straight line over the measured
budgets and A, b cannot be told apart) and b·ℓ_min-positive ≤ 30 (above, the curve
is saturated before the first positive budget). Fits near either end are flagged
`linear` (b·ℓ_max < 0.1) or `saturated` (b·ℓ_min-positive > 7).

The minimiser is **optimistix BFGS**: three smooth unconstrained coordinates, a few
dozen steps, exact gradients by autodiff, no least-squares structure to exploit (the
likelihood is not a sum of squares; Levenberg–Marquardt would need weights that
depend on the answer). Because p is linear in (A, D) for a fixed b, the start is the
best of a 49-point grid in log b with (A, D) by weighted linear least squares; BFGS
then runs from it and from three more spread-out starts (vmapped) and the best
optimum is kept. Everything is jit-compiled and vmapped over tasks (and, in the
tests, over hundreds of synthetic data sets at once).

**Intervals.** Standard errors come from the Fisher information Jᵀ W J in the
coordinates (A, log b, D), J the Jacobian of p(ℓ_j) by autodiff and
W_j = n_j / (p̃_j (1 − p̃_j)) with p̃_j = (n_j p_j + ½)/(n_j + 1) (the ½ keeps the
information finite where p is exactly 0 or 1). Wald intervals: A and D ± z·se clipped
to [0, 1]; b = exp(log b ± z·se), so its interval is asymmetric and positive.
Directions the data do not determine (an eigenvalue of the information below 10⁻¹⁰
of the largest: a flat curve, or a curve saturated before the first budget) give an
infinite standard error and the parameter's whole range as interval — never NaN.
Goodness of fit: deviance and Pearson χ² on (budgets − 3) degrees of freedom. When
Pearson's test rejects at 1% the covariance is scaled by the dispersion χ²/df
(quasi-binomial) and the fit is flagged `overdispersed`. The intervals treat answers
as independent; repeats of the same item at a low temperature are not, and show up
as overdispersion.

**Service time.** t = t0 + c ℓ (eq. 1) by weighted least squares on every answered item,
weights 1/σ_j² from a power law σ² = e^a m^γ in the mean time m fitted to the scatter
at each budget, with heteroscedasticity-robust (HC3 sandwich) standard errors and
Student-t intervals; with the aggregated
form, weighted least squares on the mean service time per budget (weights n) with
classical standard errors on (budgets − 2) degrees of freedom. A negative t0 is
refitted through the origin (t0 = 0). The fit is flagged `nonlinear` when some
budget's mean service time is more than 5% off the line and, with per-item rows,
more than 3 standard errors of (mean − line) off.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax.scipy.special import betainc, gammaincc, ndtri

from ..model import Problem, make_problem
from .data import MIN_BUDGETS, CalibrationError, Measurements, TaskTable, task_tables

B_SPAN_LOW = 1e-3  # smallest b·ℓ_hi: below it the curve is a line on the measured budgets
B_SPAN_HIGH = 30.0  # largest b·ℓ_min+: above it the curve is flat after the first positive budget
LINEAR_SPAN = 0.1  # flag `linear` when b·ℓ_hi is below: 1 − e^{−x} within 5% of x on the budgets
SATURATED_SPAN = 7.0  # flag `saturated` when b·ℓ_min+ is above: within e^{−7} ≈ 0.1% of A + D there
GRID = 49  # log-b grid for the starting point
SPREAD_STARTS = (0.25, 0.5, 0.75)  # further BFGS starts, as fractions of the log-b range
LINEAR_TOLERANCE = 0.05  # `nonlinear`: a budget's mean service time this far off the line...
LINEAR_SIGMAS = 3.0  # ...and this many standard errors of that mean
A_FLOOR = 1e-9  # profiles need A > 0; a fitted A = 0 (flat curve) is written as this
_P_EPS = 1e-12  # p clamped into [ε, 1 − ε] inside the log-likelihood


class FitFlag(enum.IntFlag):
    """What a fit could not determine or where it sits on a constraint (bit flags)."""

    NOT_CONVERGED = 1
    FLAT = 2
    D_AT_ZERO = 4
    MAX_AT_ONE = 8
    A_AT_ZERO = 16
    LINEAR = 32
    SATURATED = 64
    OVERDISPERSED = 128
    UNDETERMINED = 256
    NONLINEAR = 512
    T0_AT_ZERO = 1024
    C_NOT_POSITIVE = 2048

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def message(self) -> str:
        return _FLAG_MESSAGES[self]


_FLAG_MESSAGES = {
    FitFlag.NOT_CONVERGED: "the optimiser stopped before its tolerance",
    FitFlag.FLAT: "accuracy does not change measurably with the budget (likelihood-ratio test "
                  "against a constant, p > 0.05): A and b are not determined",
    FitFlag.D_AT_ZERO: "D = 0: the accuracy at budget 0 sits on its lower bound",
    FitFlag.MAX_AT_ONE: "A + D = 1: the curve saturates at accuracy 1 (upper bound)",
    FitFlag.A_AT_ZERO: "A = 0: no gain from thinking (written to the profile as A = 1e-9)",
    FitFlag.LINEAR: "hardly any curvature over the measured budgets (b·ℓ_max < 0.1): only the slope A·b "
                    "is determined, not A and b apart (measure larger budgets)",
    FitFlag.SATURATED: "accuracy saturates before the smallest positive budget (b·ℓ > 7 there): b is only "
                       "bounded below (measure smaller budgets)",
    FitFlag.OVERDISPERSED: "more scatter than binomial (Pearson test p < 0.01): intervals widened by "
                           "the dispersion; repeats of an item are not independent answers",
    FitFlag.UNDETERMINED: "some parameter is not determined by the data (infinite standard error)",
    FitFlag.NONLINEAR: "service time is not linear in the budget (a budget's mean is more than 5% off the line)",
    FitFlag.T0_AT_ZERO: "the intercept came out negative: refitted through the origin, t0 = 0",
    FitFlag.C_NOT_POSITIVE: "service time does not grow with the budget (c <= 0): no profile can be built",
}


def flag_labels(flags: int) -> list[str]:
    """The labels of the bits set in `flags`, in bit order."""
    return [f.label for f in FitFlag if int(flags) & f]


def accuracy_curve(budget, A, b, D):
    """p(ℓ) = A (1 − e^{−bℓ}) + D (eq. 2), written with expm1 for small bℓ."""
    return -A * jnp.expm1(-b * budget) + D


# ------------------------------------------------------------- the JAX core


def _params(theta, lo, hi):
    """(A, log b, D) from the sin² coordinates θ (see the module docstring)."""
    s = jnp.sin(theta) ** 2
    total, share_d = s[..., 0], s[..., 1]
    return total * (1 - share_d), lo + (hi - lo) * s[..., 2], total * share_d


def _coords(A, u, D):
    """θ from (A, u, D), u ∈ [0, 1] the position of log b in its range (starts are interior)."""
    total = A + D
    return jnp.stack([jnp.arcsin(jnp.sqrt(total)), jnp.arcsin(jnp.sqrt(D / total)), jnp.arcsin(jnp.sqrt(u))], -1)


def _nll_natural(A, logb, D, ell, y, n):
    """Binomial negative log-likelihood per answer, from the natural parameters."""
    p = jnp.clip(accuracy_curve(ell, A, jnp.exp(logb), D), _P_EPS, 1 - _P_EPS)
    return -jnp.sum(y * jnp.log(p) + (n - y) * jnp.log1p(-p)) / jnp.sum(n)


def _nll(theta, args):
    ell, y, n, lo, hi = args
    A, logb, D = _params(theta, lo, hi)
    return _nll_natural(A, logb, D, ell, y, n)


def _linear_start(u, ell, y, n, lo, hi, margin=1e-3):
    """For b = exp(lo + (hi − lo) u), (A, D) by least squares weighted by n, moved inside the triangle."""
    g = -jnp.expm1(-jnp.exp(lo + (hi - lo) * u) * ell)
    acc = y / jnp.maximum(n, 1)
    total = jnp.sum(n)
    gm, am = jnp.sum(n * g) / total, jnp.sum(n * acc) / total
    sgg = jnp.sum(n * (g - gm) ** 2)
    slope = jnp.sum(n * (g - gm) * (acc - am)) / jnp.maximum(sgg, 1e-300)
    D = jnp.clip(am - slope * gm, margin, 1 - 2 * margin)
    A = jnp.clip(slope, margin, 1 - D - margin)
    return A, D, _nll_natural(A, lo + (hi - lo) * u, D, ell, y, n)


def _distance_in_se(theta, args):
    """How far a Newton step would move θ, in standard errors: sqrt(N gᵀH⁻¹g) for the
    per-answer NLL (gradient g, Hessian H, N answers), H inverted on its non-negligible
    eigenvalues. optimistix's own test compares successive steps and can stall at
    roundoff level (about 1% of fits, gradients ~1e-8, values equal to a 1e-9 solve to
    all digits); this test accepts those and nothing statistically distinguishable."""
    g = jax.grad(_nll)(theta, args)
    evals, evecs = jnp.linalg.eigh(jax.hessian(_nll)(theta, args))
    size = jnp.abs(evals)
    proj = evecs.T @ g
    keep = size > 1e-12 * jnp.max(size)
    return jnp.sqrt(jnp.sum(args[2]) * jnp.sum(jnp.where(keep, proj**2 / jnp.where(keep, size, 1.0), 0.0)))


def _fit_one(ell, y, n, rtol, max_steps):
    """Binomial MLE of eq. 2 for one task (padded entries have n = 0)."""
    has = n > 0
    ell_hi = jnp.max(jnp.where(has, ell, 0.0))
    ell_pos = jnp.min(jnp.where(has & (ell > 0), ell, jnp.inf))
    lo, hi = jnp.log(B_SPAN_LOW / ell_hi), jnp.log(B_SPAN_HIGH / ell_pos)
    start = jax.vmap(_linear_start, in_axes=(0, None, None, None, None, None))
    grid = jnp.linspace(0.0, 1.0, GRID)
    _, _, values = start(grid, ell, y, n, lo, hi)
    us = jnp.concatenate([grid[jnp.argmin(values)][None], jnp.asarray(SPREAD_STARTS, dtype=grid.dtype)])
    us = jnp.clip(us, 1e-3, 1 - 1e-3)
    A0, D0, _ = start(us, ell, y, n, lo, hi)
    theta0 = _coords(A0, us, D0)
    solver = optx.BFGS(rtol=rtol, atol=rtol)
    args = (ell, y, n, lo, hi)
    sols = jax.vmap(lambda t: optx.minimise(_nll, solver, t, args, max_steps=max_steps, throw=False))(theta0)
    values = jax.vmap(_nll, in_axes=(0, None))(sols.value, args)
    best = jnp.argmin(jnp.where(jnp.isfinite(values), values, jnp.inf))
    theta = sols.value[best]
    A, logb, D = _params(theta, lo, hi)
    converged = (sols.result == optx.RESULTS.successful)[best] | (_distance_in_se(theta, args) < 1e-4)
    phi = jnp.stack([A, logb, D])
    p_of = lambda f: accuracy_curve(ell, f[0], jnp.exp(f[1]), f[2])
    jac = jax.jacfwd(p_of)(phi)
    p = p_of(phi)
    smooth = (n * p + 0.5) / (n + 1)
    weight = n / (smooth * (1 - smooth))
    info = jac.T @ (weight[:, None] * jac)
    return {"A": A, "logb": logb, "D": D, "lo": lo, "hi": hi, "p": p, "info": info, "converged": converged,
                "steps": sols.stats["num_steps"][best]}


@jax.jit
def _fit_batch(ell, y, n):
    rtol = 1e-6 if ell.dtype == jnp.float64 else 1e-3
    return jax.vmap(lambda a, b, c: _fit_one(a, b, c, rtol, 500))(ell, y, n)


# ------------------------------------------------------------ statistics


def chi2_sf(x, df):
    """P(χ²_df > x) for df ≥ 1 (NaN-free: 1 where df < 1)."""
    x, df = np.asarray(x, dtype=np.float64), np.asarray(df, dtype=np.float64)
    safe = np.where(df >= 1, df, 1.0)
    return np.where(df >= 1, np.asarray(gammaincc(safe / 2, np.maximum(x, 0) / 2)), 1.0)


def normal_quantile(q: float) -> float:
    """The q quantile of the standard normal."""
    return float(ndtri(q))


@functools.lru_cache(maxsize=256)
def t_quantile(q: float, df: float) -> float:
    """The q quantile (q ≥ ½) of Student's t with `df` degrees of freedom, by bisection on
    its distribution function 1 − ½ I_{ν/(ν+t²)}(ν/2, ½)."""
    if not 0.5 <= q < 1 or df <= 0:
        raise CalibrationError(f"t quantile: q = {q}, df = {df}: need 0.5 <= q < 1 and df > 0")
    cdf = lambda t: 1 - 0.5 * float(betainc(df / 2, 0.5, df / (df + t * t)))
    hi = 1.0
    while cdf(hi) < q:
        hi *= 2
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
        if hi - lo <= 1e-14 * hi:
            break
    return 0.5 * (lo + hi)


def _covariance(info: np.ndarray, rel_tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-inverse of Fisher informations (..., 3, 3) and a mask of undetermined
    parameters (those with weight in an eigenvector whose eigenvalue is below
    `rel_tol` of the largest)."""
    evals, evecs = np.linalg.eigh(info)
    keep = evals > rel_tol * np.max(evals, axis=-1, keepdims=True)
    inv = np.where(keep, 1 / np.where(keep, evals, 1.0), 0.0)
    cov = (evecs * inv[..., None, :]) @ np.swapaxes(evecs, -1, -2)
    weight_lost = np.sum(np.where(keep[..., None, :], 0.0, evecs**2), axis=-1)
    return cov, weight_lost > 1e-6


class AccuracyFit(NamedTuple):
    """A fit of eq. 2 (fields are NumPy arrays; a leading batch shape when fitted in batch).

    - `A`, `b`, `D`: the maximum-likelihood estimates.
    - `se_A`, `se_b`, `se_D`: standard errors (inf where undetermined).
    - `ci_A`, `ci_b`, `ci_D`: intervals at `level`, shape (..., 2), inside the feasible range.
    - `level`: their confidence level.
    - `loglik`: the binomial log-likelihood (without the binomial coefficients).
    - `deviance`, `pearson`, `df`, `p_value`: goodness of fit (χ² on `df` = budgets − 3;
      `p_value` from the deviance; 1 where df = 0).
    - `dispersion`: Pearson χ² / df (1 where df = 0).
    - `flat_p_value`: likelihood-ratio test of the curve against a constant accuracy (χ², 2 df).
    - `rmse`: answer-weighted root-mean-square of measured minus fitted accuracy.
    - `steps`: BFGS steps of the kept start.
    - `flags`: :class:`FitFlag` bits.
    """

    A: np.ndarray
    b: np.ndarray
    D: np.ndarray
    se_A: np.ndarray
    se_b: np.ndarray
    se_D: np.ndarray
    ci_A: np.ndarray
    ci_b: np.ndarray
    ci_D: np.ndarray
    level: float
    loglik: np.ndarray
    deviance: np.ndarray
    pearson: np.ndarray
    df: np.ndarray
    p_value: np.ndarray
    dispersion: np.ndarray
    flat_p_value: np.ndarray
    rmse: np.ndarray
    steps: np.ndarray
    flags: np.ndarray


def _xlogy(x, y):
    return np.where(x > 0, x * np.log(np.where(x > 0, y, 1.0)), 0.0)


def fit_accuracy(budgets, successes, trials, *, level: float = 0.95) -> AccuracyFit:
    """Binomial maximum-likelihood fit of p(ℓ) = A (1 − e^{−bℓ}) + D (eq. 2).

    **Arguments:**

    - `budgets`: ℓ_j, shape (m,) or (B, m) for B independent fits at once.
    - `successes`: correct answers at each budget (may be fractional: accuracy × n).
    - `trials`: answers at each budget; entries with 0 trials are ignored (padding).
      At least three distinct budgets with trials are needed per fit.
    - `level`: confidence level of the intervals.

    **Returns:** an :class:`AccuracyFit` with the batch shape of the inputs.
    """
    if not 0 < level < 1:
        raise CalibrationError(f"level = {level}: must be in (0, 1)")
    ell = np.atleast_2d(np.asarray(budgets, dtype=np.float64))
    y = np.atleast_2d(np.asarray(successes, dtype=np.float64))
    n = np.atleast_2d(np.asarray(trials, dtype=np.float64))
    if not (ell.shape == y.shape == n.shape):
        raise CalibrationError(f"budgets, successes, trials: shapes {ell.shape}, {y.shape}, {n.shape} differ")
    for name, v in (("budgets", ell), ("successes", y), ("trials", n)):
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise CalibrationError(f"{name}: must be finite and >= 0")
    if np.any(y > n):
        raise CalibrationError("successes: more than trials")
    distinct = np.array([np.unique(e[t > 0]).size for e, t in zip(ell, n)])
    if np.any(distinct < MIN_BUDGETS):
        raise CalibrationError(f"budgets: {distinct.min()} distinct budgets with answers; at least {MIN_BUDGETS} needed")
    dtype = jnp.asarray(0.0).dtype
    raw = jax.tree_util.tree_map(np.asarray, _fit_batch(*(jnp.asarray(v, dtype) for v in (ell, y, n))))
    fit = _summarise(raw, ell, y, n, level)
    if np.ndim(budgets) == 1:
        fit = jax.tree_util.tree_map(lambda x: x[0] if isinstance(x, np.ndarray) else x, fit)
    return fit


def _summarise(raw: dict, ell, y, n, level: float) -> AccuracyFit:
    """Standard errors, intervals, goodness of fit and flags from the raw batched fit."""
    A, logb, D, p = raw["A"], raw["logb"], raw["D"], np.clip(raw["p"], _P_EPS, 1 - _P_EPS)
    A, D = np.where(A < 1e-12, 0.0, A), np.where(D < 1e-12, 0.0, D)  # boundary values to the bound
    total = n.sum(-1)
    loglik = np.sum(_xlogy(y, p) + _xlogy(n - y, 1 - p), -1)
    deviance = 2 * np.sum(_xlogy(y, y / np.maximum(n * p, 1e-300)) + _xlogy(n - y, (n - y) / np.maximum(n * (1 - p), 1e-300)), -1)
    pearson = np.sum((y - n * p) ** 2 / (np.maximum(n, 1) * p * (1 - p)), -1)  # padding: y = n = 0
    df = np.sum(n > 0, -1) - 3
    p_value = chi2_sf(deviance, df)
    pearson_p = chi2_sf(pearson, df)
    dispersion = np.where(df > 0, pearson / np.maximum(df, 1), 1.0)
    overdispersed = (df > 0) & (pearson_p < 0.01)
    p0 = np.clip(y.sum(-1) / total, _P_EPS, 1 - _P_EPS)
    loglik0 = np.sum(_xlogy(y, p0[:, None]) + _xlogy(n - y, 1 - p0[:, None]), -1)
    flat_p = chi2_sf(2 * np.maximum(loglik - loglik0, 0.0), 2)
    rmse = np.sqrt(np.sum(n * (y / np.maximum(n, 1) - p) ** 2, -1) / total)

    cov, undetermined = _covariance(raw["info"])
    cov = cov * np.where(overdispersed, np.maximum(dispersion, 1.0), 1.0)[:, None, None]
    se = np.sqrt(np.maximum(np.diagonal(cov, axis1=-2, axis2=-1), 0.0))
    se = np.where(undetermined, np.inf, se)
    z = normal_quantile(0.5 + level / 2)
    with np.errstate(over="ignore", invalid="ignore"):
        ci_A = np.clip(np.stack([A - z * se[:, 0], A + z * se[:, 0]], -1), 0.0, 1.0)
        ci_D = np.clip(np.stack([D - z * se[:, 2], D + z * se[:, 2]], -1), 0.0, 1.0)
        ci_b = np.exp(np.stack([logb - z * se[:, 1], logb + z * se[:, 1]], -1))
    b = np.exp(logb)
    has = n > 0
    ell_hi = np.max(np.where(has, ell, 0.0), -1)
    ell_pos = np.min(np.where(has & (ell > 0), ell, np.inf), -1)
    bits = [
        (~raw["converged"].astype(bool), FitFlag.NOT_CONVERGED),
        (flat_p > 0.05, FitFlag.FLAT),
        (D < 1e-8, FitFlag.D_AT_ZERO),
        (A + D > 1 - 1e-8, FitFlag.MAX_AT_ONE),
        (A < 1e-8, FitFlag.A_AT_ZERO),
        ((b * ell_hi < LINEAR_SPAN) & (A > 1e-8), FitFlag.LINEAR),
        ((b * ell_pos > SATURATED_SPAN) & (A > 1e-8), FitFlag.SATURATED),
        (overdispersed, FitFlag.OVERDISPERSED),
        (np.any(undetermined, -1), FitFlag.UNDETERMINED),
    ]
    flags = sum(np.where(cond, int(bit), 0) for cond, bit in bits).astype(np.int64)
    return AccuracyFit(
        A=A, b=b, D=D, se_A=se[:, 0], se_b=b * se[:, 1], se_D=se[:, 2], ci_A=ci_A, ci_b=ci_b, ci_D=ci_D,
        level=level, loglik=loglik, deviance=deviance, pearson=pearson, df=df, p_value=p_value,
        dispersion=dispersion, flat_p_value=flat_p, rmse=rmse, steps=raw["steps"], flags=flags,
    )


# ------------------------------------------------------------- service time


class LatencyFit(NamedTuple):
    """A fit of t(ℓ) = t0 + c ℓ (eq. 1) for one task.

    - `t0`, `c`: estimates (seconds, seconds per token); `se_t0`, `se_c`; `ci_t0`,
      `ci_c` ((lo, hi) at `level`).
    - `r2`: coefficient of determination of the fit (rows, or weighted means).
    - `max_rel_deviation`: largest |mean service time − line| / mean over the budgets.
    - `rows`: data points used (answers, or budgets for the aggregated form).
    - `flags`: :class:`FitFlag` bits (`nonlinear`, `t0_at_zero`, `c_not_positive`).
    """

    t0: float
    c: float
    se_t0: float
    se_c: float
    ci_t0: tuple[float, float]
    ci_c: tuple[float, float]
    level: float
    r2: float
    max_rel_deviation: float
    rows: int
    flags: int


def fit_latency(budgets, times, counts=None, *, level: float = 0.95) -> LatencyFit:
    """Least-squares fit of the service time t(ℓ) = t0 + c ℓ (eq. 1).

    **Arguments:**

    - `budgets`, `times`: one entry per answered item (seconds), or, with `counts`, one
      mean service time per budget.
    - `counts`: None for per-item times; else the answers behind each mean.
    - `level`: confidence level of the intervals.

    Per-item times: weighted least squares with weights 1/σ_j², σ_j² = e^a m_j^γ a power
    law in the mean time m_j fitted to the sample variances at each budget (service time
    usually scatters more at large budgets, and unweighted least squares would let that
    scatter swamp t0), standard errors by the HC3 sandwich (right even when the power law
    is off), Student t on rows − 2 degrees of freedom. With a budget measured only once,
    the weights are equal (ordinary least squares). Means: weights n_j, classical standard errors on budgets − 2 degrees of
    freedom. A negative intercept is refitted through the origin (`t0_at_zero`).

    **Returns:** a :class:`LatencyFit`.
    """
    ell = np.asarray(budgets, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if ell.shape != t.shape or ell.ndim != 1:
        raise CalibrationError(f"budgets, times: shapes {ell.shape}, {t.shape} differ")
    levels, inverse = np.unique(ell, return_inverse=True)
    if levels.size < 2:
        raise CalibrationError("budgets: a line needs at least two distinct budgets")
    k = np.bincount(inverse).astype(np.float64)
    if counts is None:
        means = np.bincount(inverse, weights=t) / k
        var = np.bincount(inverse, weights=(t - means[inverse]) ** 2) / np.maximum(k - 1, 1)
        var = np.maximum(var, 1e-12 * var.max() + 1e-300)  # identical times: no infinite weight
        w = 1 / _variance_function(means, var, k)[inverse] if k.min() >= 2 else np.ones_like(t)
        se_means = np.sqrt(var / k)
    else:
        w = np.asarray(counts, dtype=np.float64)
        if w.shape != t.shape:
            raise CalibrationError(f"counts: shape {w.shape}, times have {t.shape}")
        means = np.bincount(inverse, weights=w * t) / np.bincount(inverse, weights=w)
        se_means = np.zeros_like(means)
    robust = counts is None
    X = np.stack([np.ones_like(ell), ell], -1)
    flags = 0
    beta, cov, dof = _least_squares(X, t, w, robust)
    if beta[0] < 0:  # t0 >= 0: refit through the origin
        flags |= FitFlag.T0_AT_ZERO
        slope, cov1, dof = _least_squares(X[:, 1:], t, w, robust)
        beta = np.array([0.0, slope[0]])
        cov = np.array([[cov[0, 0], 0.0], [0.0, cov1[0, 0]]])
    if beta[1] <= 0:
        flags |= FitFlag.C_NOT_POSITIVE
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    q = t_quantile(0.5 + level / 2, dof) if dof > 0 else math.inf
    ci_t0 = (max(0.0, beta[0] - q * se[0]), beta[0] + q * se[0])
    ci_c = (beta[1] - q * se[1], beta[1] + q * se[1])
    mean_t = np.sum(w * t) / np.sum(w)
    sst = np.sum(w * (t - mean_t) ** 2)
    r2 = 1 - np.sum(w * (t - X @ beta) ** 2) / sst if sst > 0 else 1.0
    # nonlinear: a budget's mean off the line by > 5% of that mean and, with per-item rows,
    # by > 3 standard errors of (mean − line)
    line = beta[0] + beta[1] * levels
    line_var = cov[0, 0] + 2 * levels * cov[0, 1] + levels**2 * cov[1, 1]
    gap = np.abs(means - line)
    rel = gap / np.maximum(np.abs(means), 1e-300)
    off = rel > LINEAR_TOLERANCE
    if robust:
        off &= gap > LINEAR_SIGMAS * np.sqrt(se_means**2 + line_var)
    if np.any(off):
        flags |= FitFlag.NONLINEAR
    return LatencyFit(
        t0=float(beta[0]), c=float(beta[1]), se_t0=float(se[0]), se_c=float(se[1]),
        ci_t0=(float(ci_t0[0]), float(ci_t0[1])), ci_c=(float(ci_c[0]), float(ci_c[1])), level=level,
        r2=float(r2), max_rel_deviation=float(rel.max()), rows=int(t.size), flags=int(flags),
    )


def _variance_function(means, var, counts):
    """Smoothed variances s_j² ≈ exp(a) m_j^γ: a power law in the mean service time fitted
    to the sample variances by least squares on logs (weights k_j − 1). Weights from raw
    sample variances of ~30 times each correlate with the residuals and make the sandwich
    intervals too short (c covered 92.6% of the time at 95%); two parameters do not."""
    x, y, wt = np.log(np.maximum(means, 1e-300)), np.log(var), counts - 1
    if np.ptp(x) == 0:
        return np.full_like(var, np.exp(np.sum(wt * y) / np.sum(wt)))
    slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(wt))
    return np.exp(intercept + slope * x)


def _least_squares(X, t, w, robust: bool):
    """Weighted least squares: coefficients, their covariance (HC3 sandwich if `robust`,
    else classical with the weighted residual variance) and the residual degrees of freedom."""
    Xw = X * w[:, None]
    bread = np.linalg.inv(X.T @ Xw)
    beta = bread @ (Xw.T @ t)
    resid = t - X @ beta
    dof = X.shape[0] - X.shape[1]
    if robust:  # HC3: residuals inflated by their leverage h_i = w_i x_iᵀ (XᵀWX)⁻¹ x_i
        leverage = w * np.einsum("ij,jk,ik->i", X, bread, X)
        scaled = w * resid / (1 - np.minimum(leverage, 1 - 1e-12))
        cov = bread @ ((X * scaled[:, None] ** 2).T @ X) @ bread
    else:
        cov = bread * (np.sum(w * resid**2) / max(dof, 1))
    return beta, cov, dof


# ------------------------------------------------------------------ per file


class TaskFit(NamedTuple):
    """One task's data and fits: `table` (:class:`~jaxalloc.calibrate.data.TaskTable`),
    `accuracy` (:class:`AccuracyFit`), `latency` (:class:`LatencyFit`, None without
    service times) and `queries`, the mean number of answers per budget (π from counts)."""

    name: str
    table: TaskTable
    accuracy: AccuracyFit
    latency: LatencyFit | None
    queries: float


class Calibration(NamedTuple):
    """The fits of every task in a measurement file (`form`, `source`, `rows` describe it)."""

    tasks: tuple[TaskFit, ...]
    form: str
    source: str
    rows: int
    level: float

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)


def fit_measurements(m: Measurements, *, level: float = 0.95) -> Calibration:
    """Fit eq. 2 and eq. 1 to every task of a measurement file (accuracy fits in one
    vmapped call; budgets and tasks padded to multiples of 8 so that files of similar
    size share a compilation).

    **Returns:** a :class:`Calibration`.
    """
    tables = task_tables(m)
    width = 8 * math.ceil(max(t.budgets.size for t in tables) / 8)
    pad = lambda v, fill: np.concatenate([v, np.full(width - v.size, fill)])
    rows = tables + [tables[0]] * (-len(tables) % 8)  # tasks padded too: one compilation for 1–8 tasks
    ell = np.stack([pad(t.budgets, t.budgets[-1]) for t in rows])
    y = np.stack([pad(t.successes, 0.0) for t in rows])
    n = np.stack([pad(t.trials, 0.0) for t in rows])
    batch = fit_accuracy(ell, y, n, level=level)
    fits = []
    for k, t in enumerate(tables):
        acc = jax.tree_util.tree_map(lambda x, k=k: x[k] if isinstance(x, np.ndarray) else x, batch)
        lat = None
        if t.service_times is not None:
            lat = fit_latency(t.service_budgets, t.service_times, t.service_counts, level=level)
        fits.append(TaskFit(t.name, t, acc, lat, float(t.trials.mean())))
    return Calibration(tuple(fits), m.form, m.source, len(m), level)


def task_shares(cal: Calibration, prob: str | Mapping[str, float] | Sequence[float] | None = None) -> np.ndarray:
    """The task mix π: from the counts in the file (None: π_k ∝ answers per budget of
    task k), ``"uniform"``, a mapping task → share, or shares in task order. Given shares
    must name every task once and sum to 1 within 1e-6 (the profile contract)."""
    names = cal.names
    if prob is None:
        q = np.array([t.queries for t in cal.tasks])
        return q / q.sum()
    if isinstance(prob, str):
        if prob != "uniform":
            raise CalibrationError(f"prob = {prob!r}: expected 'uniform', task=share pairs or shares")
        return np.full(len(names), 1.0 / len(names))
    if isinstance(prob, Mapping):
        for key in prob:
            if key not in names:
                raise CalibrationError(f"prob: task {key!r}: not in the measurements (tasks: {', '.join(names)})")
        missing = [n for n in names if n not in prob]
        if missing:
            raise CalibrationError(f"prob: task {missing[0]!r}: no share given (give every task a share)")
        shares = np.array([float(prob[n]) for n in names])
    else:
        shares = np.asarray(prob, dtype=np.float64)
        if shares.shape != (len(names),):
            raise CalibrationError(f"prob: {shares.size} shares for {len(names)} tasks")
    for name, s in zip(names, shares):
        if not math.isfinite(s) or s <= 0:
            raise CalibrationError(f"prob: {name} = {s:g}: must be > 0")
    if abs(shares.sum() - 1) > 1e-6:
        raise CalibrationError(f"prob: shares sum to {shares.sum():.9g}, must sum to 1 (within 1e-6)")
    return shares


def calibrated_problem(
    cal: Calibration,
    *,
    arrival_rate: float | None = None,
    alpha: float | None = None,
    max_tokens: float | None = None,
    prob: str | Mapping[str, float] | Sequence[float] | None = None,
    server: Mapping | None = None,
) -> Problem:
    """The :class:`~jaxalloc.model.Problem` of the fitted parameters.

    **Arguments:**

    - `cal`: :func:`fit_measurements`' result (with service times).
    - `arrival_rate`, `alpha`, `max_tokens`: λ, α, ℓ_max; None takes the paper's
      (0.1, 30, 32768, from the bundled profile).
    - `prob`: the task mix, see :func:`task_shares`.
    - `server`: a profile's ``[server]`` table (:func:`jaxalloc.servers.server_from_dict`,
      e.g. from `jaxalloc calibrate batching`); None: one FIFO server, the paper's.

    **Returns:** a validated :class:`Problem` (raises :class:`CalibrationError` without
    service times or with c ≤ 0, :class:`~jaxalloc.model.ProblemError` for bad λ, α, ℓ_max,
    a bad server table or an unstable queue). A fitted A = 0 is written as 1e-9 (with D lowered if needed).
    """
    from ..model import paper_profile

    paper = paper_profile()
    defaults = {"arrival_rate": arrival_rate, "alpha": alpha, "max_tokens": max_tokens}
    point = {k: float(getattr(paper, k)) if v is None else float(v) for k, v in defaults.items()}
    cols: dict[str, list[float]] = {f: [] for f in ("A", "b", "D", "t0", "c")}
    for t in cal.tasks:
        if t.latency is None:
            raise CalibrationError(
                f"{cal.source}: task {t.name!r}: no service times (add a service_s column) so t0 and c cannot be fitted"
            )
        if t.latency.c <= 0:
            raise CalibrationError(
                f"task {t.name!r}: c = {t.latency.c:.3g} s/token: the service time does not grow with the budget"
            )
        A = max(float(t.accuracy.A), A_FLOOR)
        cols["A"].append(A)
        cols["D"].append(min(float(t.accuracy.D), 1 - A))
        cols["b"].append(float(t.accuracy.b))
        cols["t0"].append(t.latency.t0)
        cols["c"].append(t.latency.c)
    built = None
    if server is not None:
        from ..servers import server_from_dict

        built = server_from_dict(server, tuple(cal.names))
    return make_problem(**point, prob=task_shares(cal, prob), names=cal.names, server=built, **cols)

