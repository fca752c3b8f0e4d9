"""The objective J(ℓ) of eq. 7, written once, and the queue quantities it is made of.

Everything else in the package (solvers, bounds, verification, simulation
checks) calls these functions; gradients and Hessians come from autodiff.

The delay term E[T] comes from the problem's server model
(:mod:`jaxalloc.servers`, `problem.server`): by default one FIFO server, the
paper's M/G/1, whose delay depends on the budgets only through the two
service-time moments m1 = E[S] and m2 = E[S²] (eq. 3): :func:`mean_wait`
(Pollaczek–Khinchine, eq. 5) and :func:`mean_system_time` (eq. 6), written in
:mod:`jaxalloc.servers.fifo`. Outside the stability region (λ m1 ≥ 1 for one
server, eq. 4; λ m1 ≥ the server's capacity in general) the delay is +inf and
J is −inf, with finite (zero) gradients: no NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .model import Problem
from .reduce import over_tasks
from .servers import FIFO
from .servers.fifo import pollaczek_khinchine_system_time, pollaczek_khinchine_wait


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
    """ρ = λ E[S]; one server is stable iff ρ < 1 (eq. 4)."""
    return arrival_rate * m1


mean_wait = pollaczek_khinchine_wait
"""E[W] = λ E[S²] / (2 (1 − λ E[S])) (eq. 5) of one FIFO server; +inf when unstable."""

mean_system_time = pollaczek_khinchine_system_time
"""E[T] = E[W] + E[S] (eq. 6) of one FIFO server; +inf when unstable."""


def load(problem: Problem, budgets: Float[Array, " N"]) -> Array:
    """λ E[S] / capacity: the server's utilisation, < 1 iff its queue is stable
    (ρ of eq. 4 for the paper's one server)."""
    return problem.arrival_rate * moments(problem, budgets)[0] / problem.server.capacity(problem.arrival_rate)


def system_time(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, ""]:
    """E[T] of the problem's server at budgets ℓ (eq. 6 for one FIFO server); +inf when unstable."""
    t = service_times(problem, budgets)
    return problem.server.system_time(problem.arrival_rate, problem.prob, t, t * t)


def task_system_time(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, " N"]:
    """E[T_k], the mean system time of each task type on the problem's server."""
    t = service_times(problem, budgets)
    return problem.server.task_system_time(problem.arrival_rate, problem.prob, t, t * t)


def objective(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, ""]:
    """J(ℓ) = α Σ π_k p_k(ℓ_k) − λE[S²]/(2(1 − λE[S])) − E[S] (eq. 7).

    For another server (`problem.server`), J = α Σ π_k p_k(ℓ_k) − E[T](ℓ)
    with that server's E[T].

    **Arguments:**

    - `problem`: the operating point and task parameters.
    - `budgets`: ℓ, shape (N,), continuous or integer-valued.

    **Returns:** J(ℓ); −inf outside the stability region.
    """
    if problem.server.aggregate:  # E[T] from the moments, written as the paper writes it
        return problem.alpha * mean_accuracy(problem, budgets) - problem.server.delay(
            problem.arrival_rate, *moments(problem, budgets)
        )
    return problem.alpha * mean_accuracy(problem, budgets) - system_time(problem, budgets)


gradient = jax.jit(jax.grad(objective, argnums=1))
"""∇_ℓ J(ℓ) by autodiff (its closed form is eq. 17 without multipliers)."""

hessian = jax.jit(jax.hessian(objective, argnums=1))
"""∇²_ℓ J(ℓ) by autodiff (its closed form is eqs. 33–34)."""


def delay_prices(arrival_rate, m1, m2, server=None) -> tuple[Array, Array]:
    """(∂E[T]/∂m1, ∂E[T]/∂m2) by autodiff of the delay of `server` (an aggregate
    server; default one FIFO server, :func:`mean_system_time`).

    These are the marginal delay costs of the two moments; the KKT condition
    (eq. 17) of task k reads α A_k b_k e^{−b_k ℓ_k} = c_k (T1 + 2 T2 t_k(ℓ_k)).
    """
    # made here, not at import: an array built at import would start JAX's backend
    # before the command line sets the core count or jax.distributed starts
    return (server or FIFO()).delay_prices(arrival_rate, m1, m2)


def kkt_residual(problem: Problem, budgets: Float[Array, " N"], g=None) -> Float[Array, ""]:
    """Natural KKT residual ‖ℓ − P_[0,ℓmax](ℓ + ∇J(ℓ))‖∞ (objective units per token).

    Zero exactly at the optimum of (9): interior coordinates have ∂J/∂ℓ_k = 0,
    coordinates at 0 have ∂J/∂ℓ_k ≤ 0 and those at ℓ_max have ∂J/∂ℓ_k ≥ 0.
    `g`: ∇J(ℓ) where the caller has it (default: computed here).
    """
    g = gradient(problem, budgets) if g is None else g
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
    if not _is_one_server(problem):
        return monotone_lower_bound(problem, budgets)
    lam = problem.arrival_rate
    m1, m2 = moments(problem, budgets)
    c_max = jnp.max(problem.c, axis=-1)
    accuracy = mean_accuracy(problem, jnp.maximum(budgets - 1.0, 0.0))  # eq. 41, ℓ_k ≥ 0
    slack = 1.0 - lam * (m1 + c_max)
    ok = slack > 0
    delay = (lam * m2 + 2.0 * c_max) / (2.0 * jnp.where(ok, slack, 1.0)) + m1
    return jnp.where(ok, problem.alpha * accuracy - delay, -jnp.inf)


def integer_bound_holds(problem: Problem, budgets: Float[Array, " N"]) -> Array:
    """Whether eq. 41's assumption λ (E[S] + c_max) < 1 holds at ℓ* (for another
    server: whether its queue is stable with every budget one token higher)."""
    m1, _ = moments(problem, budgets)
    if not _is_one_server(problem):
        return problem.arrival_rate * (m1 + jnp.max(problem.c, axis=-1)) < problem.server.capacity(problem.arrival_rate)
    return problem.arrival_rate * (m1 + jnp.max(problem.c, axis=-1)) < 1


def is_one_server(problem: Problem) -> bool:
    """The paper's server (one FIFO server, statically: size 1): eq. 41 and the
    bounds of Lemmas 2–3 apply as printed."""
    return isinstance(problem.server, FIFO) and problem.server.size == 1


_is_one_server = is_one_server


def monotone_lower_bound(problem: Problem, budgets: Float[Array, " N"]) -> Float[Array, ""]:
    """A lower bound on J at any integer ℓ in [0, ℓ_max]^N with |ℓ_k − ℓ*_k| ≤ 1, for any server.

    J̄ = α Σ π_k p_k(max(ℓ_k − 1, 0)) − E[T](min(ℓ + 1, ℓ_max)): accuracy rises
    with every budget, and E[T] does too on every server model here (longer
    service never shortens a wait: checked by autodiff on random problems in
    tests/test_servers.py), so each term is its worst case over those integers.
    The counterpart of eq. 41 for servers other than the paper's; −inf when
    the queue is unstable at ℓ + 1."""
    accuracy = mean_accuracy(problem, jnp.maximum(budgets - 1.0, 0.0))
    delay = system_time(problem, jnp.minimum(budgets + 1.0, problem.max_tokens))
    return jnp.where(jnp.isfinite(delay), problem.alpha * accuracy - delay, -jnp.inf)
