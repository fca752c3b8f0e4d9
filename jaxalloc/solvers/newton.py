"""Newton's method on the two aggregate moments (beyond the paper).

ℓ* is the closed form :func:`jaxalloc.kkt.best_response` of (E[S], E[S²]) at
the optimum, so the optimum solves the 2-D system

    F(m) = moments(best_response(m)) − m = 0,   m = (m1, m2),

whatever the number of tasks N. Each step costs O(N): one best response and
its forward-mode Jacobian with respect to the two moments (autodiff). A step is
shortened so that the queue stays stable (λ m1 < 1, m2 > 0) and then
backtracked until the scaled residual decreases (Armijo); from the start
m⁰ = moments(0) it converges quadratically in 5–8 steps.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from ..kkt import best_response
from ..model import Problem
from ..objective import moments
from .base import resolve_tol, small_enough


def _solve_2x2(a, rhs):
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    return jnp.stack(
        [a[1, 1] * rhs[0] - a[0, 1] * rhs[1], a[0, 0] * rhs[1] - a[1, 0] * rhs[0]]
    ) / det


class AggregateNewton(eqx.Module):
    """Safeguarded 2-D Newton iteration on (E[S], E[S²]).

    **Arguments:**

    - `tol`: relative tolerance on the moments and on the budgets' last change.
      Default by dtype (1e-11 in float64, 2e-5 in float32).
    - `max_steps`: cap on Newton steps.
    - `max_backtracks`: cap on step halvings within one step.
    """

    tol: float | None = None
    max_steps: int = 100
    max_backtracks: int = 40

    def __call__(self, problem: Problem, start=None):
        dtype = problem.A.dtype
        tol = resolve_tol(self.tol, dtype)
        lam = problem.arrival_rate
        zero = jnp.zeros_like(problem.A)
        m0 = jnp.stack(moments(problem, zero if start is None else start))
        unit = jnp.sum(problem.prob * problem.c)  # one token of every task, seconds
        scale = jnp.stack([m0[0] + unit, m0[1] + unit * unit])

        def residual(m):
            ell = best_response(problem, m[0], m[1])
            return (jnp.stack(moments(problem, ell)) - m) / scale, ell

        def merit(m):
            r, _ = residual(m)
            return jnp.sum(r * r)

        def cond(state):
            m, ell, r, phi, step, done = state
            return (~done) & (step < self.max_steps) & jnp.isfinite(phi)

        def body(state):
            m, ell, r, phi, step, _ = state
            jac, _ = jax.jacfwd(residual, has_aux=True)(m)
            delta = -_solve_2x2(jac, r)
            delta = jnp.where(jnp.all(jnp.isfinite(delta)), delta, r)  # singular: plain FP step
            # fraction to the boundary: keep 1 − λ m1 ≥ (1 − λ m1)/10 and m2 ≥ m2/10
            t1 = jnp.where(delta[0] > 0, 0.9 * (1.0 - lam * m[0]) / (lam * delta[0]), jnp.inf)
            t2 = jnp.where(delta[1] < 0, 0.9 * m[1] / -delta[1], jnp.inf)
            t0 = jnp.minimum(1.0, jnp.minimum(t1, t2))

            def bt_cond(c):
                t, phi_t, k = c
                return (k < self.max_backtracks) & ~(phi_t <= (1.0 - 1e-4 * t) * phi)

            def bt_body(c):
                t, _, k = c
                t = 0.5 * t
                return t, merit(m + t * delta), k + 1

            t, _, _ = lax.while_loop(bt_cond, bt_body, (t0, merit(m + t0 * delta), 0))
            m_new = m + t * delta
            r_new, ell_new = residual(m_new)
            phi_new = jnp.sum(r_new * r_new)
            done = (jnp.max(jnp.abs(r_new)) <= tol) | (
                small_enough(ell_new - ell, ell_new, tol) & (jnp.max(jnp.abs(r_new)) <= jnp.sqrt(tol))
            )
            return m_new, ell_new, r_new, phi_new, step + 1, done

        r0, ell0 = residual(m0)
        phi0 = jnp.sum(r0 * r0)
        state = (m0, ell0, r0, phi0, jnp.asarray(0), jnp.max(jnp.abs(r0)) <= tol)
        m, ell, r, phi, steps, done = lax.while_loop(cond, body, state)
        return ell, steps, done
