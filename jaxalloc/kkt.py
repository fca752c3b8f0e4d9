"""The KKT conditions (eqs. 17–23) solved per task in closed form through Lambert W.

For fixed aggregate moments (m1, m2) = (E[S], E[S²]) the stationarity condition
(eq. 17 with γ = 0, divided by π_k) decouples across tasks:

    α A_k b_k e^{−b_k ℓ_k} = c_k (T1 + 2 T2 t_k(ℓ_k)),

where T1 = ∂E[T]/∂m1 and T2 = ∂E[T]/∂m2 are the marginal delay costs of the
moments (taken by autodiff of :func:`jaxalloc.objective.mean_system_time`, so
the delay formula exists once). This is eq. 19, ℓ_k − L_k e^{−b_k ℓ_k} = K_k,
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


def unprojected_response(problem: Problem, m1, m2, log_scale=None) -> Float[Array, " N"]:
    """ℓ̂(m1, m2) of eq. 22, before the projection onto [0, ℓ_max] (may be negative).

    **Arguments:** as :func:`best_response`.
    """
    T1, T2 = delay_prices(problem.arrival_rate, m1, m2)
    b, c = problem.b, problem.c
    if log_scale is None:
        log_scale = log_response_scale(problem)
    log_bL = log_scale - jnp.log(2.0 * T2)  # log(b_k L_k), L_k of eq. 20
    K = -(T1 + 2.0 * T2 * problem.t0) / (2.0 * T2 * c)  # eq. 21
    s = log_bL - b * K  # log z_k of eq. 22, z_k itself never formed
    log_w = log_lambertw_log(s)  # log W(z), from s, with no logarithm evaluated
    return (log_bL - log_w) / b  # = K + W(z)/b (eq. 22)


def best_response(problem: Problem, m1, m2, log_scale=None) -> Float[Array, " N"]:
    """Budgets ℓ(m1, m2) solving the KKT conditions at the given moments (eqs. 20–23).

    **Arguments:**

    - `problem`: the problem.
    - `m1`, `m2`: E[S] and E[S²] with λ m1 < 1.
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
