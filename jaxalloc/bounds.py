"""Curvature and contraction bounds of Lemmas 2 and 3, over a region where they hold.

Lemmas 2 and 3 assume ρ_max = λ E[S]_max < 1 over the whole box [0, ℓ_max]^N.
With the paper's own parameters (ℓ_max = 32768) that fails by a factor of ~40,
so the bounds of eqs. 25–26 and 31–32 are evaluated instead over the
superlevel set

    R(ℓ⁰) = {ℓ ∈ [0, ℓ_max]^N : J(ℓ) ≥ J(ℓ⁰)},

which contains the optimum and every iterate of a monotone ascent method
started at ℓ⁰, and which is stable. On R, E[T](ℓ) ≤ T̄ = α Σ π_k p_k(ℓ_max) − J(ℓ⁰);
since E[T] ≥ m1 + λ m1²/(2(1 − λ m1)) (Jensen: E[S²] ≥ E[S]²) this gives
E[S] ≤ m̄1 < 1/λ, and from it bounds on E[S²] and on each t_k. Substituting
these for E[S]_max, E[S²]_max, t_k^max and ρ_max keeps every inequality of the
proofs of Lemmas 2–3 valid (each right-hand side grows with these quantities).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from .model import Problem
from .objective import mean_accuracy, objective


class Region(NamedTuple):
    """Worst-case queue quantities over a set of budgets (the inputs of eqs. 25–38)."""

    t_max: Float[Array, " N"]  # t_k^max: largest service time of task k
    m2_max: Float[Array, ""]  # E[S²]_max
    rho_max: Float[Array, ""]  # ρ_max = λ E[S]_max; the lemmas need ρ_max < 1
    upper: Float[Array, " N"]  # largest budget of task k in the set


def paper_box(problem: Problem) -> Region:
    """The paper's box [0, ℓ_max]^N (definitions of Lemma 2)."""
    t_max = problem.t0 + problem.c * problem.max_tokens
    m1 = jnp.sum(problem.prob * t_max, axis=-1)
    m2 = jnp.sum(problem.prob * t_max**2, axis=-1)
    upper = jnp.broadcast_to(problem.max_tokens, t_max.shape)
    return Region(t_max, m2, problem.arrival_rate * m1, upper)


def superlevel_region(problem: Problem, start: Float[Array, " N"]) -> Region:
    """Bounds over R(ℓ⁰) = {ℓ in the box : J(ℓ) ≥ J(ℓ⁰)} (see module docstring).

    Always has ρ_max < 1 when J(ℓ⁰) is finite.
    """
    lam = problem.arrival_rate
    full = jnp.broadcast_to(problem.max_tokens, problem.c.shape)
    delay_max = problem.alpha * mean_accuracy(problem, full) - objective(problem, start)
    x = lam * delay_max
    # largest m1 with m1 + λ m1²/(2(1 − λ m1)) ≤ T̄: smaller root of λm² − 2(1+x)m + 2T̄ = 0
    m1_max = 2.0 * delay_max / ((1.0 + x) + jnp.sqrt(1.0 + x * x))
    m1_min = jnp.sum(problem.prob * problem.t0, axis=-1)
    box = paper_box(problem)
    # λ m2 / (2(1 − λ m1)) ≤ T̄ − m1 and both factors fall with m1 ≥ m1_min
    m2_max = jnp.minimum(box.m2_max, 2.0 * (delay_max - m1_min) * (1.0 - lam * m1_min) / lam)
    spare = jnp.maximum(m1_max - m1_min, 0.0)  # Σ π_j c_j ℓ_j ≤ spare on R
    upper = jnp.minimum(problem.max_tokens, spare / (problem.prob * problem.c))
    t_max = jnp.minimum(problem.t0 + problem.c * upper, jnp.sqrt(m2_max / problem.prob))
    return Region(t_max, m2_max, lam * m1_max, upper)


def _lemma3_parts(problem: Problem, region: Region):
    lam = problem.arrival_rate
    gap = 1.0 - region.rho_max
    w = problem.prob * problem.c  # π_k c_k
    diag = lam * problem.prob * problem.c**2 / gap + problem.alpha * problem.prob * problem.A * problem.b**2
    return lam, gap, w, diag


def lemma3_matrix(problem: Problem, region: Region) -> Float[Array, "N N"]:
    """H_kj of eq. 31: |∂²J/∂ℓ_k∂ℓ_j| ≤ H_kj over the region (needs ρ_max < 1)."""
    lam, gap, w, diag = _lemma3_parts(problem, region)
    outer = w[:, None] * w[None, :]
    t = region.t_max
    return (
        jnp.diag(diag)
        + lam**2 * outer * (t[:, None] + t[None, :]) / gap**2
        + lam**3 * outer * region.m2_max / gap**3
    )


def lemma3_row_sums(problem: Problem, region: Region) -> Float[Array, " N"]:
    """Σ_j H_kj (eq. 32) in O(N), without forming the N×N matrix of eq. 31."""
    lam, gap, w, diag = _lemma3_parts(problem, region)
    sw, swt = jnp.sum(w), jnp.sum(w * region.t_max)
    return diag + lam**2 * w * (region.t_max * sw + swt) / gap**2 + lam**3 * w * sw * region.m2_max / gap**3


def lipschitz_constant(problem: Problem, region: Region) -> Float[Array, ""]:
    """L_J = max_k Σ_j H_kj (eq. 32); PGA converges for 0 < η < 2/L_J (eq. 38)."""
    return jnp.max(lemma3_row_sums(problem, region))


def contraction_constant(problem: Problem, region: Region) -> Float[Array, ""]:
    """L∞ of eq. 26; the fixed-point map contracts in ‖·‖∞ if L∞ < 1 (Lemma 2).

    It is ≥ 1 whenever the c_k are similar, so it certifies nothing for the
    paper's parameters; it is reported, not relied on.
    """
    lam = problem.arrival_rate
    gap = 1.0 - region.rho_max
    t_max = jnp.max(region.t_max)
    inner = 1.0 + lam * (t_max / gap + lam * region.m2_max / (2.0 * gap**2))
    per_task = inner / problem.c + lam / (problem.b * gap)
    return jnp.max(per_task) * jnp.sum(problem.prob * problem.c)
