"""The stable region of the Lemma 2–3 bounds and the step bound of projected gradient ascent."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from problems import problems

import jaxalloc as ja
from jaxalloc.bounds import (
    contraction_constant,
    lemma3_matrix,
    lemma3_row_sums,
    lipschitz_constant,
    paper_box,
    superlevel_region,
)


def test_paper_box_is_unstable_by_a_factor_of_about_40(paper):
    box = paper_box(paper)
    assert 35 < float(box.rho_max) < 45  # Lemmas 2–3 assume ρ_max < 1
    region = superlevel_region(paper, jnp.zeros(6))
    assert float(region.rho_max) < 1
    star = ja.solve(paper).budgets
    assert bool(jnp.all(star <= region.upper))
    assert float(contraction_constant(paper, region)) >= 1  # L∞ certifies nothing here (design notes)


@settings(max_examples=15, deadline=None)
@given(problem=problems(task_counts=(1, 6)))
def test_lemma3_bound_holds_on_the_superlevel_set(problem):
    """|∂²J/∂ℓ_k∂ℓ_j| ≤ H_kj (eq. 31) at points of {J ≥ J(0)}, including the optimum,
    and the O(N) row sums equal the matrix's."""
    zero = jnp.zeros_like(problem.A)
    region = superlevel_region(problem, zero)
    bound = np.asarray(lemma3_matrix(problem, region))
    np.testing.assert_allclose(lemma3_row_sums(problem, region), bound.sum(axis=1), rtol=1e-12)
    star = ja.solve(problem).budgets
    rng = np.random.default_rng(0)
    j0 = float(ja.objective(problem, zero))
    points = [np.asarray(star)] + [np.asarray(star) * rng.uniform(0, 1.5, star.shape) for _ in range(20)]
    checked = 0
    for ell in points:
        ell = np.clip(ell, 0, float(problem.max_tokens))
        if float(ja.objective(problem, ell)) < j0:
            continue  # outside the set the bound is taken over
        checked += 1
        assert np.all(np.abs(np.asarray(ja.hessian(problem, ell))) <= bound * (1 + 1e-12))
        assert np.all(ell <= np.asarray(region.upper) * (1 + 1e-12))
    assert checked >= 1


def test_gradient_step_bound_gives_monotone_ascent(paper):
    """With η = 1.9/L_J, every step of eq. 29 from ℓ = 0 increases J."""
    eta = 1.9 / float(lipschitz_constant(paper, superlevel_region(paper, jnp.zeros(6))))

    def step(ell, _):
        new = jnp.clip(ell + eta * ja.gradient(paper, ell), 0.0, paper.max_tokens)
        return new, ja.objective(paper, new)

    _, values = jax.lax.scan(step, jnp.zeros(6), None, length=3000)
    assert bool(jnp.all(jnp.diff(values) >= -1e-12))


@settings(max_examples=30, deadline=None)
@given(problem=problems(task_counts=(1, 6, 64)))
def test_contraction_constant_is_never_below_one(problem):
    """L∞ of eq. 26 ≥ Σ_j π_j c_j / min_k c_k ≥ 1 (take k with the smallest c_k: its
    bracket is ≥ 1), so Lemma 2's sufficient condition L∞ < 1 holds for no problem."""
    floor = float(jnp.sum(problem.prob * problem.c) / jnp.min(problem.c))
    assert floor >= 1 - 1e-12
    for region in (paper_box(problem), superlevel_region(problem, jnp.zeros_like(problem.A))):
        if float(region.rho_max) < 1:
            assert float(contraction_constant(problem, region)) >= floor * (1 - 1e-12)
