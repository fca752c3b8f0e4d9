"""Projected gradient ascent (eq. 29): the paper's fixed step and a diagonally scaled one.

:class:`ProjectedGradient` is eq. 29 with η = `step_scale` / L_J, L_J the
Lipschitz constant of Lemma 3 (eq. 32) evaluated over the superlevel set
{J ≥ J(ℓ⁰)} (see :mod:`jaxalloc.bounds`), because the paper's box
[0, ℓ_max]^N is not stable. Any 0 < step_scale < 2 is an ascent step there
(eq. 38), so every iterate stays in that set; it needs 10^4–10^6 steps on
realistic problems (condition number ~10^4).

:class:`ScaledGradient` divides each gradient component by the row sum of
−∇²J at the current point, d = −∇²J(ℓ)·1, one Hessian–vector product by
autodiff. All entries of −∇²J are ≥ 0 (eqs. 33–34), so diag(d) ⪰ −∇²J
(diagonal dominance): the unit step is a local majorisation step; an Armijo
backtracking makes ascent global. It converges in tens of steps.

Both stop on the fixed-point residual ‖P(ℓ̂(ℓ)) − ℓ‖∞ (tokens), an exact
optimality measure that does not depend on the step length.

Servers: :class:`ProjectedGradient`'s step comes from Lemma 3, proved for the
paper's one FIFO server only: it refuses other servers. :class:`ScaledGradient`
needs an aggregate server (its stopping test is the fixed-point map of eq. 24).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from ..bounds import lipschitz_constant, superlevel_region
from ..kkt import fixed_point_map
from ..model import Problem
from ..objective import gradient, moments
from .base import resolve_tol, small_enough
from .projected_newton import hessian_diagonal


def _converged(problem, ell, tol):
    return small_enough(fixed_point_map(problem, ell) - ell, ell, tol)


class ProjectedGradient(eqx.Module):
    """Projected gradient ascent with the Lemma 3 step bound (eqs. 29–38).

    **Arguments:**

    - `step_scale`: η · L_J, in (0, 2) (eq. 38).
    - `tol`: relative tolerance on the fixed-point residual (tokens).
    - `max_steps`: cap on gradient steps.
    - `check_every`: gradient steps between two stopping tests.
    """

    step_scale: float = 1.9
    tol: float | None = None
    max_steps: int = 1_000_000
    check_every: int = 20
    needs_aggregate: ClassVar[bool] = True
    needs_one_server: ClassVar[bool] = True  # the step of Lemma 3 (eq. 32) holds for one FIFO server

    def __call__(self, problem: Problem, start=None):
        tol = resolve_tol(self.tol, problem.A.dtype)
        ell0 = jnp.zeros_like(problem.A) if start is None else start
        eta = self.step_scale / lipschitz_constant(problem, superlevel_region(problem, ell0))

        def step(_, ell):
            return jnp.clip(ell + eta * gradient(problem, ell), 0.0, problem.max_tokens)  # eq. 29

        def cond(state):
            ell, steps, done = state
            return (~done) & (steps < self.max_steps) & jnp.all(jnp.isfinite(ell))

        def body(state):
            ell, steps, _ = state
            ell = lax.fori_loop(0, self.check_every, step, ell)
            return ell, steps + self.check_every, _converged(problem, ell, tol)

        state = (ell0, jnp.asarray(0), _converged(problem, ell0, tol))
        ell, steps, done = lax.while_loop(cond, body, state)
        return ell, steps, done


class ScaledGradient(eqx.Module):
    """Projected gradient ascent scaled by the Hessian diagonal (Jacobi), with a
    line search on the directional derivative.

    The direction is d = P(ℓ + g / diag(−∇²J)) − ℓ, a feasible segment along
    which φ(t) = J(ℓ + t d) is concave. The step t = 1 is taken when
    φ'(1) ≥ 0; otherwise t is shrunk by secant steps on φ' until φ'(t) ≥ 0,
    which by concavity guarantees φ(t) ≥ φ(0). Comparing derivatives rather
    than values of J keeps the search exact where J is flat to rounding.

    **Arguments:**

    - `tol`: relative tolerance on the fixed-point residual (tokens).
    - `max_steps`: cap on steps.
    - `max_searches`: cap on secant shrinks within one step.
    """

    tol: float | None = None
    max_steps: int = 10_000
    max_searches: int = 30
    needs_aggregate: ClassVar[bool] = True

    def __call__(self, problem: Problem, start=None):
        tol = resolve_tol(self.tol, problem.A.dtype)
        ell0 = jnp.zeros_like(problem.A) if start is None else start
        tiny = jnp.finfo(problem.A.dtype).tiny

        def cond(state):
            ell, steps, done = state
            return (~done) & (steps < self.max_steps) & jnp.all(jnp.isfinite(ell))

        def body(state):
            ell, steps, _ = state
            g = gradient(problem, ell)
            d = jnp.clip(ell + g / jnp.maximum(hessian_diagonal(problem, ell), tiny), 0.0, problem.max_tokens) - ell
            slope0 = jnp.sum(g * d)  # φ'(0) ≥ 0

            def slope(t):  # φ'(t); −inf past the stability boundary, where J = −inf
                x = ell + t * d
                stable = problem.server.stable(problem.arrival_rate, moments(problem, x)[0])
                return jnp.where(stable, jnp.sum(gradient(problem, x) * d), -jnp.inf)

            def search_cond(c):
                _t, s, k = c
                return (k < self.max_searches) & ~(s >= 0)

            def search_body(c):
                t, s, k = c
                t = t * jnp.clip(slope0 / (slope0 - s), 0.1, 0.9)  # secant on φ', kept inside (0, t)
                return t, slope(t), k + 1

            one = jnp.asarray(1.0, ell.dtype)
            t, s, _ = lax.while_loop(search_cond, search_body, (one, slope(one), 0))
            new = jnp.where(s >= 0, ell + t * d, ell)
            return new, steps + 1, _converged(problem, new, tol)

        state = (ell0, jnp.asarray(0), _converged(problem, ell0, tol))
        ell, steps, done = lax.while_loop(cond, body, state)
        return ell, steps, done
