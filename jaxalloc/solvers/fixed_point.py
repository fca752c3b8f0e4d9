"""The paper's projected fixed-point iteration (eq. 24), damped.

ℓ^{n+1} = ℓ^n + θ (P(ℓ̂(ℓ^n)) − ℓ^n), with ℓ̂ of eq. 22 through Lambert W.
θ = 1 is the paper's iteration; it cycles with period 2 at high λ·α, which a
damping θ of about 0.6–0.8 removes. A step that would push the utilisation
past (capacity + ρ)/2 ((1 + ρ)/2 for one server) is shortened (E[S] is affine in ℓ, so this is exact), keeping
every iterate inside the stability region.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from ..kkt import fixed_point_map
from ..model import Problem
from ..objective import moments
from .base import resolve_tol, small_enough


class FixedPoint(eqx.Module):
    """Damped projected fixed point of eq. 24.

    **Arguments:**

    - `damping`: initial θ in (0, 1]; 1 is the paper's undamped map.
    - `adaptive`: halve θ whenever the residual grows by more than 10% or reverses direction (a
      period-2 oscillation: the map's Jacobian has an eigenvalue near or below
      1 − 2/θ, e.g. −1.85 at λ = 0.149, α = 210 on the paper profile, −14.6 on
      some random problems), and cap it for good at 0.8× the θ that failed;
      otherwise let it grow by 10% a step up to that cap. `False` keeps θ
      fixed, as in the paper.
    - `tol`: relative tolerance on ‖P(ℓ̂(ℓ)) − ℓ‖∞ (tokens). Default by dtype.
    - `max_steps`: cap on iterations.
    """

    damping: float = 0.7
    adaptive: bool = True
    tol: float | None = None
    max_steps: int = 10_000
    needs_aggregate: ClassVar[bool] = True  # the map of eq. 24 needs the delay of (E[S], E[S²])

    def __call__(self, problem: Problem, start=None):
        tol = resolve_tol(self.tol, problem.A.dtype)
        lam = problem.arrival_rate
        capacity = problem.server.capacity(lam)
        ell0 = jnp.zeros_like(problem.A) if start is None else start
        dtype = ell0.dtype

        def cond(state):
            ell, _theta, _cap_theta, _last, step, done = state
            return (~done) & jnp.all(jnp.isfinite(ell)) & (step < self.max_steps)

        def body(state):
            ell, theta, cap_theta, last, step, _ = state
            r = fixed_point_map(problem, ell) - ell  # eq. 24 without damping, minus ℓ
            done = small_enough(r, ell, tol)
            if self.adaptive:  # back off on growth by >10% or on a reversal (period-2 oscillation)
                grows = jnp.max(jnp.abs(r)) > 1.1 * jnp.max(jnp.abs(last))
                reverses = jnp.sum(r * last) < -0.5 * jnp.sqrt(jnp.sum(r * r) * jnp.sum(last * last))
                # the first step has no previous residual to compare with (`last` starts at 0)
                bad = (grows | reverses) & (step > 0)
                cap_theta = jnp.where(bad, 0.8 * theta, cap_theta)  # never again reach a θ that failed
                theta = jnp.where(bad, 0.5 * theta, jnp.minimum(cap_theta, 1.1 * theta))
            rho = lam * moments(problem, ell)[0]
            rise = lam * jnp.sum(problem.prob * problem.c * r)  # ρ(ℓ + r) − ρ(ℓ), exact: E[S] is affine
            cap = jnp.where(rise > 0, 0.5 * (capacity - rho) / rise, jnp.inf)
            # converged: finish with the undamped map, whose value is the accurate best response
            # (within the cap too: a `tol` loose enough to stop far from ℓ* could leave the region)
            ell_new = ell + jnp.minimum(jnp.where(done, 1.0, theta), cap) * r
            return ell_new, theta, cap_theta, r, step + 1, done

        theta0 = jnp.asarray(self.damping, dtype)
        init = (ell0, theta0, theta0, jnp.zeros_like(ell0), jnp.asarray(0), jnp.asarray(False))
        ell, _, _, _, steps, done = lax.while_loop(cond, body, init)
        return ell, steps, done
