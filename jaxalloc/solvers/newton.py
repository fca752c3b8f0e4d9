"""Newton's method on the two aggregate moments (beyond the paper).

ℓ* is the closed form :func:`jaxalloc.kkt.best_response` of (E[S], E[S²]) at
the optimum, so the optimum solves the 2-D system

    F(m) = moments(best_response(m)) − m = 0,   m = (m1, m2),

whatever the number of tasks N. Each step costs O(N): one best response and
its forward-mode Jacobian with respect to the two moments (autodiff, one
`jacfwd`). A trial point is projected onto moments that stable budgets can
have (E[S] at most 90% of the way to capacity/λ, 1/λ for one server; E[S²] ≥ E[S]²); one whose scaled
residual does not fall (Armijo) is rejected and the step halved on the next
iteration, so backtracking costs no extra loop. From m⁰ = moments(0) it
converges quadratically: 3 steps at the paper's point, 3 (median) to 14 over
a (λ, α) grid up to α = 1000.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..kkt import best_response, log_response_scale
from ..model import Problem
from ..objective import moments
from .base import resolve_tol
from .projected_newton import ProjectedNewton


class NewtonState(NamedTuple):
    """Where the Newton iteration of one point stands (see :class:`AggregateNewton`)."""

    m: Array  # current moments (E[S], E[S²])
    r: Array  # scaled residual F(m) / scale
    jac: Array  # ∂r/∂m at m
    ell: Array  # best_response(m)
    t: Array  # step length for the next trial point (halved on rejection)
    steps: Array  # trial points evaluated so far
    done: Array  # converged, or inactive
    fresh: Array  # m not yet linearised (lazy start)
    scale: Array  # residual scale: moments at the start plus one token of each task


def _solve_2x2(a, rhs):
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    return jnp.stack(
        [a[1, 1] * rhs[0] - a[0, 1] * rhs[1], a[0, 0] * rhs[1] - a[1, 0] * rhs[0]]
    ) / det


def step_tol(tol: float) -> float:
    """Newton steps (relative) below this stop the iteration: the point after
    the step is then converged to ~tol (quadratic convergence, constant ≤ 30),
    which the final check confirms. 1e-7 at the float64 default tol."""
    return 0.03 * tol**0.5


class AggregateNewton(eqx.Module):
    """Safeguarded 2-D Newton iteration on (E[S], E[S²]), for aggregate servers
    (:attr:`jaxalloc.servers.Server.aggregate`: FIFO, batching).

    **Arguments:**

    - `tol`: tolerance on the relative residual of the two moments. Default
      by dtype (1e-11 in float64, 2e-5 in float32).
    - `max_steps`: cap on iterations (accepted and rejected trial points) of
      each Newton phase.

    Besides `__call__`, the iteration is exposed in pieces (:meth:`init`,
    :meth:`advance`, :meth:`finish`, :meth:`rescue`): batches run the same
    iteration task-major in :mod:`jaxalloc.solvers.newton_batched` (a test
    holds its steps equal to :meth:`advance`) and call :meth:`rescue` where it
    fails (see :func:`jaxalloc.solve.solve_batch`).
    """

    tol: float | None = None
    max_steps: int = 40
    needs_aggregate: ClassVar[bool] = True  # the best response needs the delay of (E[S], E[S²])

    def __call__(self, problem: Problem, start=None):
        return self.finish(problem, self.init(problem, start), start)

    def init(self, problem: Problem, start=None, active=True, lazy=False) -> NewtonState:
        """Newton state at m = moments(ℓ_start); lanes with `active` False are done.

        With `lazy`, the first linearisation is left to the loop, so that a
        batch with no active lane costs nothing.
        """
        ell_start = jnp.zeros_like(problem.A) if start is None else start
        m0 = jnp.stack(moments(problem, ell_start))
        unit = jnp.sum(problem.prob * problem.c)  # one token of every task, in seconds
        scale = jnp.stack([m0[0] + unit, m0[1] + unit * unit])
        inactive = ~jnp.asarray(active)
        one = jnp.asarray(1.0, m0.dtype)
        if lazy:
            r0, jac0, ell0 = jnp.ones(2, m0.dtype), -jnp.eye(2, dtype=m0.dtype), ell_start
            done0, fresh = inactive, jnp.asarray(True)
        else:
            jac0, (r0, ell0) = self._linearize(problem, log_response_scale(problem), scale, m0)
            done0, fresh = self._stop(m0, r0, jac0, scale) | inactive, jnp.asarray(False)
        return NewtonState(m0, r0, jac0, ell0, one, jnp.asarray(0), done0, fresh, scale)

    def _linearize(self, problem, log_scale, scale, m):
        def residual(m):
            ell = best_response(problem, m[0], m[1], log_scale)
            r = (jnp.stack(moments(problem, ell)) - m) / scale
            return r, (r, ell)

        return jax.jacfwd(residual, has_aux=True)(m)

    def _small(self, m, r, scale):
        """Moments consistent to `tol`, relative to their current size."""
        tol = resolve_tol(self.tol, m.dtype)
        return jnp.max(jnp.abs(r) * scale / jnp.maximum(m, scale)) <= tol

    def _direction(self, r, jac, scale):
        """The Newton step −(∂r/∂m)⁻¹ r; a fixed-point step where ∂r/∂m is singular."""
        delta = -_solve_2x2(jac, r)
        return jnp.where(jnp.all(jnp.isfinite(delta)), delta, r * scale)

    def _stop(self, m, r, jac, scale):
        """Converged at m, or the next Newton step is small enough (:func:`step_tol`)."""
        tol = resolve_tol(self.tol, m.dtype)
        step = jnp.max(jnp.abs(self._direction(r, jac, scale)) / jnp.maximum(m, scale))
        return self._small(m, r, scale) | (step <= step_tol(tol))

    @staticmethod
    def _trial(problem: Problem, m, delta, t, floor):
        """m + tδ projected onto moments a stable budget vector can have:
        E[S] between its value at ℓ = 0 and 90% of the way to capacity/λ from m
        (1/λ for one server),
        E[S²] ≥ max(its value at ℓ = 0, E[S]²) (Jensen)."""
        m1 = jnp.clip(m[0] + t * delta[0], floor[0], m[0] + 0.9 * (problem.server.capacity(problem.arrival_rate) / problem.arrival_rate - m[0]))
        m2 = jnp.maximum(m[1] + t * delta[1], jnp.maximum(floor[1], m1 * m1))
        return jnp.stack([m1, m2])

    def running(self, state: NewtonState, max_steps: int | None = None):
        """Whether the loop would take another step from `state`."""
        cap = self.max_steps if max_steps is None else max_steps
        return (~state.done) & (state.steps < cap) & jnp.all(jnp.isfinite(state.r))

    def advance(self, problem: Problem, state: NewtonState, max_steps: int | None = None) -> NewtonState:
        """Iterate from `state` until converged or `max_steps` trial points in all."""
        log_scale = log_response_scale(problem)  # loop-invariant, hoisted by hand
        floor = jnp.stack(moments(problem, jnp.zeros_like(problem.A)))  # moments at ℓ = 0

        def body(s: NewtonState) -> NewtonState:
            trial = self._trial(problem, s.m, self._direction(s.r, s.jac, s.scale), s.t, floor)
            m_try = jnp.where(s.fresh, s.m, trial)  # fresh: only linearise
            jac_try, (r_try, ell_try) = self._linearize(problem, log_scale, s.scale, m_try)
            accept = s.fresh | (jnp.sum(r_try**2) <= (1.0 - 1e-4 * s.t) * jnp.sum(s.r**2))
            keep = lambda new, old: jnp.where(accept, new, old)
            m, r, jac = keep(m_try, s.m), keep(r_try, s.r), keep(jac_try, s.jac)
            return NewtonState(
                m, r, jac, keep(ell_try, s.ell), jnp.where(accept, 1.0, 0.5 * s.t),
                s.steps + 1, self._stop(m, r, jac, s.scale), jnp.zeros_like(s.fresh), s.scale,
            )

        return lax.while_loop(lambda s: self.running(s, max_steps), body, state)

    def finalize(self, problem: Problem, state: NewtonState):
        """(ℓ, converged) where the loop stopped: points that stopped take their
        last Newton step (the loop stops once it is below :func:`step_tol`) and
        are checked there against `tol`; the others keep their ℓ, unconverged."""
        floor = jnp.stack(moments(problem, jnp.zeros_like(problem.A)))
        m = self._trial(problem, state.m, self._direction(state.r, state.jac, state.scale), 1.0, floor)
        ell = best_response(problem, m[0], m[1])
        ok = state.done & ~state.fresh & self._small(m, (jnp.stack(moments(problem, ell)) - m) / state.scale, state.scale)
        return jnp.where(ok, ell, state.ell), ok

    def finish(self, problem: Problem, state: NewtonState, start=None):
        """Run `state` to the end; where Newton fails, :meth:`rescue`.

        **Returns:** (ℓ, steps, converged).
        """
        state = self.advance(problem, state)
        ell, done = self.finalize(problem, state)
        return self.rescue(problem, ell, state.steps, done, start)

    def rescue(self, problem: Problem, ell, steps, done, start=None):
        """The safeguard, active only where `done` is False (rare: far starts at
        large α·A·b make best_response(m) so steep that the linear model
        misleads): the globally convergent projected Newton in ℓ from `start`,
        then Newton again from there."""
        ell_start = jnp.zeros_like(problem.A) if start is None else start
        fallback = ProjectedNewton(tol=self.tol)
        ell_pn, steps_pn, done_pn = fallback(problem, ell_start, ~done)
        polish = self.advance(problem, self.init(problem, ell_pn, ~done, lazy=True))
        ell_pol, done_pol = self.finalize(problem, polish)
        ell = jnp.where(done, ell, jnp.where(done_pol, ell_pol, ell_pn))
        return ell, steps + steps_pn + polish.steps, done | done_pol | done_pn
