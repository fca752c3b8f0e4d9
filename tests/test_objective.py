"""The objective (eq. 7), its derivatives, and the integer lower bound (eq. 41)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from problems import problems, random_problem
from reference import J as reference_J
from reference import neg_hessian, params

import jaxalloc as ja


def _interior_points(problem, count, seed=0):
    """Random budgets inside the stability region, spread up to ρ ≈ 0.99."""
    rng = np.random.default_rng(seed)
    p = params(problem)
    points = []
    while len(points) < count:
        direction = rng.exponential(size=p["A"].size)
        rho_target = rng.uniform(p["lam"] * (p["pi"] @ p["t0"]), 0.99)
        scale = (rho_target / p["lam"] - p["pi"] @ p["t0"]) / (p["pi"] @ (p["c"] * direction))
        points.append(np.minimum(direction * scale, p["lmax"]))
    return np.array(points)


def test_queue_formulas_closed_forms():
    lam, m1, m2 = 0.5, 1.0, 1.5
    assert float(ja.mean_wait(lam, m1, m2)) == pytest.approx(lam * m2 / (2 * (1 - lam * m1)))  # eq. 5
    assert float(ja.mean_system_time(lam, m1, m2)) == pytest.approx(0.75 + 1.0)  # eq. 6
    # M/M/1 special case: exponential service, E[S²] = 2 E[S]², E[T] = 1/(μ − λ)
    mu = 2.0
    assert float(ja.mean_system_time(lam, 1 / mu, 2 / mu**2)) == pytest.approx(1 / (mu - lam))
    assert float(ja.mean_wait(2.0, 0.5, 1.0)) == np.inf  # ρ = 1: unstable
    assert float(jax.grad(ja.mean_wait, argnums=1)(2.0, 0.6, 1.0)) == 0.0  # finite, not NaN


def test_objective_and_gradient_match_reference(paper):
    for ell in _interior_points(paper, 20):
        value, grad = reference_J(params(paper), ell)
        assert float(ja.objective(paper, ell)) == pytest.approx(value, rel=1e-13)
        np.testing.assert_allclose(ja.gradient(paper, ell), grad, rtol=1e-10, atol=1e-15)


@settings(max_examples=15, deadline=None)
@given(problem=problems(task_counts=(1, 6)))
def test_hessian_matches_eq_34_and_is_negative_definite(problem):
    """Autodiff Hessian = eqs. 33–34 (hand-written in the reference) and is negative
    definite across the stability region (Lemma 1), including near ρ → 1."""
    for ell in _interior_points(problem, 5):
        h = np.asarray(ja.hessian(problem, ell))
        p = params(problem)
        ref = -neg_hessian(p, ell)
        accuracy = np.diag(p["alpha"] * p["pi"] * p["A"] * p["b"] ** 2 * np.exp(-p["b"] * ell))
        # 1e-10 relative to the matrix; and entrywise, relative to the magnitudes of the
        # two terms (they cancel on the diagonal), so that small entries are checked too
        err = np.abs(h - ref)
        assert err.max() <= 1e-10 * np.abs(ref).max()
        scale = np.abs(accuracy) + np.abs(ref + accuracy)
        assert np.all(err <= 1e-8 * scale + 1e-14 * np.abs(ref).max())
        assert np.linalg.eigvalsh(h).max() < 0


def test_gradient_matches_finite_differences():
    problem = random_problem(3, 6, 0.5, 1.0)
    ell = _interior_points(problem, 1, seed=3)[0]
    step = 1e-3 * (1 + ell)
    fd = [(float(ja.objective(problem, ell + step * e)) - float(ja.objective(problem, ell - step * e))) / (2 * step[k])
          for k, e in enumerate(np.eye(6))]
    np.testing.assert_allclose(ja.gradient(problem, ell), fd, rtol=1e-6, atol=1e-12)


def test_objective_is_minus_inf_when_unstable(paper):
    assert float(ja.objective(paper, jnp.full(6, 30000.0))) == -np.inf


def test_integer_lower_bound_holds_for_every_neighbour(paper):
    """J̄(ℓ*) ≤ J(ℓ) for every integer ℓ with |ℓ − ℓ*| ≤ 1 (eq. 41), here all 2^N floor/ceil."""
    for lam, alpha in [(0.1, 30.0), (0.3, 100.0), (0.05, 500.0)]:
        problem = paper.replace(arrival_rate=lam, alpha=alpha)
        star = ja.solve(problem).budgets
        bound = float(ja.integer_lower_bound(problem, star))
        assert bool(ja.integer_bound_holds(problem, star))
        lo, hi = np.floor(star), np.ceil(star)
        bits = (np.arange(64)[:, None] >> np.arange(6)) & 1
        values = jax.vmap(lambda x, problem=problem: ja.objective(problem, x))(jnp.where(bits, hi, lo))
        assert bound <= float(values.min())
        assert bound <= float(ja.solve(problem).objective)


def test_integer_lower_bound_reports_failed_assumption():
    problem = random_problem(0, 2, 0.9, 0.0).replace(c=jnp.array([5.0, 5.0]))
    ell = jnp.zeros(2)
    assert not bool(ja.integer_bound_holds(problem, ell))
    assert float(ja.integer_lower_bound(problem, ell)) == -np.inf
