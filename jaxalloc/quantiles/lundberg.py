"""The Cramér–Lundberg asymptote of the M/G/1 waiting time (one FIFO server).

P(W > x) ≈ C e^{−γx} for large x, where γ > 0 is the adjustment coefficient,

    λ (Σ_k π_k e^{γ t_k} − 1) = γ,                 C = (1 − ρ) / (λ Σ_k π_k t_k e^{γ t_k} − 1)

(the pole of the Pollaczek–Khinchine transform nearest the origin; Asmussen,
*Applied Probability and Queues*, XIII.5). γ is found by Newton on
g(γ) = log Σ_k π_k e^{γ t_k} + log λ − log(λ + γ), convex with g(0) = 0 and
g'(0) = E[S] − 1/λ < 0, from the bound γ ≤ 2(1 − ρ)/(λ E[S²]) (where g ≥ 0),
so the iterates fall monotonically to the root and no e^{γt} overflows on the
way. Its derivatives are implicit (∂γ = −∂_θ g / ∂_γ g), not unrolled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp

NEWTON_STEPS = 20
"""Newton steps for γ: on the paper profile (ρ from 0.03 to 0.95) 20 steps give quantiles equal to
80 steps' to 2e-16 (tests: γ equals scipy's brentq to 1e-10 at ρ = 0.05, 0.5, 0.95); a fixed count
keeps it vmap-friendly."""


def _log_mgf(gamma, prob, t):
    """log Σ_k π_k e^{γ t_k} (types with π_k = 0 left out, without log 0 in the derivatives)."""
    pos = prob > 0
    logits = jnp.where(pos, jnp.log(jnp.where(pos, prob, 1.0)) + gamma[..., None] * t, -jnp.inf)
    return logsumexp(logits, axis=-1)


def _g(gamma, lam, prob, t):
    return _log_mgf(gamma, prob, t) + jnp.log(lam) - jnp.log(lam + gamma)


@jax.custom_jvp
def decay_rate(lam, prob, t):
    """γ > 0 with λ(Σ π_k e^{γ t_k} − 1) = γ (one FIFO server; needs ρ = λΣπ_k t_k < 1)."""
    m1 = jnp.sum(prob * t, -1)
    m2 = jnp.maximum(jnp.sum(prob * t * t, -1), 1e-300)
    start = 2.0 * (1.0 - lam * m1) / (lam * m2)
    dg = jax.grad(_g)

    def step(_, gamma):
        return gamma - _g(gamma, lam, prob, t) / dg(gamma, lam, prob, t)

    return lax.fori_loop(0, NEWTON_STEPS, step, start)


@decay_rate.defjvp
def _decay_rate_jvp(primals, tangents):
    gamma = decay_rate(*primals)
    lam, prob, t = primals
    _, dg_theta = jax.jvp(lambda a, b, c: _g(gamma, a, b, c), primals, tangents)
    dg_gamma = jax.grad(_g)(gamma, lam, prob, t)
    return gamma, -dg_theta / dg_gamma


def log_prefactor(gamma, lam, prob, t):
    """log C, C = (1 − ρ)/(λ Σ π_k t_k e^{γ t_k} − 1); at the root λ Σ π_k t_k e^{γ t_k} = (λ + γ) E_γ[t]
    with E_γ the exponentially tilted mean, which never overflows."""
    rho = lam * jnp.sum(prob * t, -1)
    pos = prob > 0
    logits = jnp.where(pos, jnp.log(jnp.where(pos, prob, 1.0)) + gamma[..., None] * t, -jnp.inf)
    tilted = jnp.sum(jax.nn.softmax(logits, axis=-1) * t, -1)
    return jnp.log1p(-rho) - jnp.log((lam + gamma) * tilted - 1.0)
