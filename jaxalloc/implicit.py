"""The optimum ℓ*(θ) as a differentiable function of every problem parameter θ.

Derivatives come from the implicit function theorem applied to the KKT
conditions, not from unrolling the solver's iterations. At ℓ*, each budget is
either free (0 < ℓ_k < ℓ_max, where ∂J/∂ℓ_k = 0) or at a bound. Differentiating
∇_F J(ℓ*(θ), θ) = 0 along a tangent dθ gives

    −∇²_FF J · dℓ_F = ∂_θ(∇_F J) · dθ + ∇²_FU J · dℓ_U,

with dℓ_k = 0 for budgets at 0 and dℓ_k = dℓ_max for budgets at ℓ_max (they
move with the cap). −∇²J is diagonal plus rank 2, so the system is solved in
O(N) with the same Woodbury solve as :mod:`jaxalloc.solvers.projected_newton`
for an aggregate server (FIFO, batching); for another (priority) the free
block of the dense autodiff Hessian is solved (N is small there). Server
parameters reach the derivatives like any other field: λ, α and β
(`batch_slowdown`) have them; `servers` and `max_batch` are integers and get
zero derivatives; a priority order chosen by "auto" is held fixed at the one
chosen (the optimum moves smoothly while that order stays the best).
The rule is a `jax.custom_jvp`, linear in the tangents, so `jax.grad`,
`jax.jacrev`, `jax.jacfwd`, `jit` and `vmap` all work.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .model import Problem
from .objective import gradient, hessian
from .solve import solve_point, solver_for
from .solvers.projected_newton import _woodbury_solve, hessian_structure


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _optimal(solver, problem: Problem):
    return solve_point(problem, solver).budgets


def _free_block_solve(problem: Problem, ell, free, rhs):
    """(−∇²_FF J)⁻¹ rhs_F (zero elsewhere): Woodbury for an aggregate server, dense otherwise."""
    if problem.server.aggregate:
        U, Q, h = hessian_structure(problem, ell)
        return _woodbury_solve(U, Q, h, free, rhs)
    H = -hessian(problem, ell)
    M = jnp.where(free[:, None] & free[None, :], H, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))
    return jnp.linalg.solve(M, jnp.where(free, rhs, 0.0))


@_optimal.defjvp
def _optimal_jvp(solver, primals, tangents):
    (problem,), (dproblem,) = primals, tangents
    sol = solve_point(problem, solver)
    ell = sol.budgets
    problem = problem.replace(server=jax.lax.stop_gradient(sol.server))  # the order chosen, if "auto"
    top = problem.max_tokens
    at_top = ell >= top
    free = (ell > 0) & ~at_top
    dell_bound = jnp.where(at_top, dproblem.max_tokens, 0.0)  # budgets at ℓ_max follow the cap
    # ∂_θ(∇J)·dθ + ∇²J·dℓ_bounds, both as forward-mode derivatives of the autodiff gradient
    _, rhs = jax.jvp(lambda p, x: gradient(p, x), (problem, ell), (dproblem, dell_bound))
    dell_free = _free_block_solve(problem, ell, free, rhs)  # (−∇²_FF J)⁻¹ rhs_F
    return ell, jnp.where(free, dell_free, dell_bound)


def optimal_budgets(problem: Problem, method=None) -> Float[Array, " N"]:
    """ℓ*(problem), differentiable with respect to every field of `problem`.

    **Arguments:**

    - `problem`: the problem (may hold tracers, e.g. under `jax.grad`).
    - `method`: a solver name or instance, as in :func:`jaxalloc.solve`
      (default: the server's default solver).

    **Returns:** the optimal continuous budgets. Their derivatives come from
    implicit differentiation of the KKT conditions; budgets at 0 have zero
    sensitivity, budgets at ℓ_max move with ℓ_max only.

    Example: `jax.jacfwd(lambda lam: optimal_budgets(p.replace(arrival_rate=lam)))(0.1)`.
    """
    return _optimal(solver_for(problem, method), problem)
