"""Newton's method on the two aggregate moments (beyond the paper).

ℓ* is the closed form :func:`jaxalloc.kkt.best_response` of (E[S], E[S²]) at
the optimum, so the optimum solves the 2-D system

    F(m) = moments(best_response(m)) − m = 0,   m = (m1, m2),

whatever the number of tasks N. Each step costs O(N): one best response and
its forward-mode Jacobian with respect to the two moments (autodiff, one
`jacfwd`). A trial point is projected onto moments that stable budgets can
have (E[S] at most 90% of the way to 1/λ, E[S²] ≥ E[S]²); one whose scaled
residual does not fall (Armijo) is rejected and the step halved on the next
iteration, so backtracking costs no extra loop. From m⁰ = moments(0) it
converges quadratically: 3 steps at the paper's point, 3 (median) to 14 over
a (λ, α) grid up to α = 1000.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from ..kkt import best_response
from ..model import Problem
from ..objective import moments
from .base import resolve_tol
from .projected_newton import ProjectedNewton


def _solve_2x2(a, rhs):
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    return jnp.stack(
        [a[1, 1] * rhs[0] - a[0, 1] * rhs[1], a[0, 0] * rhs[1] - a[1, 0] * rhs[0]]
    ) / det


class AggregateNewton(eqx.Module):
    """Safeguarded 2-D Newton iteration on (E[S], E[S²]).

    **Arguments:**

    - `tol`: tolerance on the relative residual of the two moments. Default
      by dtype (1e-11 in float64, 2e-5 in float32).
    - `max_steps`: cap on iterations (accepted and rejected trial points) of
      each Newton phase.
    """

    tol: float | None = None
    max_steps: int = 40

    def __call__(self, problem: Problem, start=None):
        ell_start = jnp.zeros_like(problem.A) if start is None else start
        ell, steps, done = self.iterate(problem, ell_start, True)
        # Safeguard, run only where Newton failed (rare: far starts at large α·A·b
        # make best_response(m) so steep that the linear model misleads): the
        # globally convergent projected Newton in ℓ, then Newton again from there.
        fallback = ProjectedNewton(tol=self.tol)
        ell_pn, steps_pn, done_pn = fallback(problem, ell_start, ~done)
        ell_pol, steps_pol, done_pol = self.iterate(problem, ell_pn, ~done, lazy=True)
        ell = jnp.where(done, ell, jnp.where(done_pol, ell_pol, ell_pn))
        return ell, steps + steps_pn + steps_pol, done | done_pol | done_pn

    def iterate(self, problem: Problem, ell_start, active, lazy=False):
        """Newton from m = moments(ℓ_start); lanes with `active` False do nothing.

        With `lazy`, the first linearisation happens inside the loop, so that a
        batch with no active lane costs nothing.
        """
        tol = resolve_tol(self.tol, problem.A.dtype)
        lam = problem.arrival_rate
        m0 = jnp.stack(moments(problem, ell_start))
        unit = jnp.sum(problem.prob * problem.c)  # one token of every task, in seconds
        scale = jnp.stack([m0[0] + unit, m0[1] + unit * unit])

        def residual(m):
            ell = best_response(problem, m[0], m[1])
            r = (jnp.stack(moments(problem, ell)) - m) / scale
            return r, (r, ell)

        linearize = jax.jacfwd(residual, has_aux=True)

        def small(m, r):  # moments consistent to `tol`, relative to their current size
            return jnp.max(jnp.abs(r) * scale / jnp.maximum(m, scale)) <= tol

        floor = jnp.stack(moments(problem, jnp.zeros_like(problem.A)))  # moments at ℓ = 0

        def newton_trial(m, r, jac, t):
            """m + tδ projected onto moments a stable budget vector can have:
            E[S] between its value at ℓ = 0 and 90% of the way to 1/λ from m,
            E[S²] ≥ max(its value at ℓ = 0, E[S]²) (Jensen)."""
            delta = -_solve_2x2(jac, r)
            delta = jnp.where(jnp.all(jnp.isfinite(delta)), delta, r * scale)  # singular: FP step
            m1 = jnp.clip(m[0] + t * delta[0], floor[0], m[0] + 0.9 * (1.0 / lam - m[0]))
            m2 = jnp.maximum(m[1] + t * delta[1], jnp.maximum(floor[1], m1 * m1))
            return jnp.stack([m1, m2])

        def cond(state):
            m, r, jac, ell, t, step, done, fresh = state
            return (~done) & (step < self.max_steps) & jnp.all(jnp.isfinite(r))

        def body(state):
            m, r, jac, ell, t, step, _, fresh = state
            m_try = jnp.where(fresh, m, newton_trial(m, r, jac, t))  # fresh: only linearise at m
            jac_try, (r_try, ell_try) = linearize(m_try)
            accept = fresh | (jnp.sum(r_try**2) <= (1.0 - 1e-4 * t) * jnp.sum(r**2))
            keep = lambda new, old: jnp.where(accept, new, old)
            m, r, jac, ell = keep(m_try, m), keep(r_try, r), keep(jac_try, jac), keep(ell_try, ell)
            t = jnp.where(accept, 1.0, 0.5 * t)
            done = small(m, r)
            return m, r, jac, ell, t, step + 1, done, jnp.zeros_like(fresh)

        one = jnp.asarray(1.0, m0.dtype)
        inactive = ~jnp.asarray(active)
        if lazy:
            r0, jac0, ell0 = jnp.ones(2, m0.dtype), -jnp.eye(2, dtype=m0.dtype), ell_start
            done0, fresh = inactive, jnp.asarray(True)
        else:
            jac0, (r0, ell0) = linearize(m0)
            done0, fresh = small(m0, r0) | inactive, jnp.asarray(False)
        state = (m0, r0, jac0, ell0, one, jnp.asarray(0), done0, fresh)
        m, r, jac, ell, t, steps, done, _ = lax.while_loop(cond, body, state)
        return ell, steps, done & small(m, r)
