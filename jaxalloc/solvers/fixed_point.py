"""The paper's projected fixed-point iteration (eq. 24), damped.

ℓ^{n+1} = ℓ^n + θ (P(ℓ̂(ℓ^n)) − ℓ^n), with ℓ̂ of eq. 22 through Lambert W.
θ = 1 is the paper's iteration; it cycles with period 2 at high λ·α, which a
damping θ of about 0.6–0.8 removes. A step that would push the utilisation
past (1 + ρ)/2 is shortened (E[S] is affine in ℓ, so this is exact), keeping
every iterate inside the stability region.
"""

from __future__ import annotations

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
    - `adaptive`: halve θ whenever the residual grows (and let it recover by
      ×1.25 up to `damping` while it falls). `False` keeps θ fixed, as in the paper.
    - `tol`: relative tolerance on ‖P(ℓ̂(ℓ)) − ℓ‖∞ (tokens). Default by dtype.
    - `max_steps`: cap on iterations.
    """

    damping: float = 0.7
    adaptive: bool = True
    tol: float | None = None
    max_steps: int = 10_000

    def __call__(self, problem: Problem, start=None):
        tol = resolve_tol(self.tol, problem.A.dtype)
        lam = problem.arrival_rate
        ell0 = jnp.zeros_like(problem.A) if start is None else start
        dtype = ell0.dtype

        def cond(state):
            ell, theta, last, step, done = state
            return (~done) & jnp.all(jnp.isfinite(ell)) & (step < self.max_steps)

        def body(state):
            ell, theta, last, step, _ = state
            r = fixed_point_map(problem, ell) - ell  # eq. 24 without damping, minus ℓ
            size = jnp.max(jnp.abs(r))
            done = small_enough(r, ell, tol)
            if self.adaptive:
                theta = jnp.where(size > last, 0.5 * theta, jnp.minimum(self.damping, 1.25 * theta))
            rho = lam * moments(problem, ell)[0]
            rise = lam * jnp.sum(problem.prob * problem.c * r)  # ρ(ℓ + r) − ρ(ℓ), exact: E[S] is affine
            cap = jnp.where(rise > 0, 0.5 * (1.0 - rho) / rise, jnp.inf)
            # converged: finish with the undamped map, whose value is the accurate best response
            ell_new = ell + jnp.where(done, 1.0, jnp.minimum(theta, cap)) * r
            return ell_new, theta, size, step + 1, done

        init = (ell0, jnp.asarray(self.damping, dtype), jnp.asarray(jnp.inf, dtype), jnp.asarray(0), jnp.asarray(False))
        ell, _, _, steps, done = lax.while_loop(cond, body, init)
        return ell, steps, done
