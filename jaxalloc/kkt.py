"""The KKT conditions (eqs. 17–23) solved per task in closed form through Lambert W.

For fixed aggregate moments (m1, m2) = (E[S], E[S²]) the stationarity condition
(eq. 17 with γ = 0, divided by π_k) decouples across tasks:

    α A_k b_k e^{−b_k ℓ_k} = c_k (T1 + 2 T2 t_k(ℓ_k)),

where T1 = ∂E[T]/∂m1 and T2 = ∂E[T]/∂m2 are the marginal delay costs of the
moments (taken by autodiff of the delay of the problem's server,
:meth:`jaxalloc.servers.Server.delay`, so the delay formula exists once; this
needs an *aggregate* server, one whose delay depends on ℓ only through
(m1, m2): FIFO with any number of servers, and batching). This is eq. 19, ℓ_k − L_k e^{−b_k ℓ_k} = K_k,
with L_k = α A_k b_k / (2 T2 c_k²) (eq. 20) and
K_k = −(T1 + 2 T2 t0_k) / (2 T2 c_k) (eq. 21); for the M/G/1 delay these are
exactly the paper's expressions. Its root is eq. 22,

    ℓ̂_k = K_k + W(z_k) / b_k,   z_k = b_k L_k e^{−b_k K_k},

and projecting onto [0, ℓ_max] gives eq. 23. z_k overflows float64 for a few
percent of realistic operating points, so W is evaluated on s_k = log z_k, and
since w + log w = s we use the algebraically equal form
ℓ̂_k = (log(b_k L_k) − log w_k) / b_k, which avoids the cancellation between
the large negative K_k and W/b_k; log w_k comes straight from the Lambert-W
iteration (:func:`jaxalloc.lambertw.log_lambertw_log`).

**T2 ≈ 0.** Where a queue never forms (a batching server whose batch cap B
practically never binds) E[T] hardly depends on E[S²]: T2 can underflow to 0
and L_k, K_k to ±inf. Its limit is the root of α A_k b_k e^{−b_k ℓ} = c_k T1,
ℓ_k = log(α A_k b_k / (c_k T1)) / b_k. :func:`price_floor` keeps T2 at least
δ T1, δ = ε² min_k(b_k / c_k) (ε the dtype's epsilon): there the relative
change T2 makes to the right-hand side over the budgets that matter is below
ε², so the floored response equals the limit to rounding, and every quantity
stays finite (no NaN, finite derivatives). One FIFO server has T2 ≥ λ/2 and
never meets the floor. There s_k = log z_k is huge (~1/r_k, r_k = 2 T2 c_k /
(b_k T1)), beyond the range where the Lambert-W iteration is accurate
(~1e20): above :data:`LARGE_S` :func:`log_lambertw_large` takes log w from
its asymptotic series instead (log w = log(s − log w), iterated).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from .lambertw import log_lambertw_log
from .model import Problem
from .objective import delay_prices, moments


def log_response_scale(problem: Problem) -> Float[Array, " N"]:
    """log(α A_k b_k² / c_k²): the part of log(b_k L_k) (eq. 20) that does not
    depend on the moments. Solvers that call :func:`best_response` in a loop
    compute it once and pass it in (four logarithms per task per call saved)."""
    return jnp.log(problem.alpha) + jnp.log(problem.A) + 2.0 * jnp.log(problem.b) - 2.0 * jnp.log(problem.c)


LARGE_S = 1e15
"""Above this s, log W(e^s) comes from the iteration log w ← log(s − log w)
(relative error (log s / s)^3 after three steps), not from the Lambert-W
iteration, which loses accuracy beyond ~1e20 (float64)."""


def log_lambertw_large(s) -> Array:
    """log W(e^s) for s ≥ :data:`LARGE_S`: three steps of log w = log(s − log w) from log s."""
    log_w = jnp.log(s)
    for _ in range(3):
        log_w = jnp.log(s - log_w)
    return log_w


def log_lambertw_any(s) -> Array:
    """log W(e^s): :func:`jaxalloc.lambertw.log_lambertw_log`, or :func:`log_lambertw_large`
    above :data:`LARGE_S` (each branch fed only values it handles, so no NaN reaches a gradient)."""
    big = s > LARGE_S
    return jnp.where(big, log_lambertw_large(jnp.where(big, s, LARGE_S)), log_lambertw_log(jnp.where(big, 0.0, s)))


def price_floor(problem: Problem) -> Array:
    """δ = ε² min_k(b_k / c_k): :func:`unprojected_response` uses max(T2, δ T1)
    for T2 (see the module docstring)."""
    eps = jnp.finfo(problem.A.dtype).eps
    return eps * eps * jnp.min(problem.b / problem.c, axis=-1)


def floored_prices(T1, T2, floor):
    """(T1, max(T2, δ T1)) with δ = `floor` (:func:`price_floor`)."""
    return T1, jnp.where(T2 >= floor * T1, T2, floor * T1)


def unprojected_response(problem: Problem, m1, m2, log_scale=None) -> Float[Array, " N"]:
    """ℓ̂(m1, m2) of eq. 22, before the projection onto [0, ℓ_max] (may be negative).

    **Arguments:** as :func:`best_response`. The delay prices are those of
    `problem.server` (an aggregate server).
    """
    T1, T2 = floored_prices(*delay_prices(problem.arrival_rate, m1, m2, problem.server), price_floor(problem))
    b, c = problem.b, problem.c
    if log_scale is None:
        log_scale = log_response_scale(problem)
    log_bL = log_scale - jnp.log(2.0 * T2)  # log(b_k L_k), L_k of eq. 20
    K = -(T1 + 2.0 * T2 * problem.t0) / (2.0 * T2 * c)  # eq. 21
    s = log_bL - b * K  # log z_k of eq. 22, z_k itself never formed
    log_w = log_lambertw_any(s)  # log W(z), from s (no logarithm evaluated below LARGE_S)
    return (log_bL - log_w) / b  # = K + W(z)/b (eq. 22)


def best_response(problem: Problem, m1, m2, log_scale=None) -> Float[Array, " N"]:
    """Budgets ℓ(m1, m2) solving the KKT conditions at the given moments (eqs. 20–23).

    **Arguments:**

    - `problem`: the problem.
    - `m1`, `m2`: E[S] and E[S²] with λ m1 below the server's capacity (1 for one server).
    - `log_scale`: :func:`log_response_scale` of `problem`, if already known.

    **Returns:** ℓ clipped to [0, ℓ_max], shape (N,). The fixed point
    ℓ = best_response(moments(ℓ)) is the optimum ℓ* of (9).
    """
    return jnp.clip(unprojected_response(problem, m1, m2, log_scale), 0.0, problem.max_tokens)  # eq. 23


def fixed_point_map(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, " N"]:
    """The projected map ℓ ↦ P(ℓ̂(ℓ)) of eq. 24."""
    m1, m2 = moments(problem, budgets)
    return best_response(problem, m1, m2)


def fixed_point_residual(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, ""]:
    """‖P(ℓ̂(ℓ)) − ℓ‖∞ in tokens: zero exactly at the optimum."""
    return jnp.max(jnp.abs(fixed_point_map(problem, budgets) - budgets), axis=-1)
