"""Implicit differentiation of ℓ*(θ) against finite differences of re-solved problems."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import random_problem

import jaxalloc as ja
from jaxalloc.implicit import optimal_budgets

_JVP = jax.jit(lambda p, dp: jax.jvp(optimal_budgets, (p,), (dp,))[1])  # one compilation per N
FIELDS = ["arrival_rate", "alpha", "max_tokens", "prob", "A", "b", "D", "t0", "c"]


def _direction(problem, field, rng):
    value = np.asarray(getattr(problem, field))
    return np.ones_like(value) if value.ndim == 0 else rng.uniform(0.5, 1.5, value.shape)


def _solve_budgets(problem):
    return np.asarray(ja.solve(problem, throw=True, check=False).budgets)


@pytest.mark.parametrize("case", ["paper", "random6", "random17"])
def test_jvp_matches_central_differences_for_every_parameter(paper, case):
    problem = {"paper": paper, "random6": random_problem(2, 6, 0.6, 1.5, b_range=(1e-4, 1e-1)),
               "random17": random_problem(4, 17, 0.4, 2.0, b_range=(1e-4, 1e-1))}[case]
    star = np.asarray(ja.solve(problem).budgets)
    rng = np.random.default_rng(0)
    zero = jax.tree_util.tree_map(jnp.zeros_like, problem)
    for field in FIELDS:
        base = np.asarray(getattr(problem, field), dtype=np.float64)
        direction = _direction(problem, field, rng) * np.maximum(np.abs(base), 1e-3)  # relative perturbation
        jvp = _JVP(problem, zero.replace(**{field: direction}))
        h = 1e-6
        up = _solve_budgets(problem.replace(**{field: base + h * direction}))
        down = _solve_budgets(problem.replace(**{field: base - h * direction}))
        fd = (up - down) / (2 * h)
        scale = 1e-5 * (np.abs(fd) + 1e-3 * (1 + np.abs(star)))  # 1e-5 relative, floor for zeros
        assert np.all(np.abs(np.asarray(jvp) - fd) <= scale), (field, np.asarray(jvp), fd)


def test_reverse_mode_and_vmap(paper):
    grad_j = jax.grad(lambda a: ja.objective(paper.replace(alpha=a), optimal_budgets(paper.replace(alpha=a))))(30.0)
    # envelope theorem: dJ(ℓ*(α), α)/dα = ∂J/∂α = mean accuracy at ℓ*
    assert float(grad_j) == pytest.approx(float(ja.mean_accuracy(paper, ja.solve(paper).budgets)), rel=1e-10)
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda lam: optimal_budgets(paper.replace(arrival_rate=lam)))))(
        jnp.array([0.05, 0.1]))
    rev = jax.jacrev(lambda lam: optimal_budgets(paper.replace(arrival_rate=lam)))(0.1)
    np.testing.assert_allclose(jac[1], rev, rtol=1e-10)
    assert np.all(np.asarray(jac)[:, [0, 2, 3]] == 0.0)  # budgets clipped at 0: zero sensitivity


def test_budgets_at_the_cap_follow_the_cap():
    problem = random_problem(1, 3, 0.01, 3.0, b_range=(1e-5, 2e-5)).replace(max_tokens=1000.0)
    star = np.asarray(ja.solve(problem).budgets)
    at_cap = star == 1000.0
    assert at_cap.sum() >= 2 and np.all((star == 0) | at_cap)
    d = jax.jacfwd(lambda top: optimal_budgets(problem.replace(max_tokens=top)))(1000.0)
    np.testing.assert_array_equal(d, at_cap.astype(float))
    d_alpha = jax.jacfwd(lambda a: optimal_budgets(problem.replace(alpha=a)))(float(problem.alpha))
    np.testing.assert_array_equal(d_alpha, np.zeros(3))


@pytest.mark.parametrize("solver", [ja.FixedPoint(), ja.AggregateNewton()], ids=["fixed-point", "newton"])
def test_implicit_equals_forward_mode_through_the_unrolled_iterations(paper, solver):
    """Forward-mode autodiff through the solver's while_loop iterations converges to the
    same derivative as the implicit rule, for a tangent that moves every parameter."""
    rng = np.random.default_rng(1)
    for problem in (paper, random_problem(2, 6, 0.6, 1.5, b_range=(1e-4, 1e-1))):
        tangent = jax.tree_util.tree_map(
            lambda x: jnp.asarray(rng.uniform(0.5, 1.5, np.shape(x))) * jnp.abs(x), problem)
        unrolled = jax.jvp(lambda p: ja.solve_point(p, solver).budgets, (problem,), (tangent,))[1]
        implicit = _JVP(problem, tangent)
        np.testing.assert_allclose(unrolled, implicit, rtol=1e-6, atol=1e-9 * (1 + float(jnp.max(jnp.abs(implicit)))))
