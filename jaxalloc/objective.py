"""The objective J(ℓ) of eq. 7, written once, and the queue quantities it is made of.

Everything else in the package (solvers, bounds, verification, simulation
checks) calls these functions; gradients and Hessians come from autodiff.

The queue depends on the budgets only through the two service-time moments
m1 = E[S] and m2 = E[S²] (eq. 3), so the delay is written as a function of
(λ, m1, m2): :func:`mean_wait` (Pollaczek–Khinchine, eq. 5) and
:func:`mean_system_time` (eq. 6). Outside the stability region λ m1 ≥ 1
(eq. 4) the delay is +inf and J is −inf, with finite (zero) gradients: no NaN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from .model import Problem


def over_tasks(op, x, axis: int = -1):
    """Reduce `x` over its task axis with `op` (jnp.add or jnp.maximum).

    Up to 16 tasks it is written out slice by slice: XLA:CPU runs a reduction
    over a short axis as a separate library kernel, which the slices avoid
    (measured on 2 cores, N = 6: the max of :func:`kkt_residual` over 102,400
    points 8.5 → 5.1 ms; the six sums of a batched Newton linearisation took a
    third of a step as reductions). Beyond, a plain reduction. The sum's
    derivative is a plain sum (:func:`_sum_of_slices`)."""
    if x.shape[axis] > 16:
        return jnp.sum(x, axis) if op is jnp.add else jnp.max(x, axis)
    if op is jnp.add:
        return _sum_of_slices(x, axis)
    return _reduce_slices(op, x, axis)


def _reduce_slices(op, x, axis):
    return functools.reduce(op, [lax.index_in_dim(x, i, axis, keepdims=False) for i in range(x.shape[axis])])


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sum_of_slices(x, axis):
    return _reduce_slices(jnp.add, x, axis)


@_sum_of_slices.defjvp
def _sum_of_slices_jvp(axis, primals, tangents):
    # the tangent as one jnp.sum, whose transpose (reverse mode) is a broadcast
    # rather than a padded copy of every slice (a sweep block at N = 6: 4-10% faster)
    return _sum_of_slices(primals[0], axis), jnp.sum(tangents[0], axis)


def service_times(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, " N"]:
    """t_k(ℓ_k) = t0_k + c_k ℓ_k, seconds (eq. 1)."""
    return problem.t0 + problem.c * budgets


def task_accuracy(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, " N"]:
    """p_k(ℓ_k) = A_k (1 − e^{−b_k ℓ_k}) + D_k (eq. 2).

    Written with `exp`, not `expm1`: JAX differentiates expm1(x) as
    expm1(x) + 1, which cancels for large b_k ℓ_k and leaves the gradient and
    Hessian with an absolute rather than a relative error there.
    """
    return problem.A * (1.0 - jnp.exp(-problem.b * budgets)) + problem.D


def mean_accuracy(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, ""]:
    """Σ_k π_k p_k(ℓ_k), the accuracy term of eq. 7 (without α)."""
    return over_tasks(jnp.add, problem.prob * task_accuracy(problem, budgets))


def moments(problem: Problem, budgets: Float[Array, " N"]) -> tuple[Array, Array]:
    """(E[S], E[S²]) of the service time (eq. 3)."""
    t = service_times(problem, budgets)
    return over_tasks(jnp.add, problem.prob * t), over_tasks(jnp.add, problem.prob * t * t)


def utilization(arrival_rate, m1) -> Array:
    """ρ = λ E[S]; the queue is stable iff ρ < 1 (eq. 4)."""
    return arrival_rate * m1


def mean_wait(arrival_rate, m1, m2) -> Array:
    """E[W] = λ E[S²] / (2 (1 − λ E[S])) (eq. 5); +inf when unstable."""
    slack = 1.0 - arrival_rate * m1
    stable = slack > 0
    safe = jnp.where(stable, slack, 1.0)  # keeps gradients finite off the region
    return jnp.where(stable, arrival_rate * m2 / (2.0 * safe), jnp.inf)


def mean_system_time(arrival_rate, m1, m2) -> Array:
    """E[T_sys] = E[W] + E[S] (eq. 6); +inf when unstable."""
    return mean_wait(arrival_rate, m1, m2) + m1


def objective(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, ""]:
    """J(ℓ) = α Σ π_k p_k(ℓ_k) − λE[S²]/(2(1 − λE[S])) − E[S] (eq. 7).

    **Arguments:**

    - `problem`: the operating point and task parameters.
    - `budgets`: ℓ, shape (N,), continuous or integer-valued.

    **Returns:** J(ℓ); −inf outside the stability region.
    """
    m1, m2 = moments(problem, budgets)
    return problem.alpha * mean_accuracy(problem, budgets) - mean_system_time(
        problem.arrival_rate, m1, m2
    )


gradient = jax.jit(jax.grad(objective, argnums=1))
"""∇_ℓ J(ℓ) by autodiff (its closed form is eq. 17 without multipliers)."""

hessian = jax.jit(jax.hessian(objective, argnums=1))
"""∇²_ℓ J(ℓ) by autodiff (its closed form is eqs. 33–34)."""


def delay_prices(arrival_rate, m1, m2) -> tuple[Array, Array]:
    """(∂E[T]/∂m1, ∂E[T]/∂m2) by autodiff of :func:`mean_system_time`.

    These are the marginal delay costs of the two moments; the KKT condition
    (eq. 17) of task k reads α A_k b_k e^{−b_k ℓ_k} = c_k (T1 + 2 T2 t_k(ℓ_k)).
    """
    # E[T] is elementwise in its arguments, so the gradient of the sum gives the
    # derivatives of every element at once (scalars and batches alike)
    total = lambda a, b: jnp.sum(mean_system_time(arrival_rate, a, b))
    return jax.grad(total, argnums=(0, 1))(m1, m2)


def kkt_residual(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, ""]:
    """Natural KKT residual ‖ℓ − P_[0,ℓmax](ℓ + ∇J(ℓ))‖∞ (objective units per token).

    Zero exactly at the optimum of (9): interior coordinates have ∂J/∂ℓ_k = 0,
    coordinates at 0 have ∂J/∂ℓ_k ≤ 0 and those at ℓ_max have ∂J/∂ℓ_k ≥ 0.
    """
    g = gradient(problem, budgets)
    # P(ℓ + g) − ℓ written as a clip of g itself, so |g| below eps·ℓ is not rounded away
    return over_tasks(jnp.maximum, jnp.abs(jnp.clip(g, -budgets, problem.max_tokens - budgets)))


def integer_lower_bound(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, ""]:
    """J̄(ℓ*) of eq. 41: a lower bound on J at any integer ℓ in [0, ℓ_max]^N with |ℓ_k − ℓ*_k| ≤ 1.

    J̄ = α Σ π_k (A_k (1 − e^{−b_k max(ℓ_k − 1, 0)}) + D_k)
        − (λE[S²] + 2 c_max) / (2 (1 − λ(E[S] + c_max))) − E[S].

    The accuracy term is the worst case over those integers: p_k rises with
    ℓ_k and ℓ_k ≥ max(ℓ*_k − 1, 0), budgets being non-negative. The paper
    prints p_k(ℓ*_k − 1), equal for ℓ*_k ≥ 1; below, it extrapolates p_k to
    negative budgets, where A_k e^{b_k} overflows (J̄ = −inf at ℓ*_k = 0 for
    b_k ≳ 710 in float64).

    Valid only when λ (E[S] + c_max) < 1; returns −inf otherwise. (The bound
    holds as printed: its delay term exceeds the exact worst case
    λ(E[S²] + 2c_max E[S] + c_max²)/(2(1 − λ(E[S] + c_max))) + E[S] + c_max by
    λ c_max² / (2(1 − λ(E[S] + c_max))) ≥ 0.)
    """
    lam = problem.arrival_rate
    m1, m2 = moments(problem, budgets)
    c_max = jnp.max(problem.c, axis=-1)
    accuracy = mean_accuracy(problem, jnp.maximum(budgets - 1.0, 0.0))  # eq. 41, ℓ_k ≥ 0
    slack = 1.0 - lam * (m1 + c_max)
    ok = slack > 0
    delay = (lam * m2 + 2.0 * c_max) / (2.0 * jnp.where(ok, slack, 1.0)) + m1
    return jnp.where(ok, problem.alpha * accuracy - delay, -jnp.inf)


def integer_bound_holds(problem: Problem, budgets: Float[Array, " N"]) -> Array:
    """Whether eq. 41's assumption λ (E[S] + c_max) < 1 holds at ℓ*."""
    m1, _ = moments(problem, budgets)
    return problem.arrival_rate * (m1 + jnp.max(problem.c, axis=-1)) < 1
