"""Integer budgets: eq. 39 enumeration, eq. 40 rounding, and the coordinate search."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from problems import random_problem
from reference import J as reference_J
from reference import params

import jaxalloc as ja


def _brute_force(problem, star):
    """Best floor/ceil combination by a plain Python loop over the reference objective."""
    p = params(problem)
    options = [sorted({np.floor(x), np.ceil(x)}) for x in np.asarray(star)]
    best = max(itertools.product(*options), key=lambda ell: reference_J(p, np.array(ell))[0])
    return np.array(best)


@pytest.mark.parametrize("seed", range(4))
def test_enumeration_equals_brute_force(seed):
    problem = random_problem(seed, 6, 0.3 + 0.1 * seed, 1.0 + 0.5 * seed)
    star = ja.solve(problem).budgets
    found = ja.enumerate_floor_ceil(problem, star)
    np.testing.assert_array_equal(found, _brute_force(problem, star))
    assert float(ja.objective(problem, found)) <= float(ja.objective(problem, star))


def test_paper_integer_budgets(paper):
    star = ja.solve(paper).budgets
    np.testing.assert_array_equal(ja.round_budgets(paper, star), [0, 341, 0, 0, 346, 30])  # eq. 40
    best = ja.integer_budgets(paper, star)
    assert float(ja.objective(paper, best)) >= float(ja.objective(paper, ja.round_budgets(paper, star)))
    assert float(ja.integer_lower_bound(paper, star)) <= float(ja.objective(paper, best)) <= float(ja.objective(paper, star))


def test_coordinate_search_matches_enumeration_and_scales():
    for seed in range(4):
        problem = random_problem(10 + seed, 12, 0.5, 2.0)
        star = ja.solve(problem).budgets
        enum = float(ja.objective(problem, ja.enumerate_floor_ceil(problem, star)))
        coord = ja.coordinate_search(problem, star)
        assert np.all(np.abs(np.asarray(coord) - np.asarray(star)) < 1)
        assert float(ja.objective(problem, coord)) == pytest.approx(enum, abs=1e-9 * (1 + abs(enum)))
    big = random_problem(5, 40, 0.5, 2.0)
    star = ja.solve(big).budgets
    with pytest.raises(ValueError, match="N = 40 tasks needs 2\\^40"):
        ja.enumerate_floor_ceil(big, star)
    auto = ja.integer_budgets(big, star)  # falls back to the coordinate search
    assert float(ja.objective(big, auto)) >= float(ja.objective(big, ja.round_budgets(big, star)))
    np.testing.assert_array_equal(auto, jnp.round(auto))


def test_integer_budgets_respect_max_tokens():
    problem = random_problem(1, 3, 0.01, 3.0, b_range=(1e-5, 2e-5)).replace(max_tokens=1000.5)
    star = ja.solve(problem).budgets
    assert float(jnp.max(star)) == 1000.5
    assert float(jnp.max(ja.integer_budgets(problem, star))) == 1000.0
    with pytest.raises(ValueError, match="integer method = 'best'"):
        ja.integer_budgets(problem, star, "best")


def test_enumeration_batched_equals_points_and_argmax():
    """A batch (fields with a leading axis) gives the per-point answers, and the
    max/min argmax equals numpy's argmax, ties to the lowest index included."""
    problem = random_problem(3, 6, 0.4, 1.5)
    lam = float(problem.arrival_rate) * np.linspace(0.2, 1.2, 9)
    alpha = np.geomspace(1.0, 300.0, 9)
    stars = np.stack([np.asarray(ja.solve(problem.replace(arrival_rate=l, alpha=a)).budgets) for l, a in zip(lam, alpha)])
    stars[0] = np.floor(stars[0])  # integral already: floor = ceil, every candidate ties
    batch = problem.replace(arrival_rate=jnp.asarray(lam), alpha=jnp.asarray(alpha))
    found = np.asarray(ja.enumerate_floor_ceil(batch, jnp.asarray(stars)))
    for i in range(len(lam)):
        p = problem.replace(arrival_rate=lam[i], alpha=alpha[i])
        np.testing.assert_array_equal(found[i], _brute_force(p, stars[i]))
    np.testing.assert_array_equal(found[0], stars[0])

    from jaxalloc.solvers.integer import _first_argmax

    values = np.random.default_rng(0).integers(0, 5, (200, 64)).astype(np.float64)  # many ties
    values[:3] = -np.inf  # all candidates unstable: index 0, as argmax
    np.testing.assert_array_equal(np.asarray(_first_argmax(jnp.asarray(values))), np.argmax(values, axis=-1))


@pytest.mark.parametrize("A0", [0.3, 1e-6])
def test_lower_bound_finite_and_valid_at_steep_accuracy(A0):
    """b_0 = 1000 puts ℓ*_0 below one token (0.012 with A_0 = 0.3) or at 0 (A_0 = 1e-6):
    eq. 41 as printed, p(ℓ* − 1), overflowed there to J̄ = −inf. The bound takes p at
    max(ℓ* − 1, 0), the least any integer budget within 1 of ℓ* can have, and stays
    below J at every such integer point and below the integer optimum found by brute
    force over [0, 4] × [0, 120]² with the reference objective."""
    problem = ja.make_problem(arrival_rate=0.5, alpha=10.0, max_tokens=32768.0, A=[A0, 0.5, 0.4],
                              b=[1000.0, 0.05, 0.02], D=[0.2, 0.1, 0.3], t0=[0.3, 0.5, 0.8],
                              c=[0.01, 0.02, 0.005], prob=[0.3, 0.3, 0.4])
    star = np.asarray(ja.solve(problem).budgets)
    assert star[0] < 0.3  # e^{b_0 (1 - ℓ*_0)} > e^{700}: beyond float64 in the printed form
    bound = float(ja.integer_lower_bound(problem, jnp.asarray(star)))
    assert np.isfinite(bound) and bool(ja.integer_bound_holds(problem, jnp.asarray(star)))

    p = params(problem)  # eq. 41 written out, with the worst accuracy at max(ℓ* − 1, 0)
    t = p["t0"] + p["c"] * star
    m1, m2, c_max = p["pi"] @ t, p["pi"] @ (t * t), p["c"].max()
    accuracy = p["pi"] @ (p["A"] * (1 - np.exp(-p["b"] * np.maximum(star - 1, 0))) + p["D"])
    expected = p["alpha"] * accuracy - (p["lam"] * m2 + 2 * c_max) / (2 * (1 - p["lam"] * (m1 + c_max))) - m1
    assert bound == pytest.approx(expected, rel=1e-13)
    assert bound == pytest.approx(3.14448 if A0 == 0.3 else 3.14455, abs=1e-5)

    grid = itertools.product(range(5), range(121), range(121))
    values = {ell: reference_J(p, np.array(ell, float))[0] for ell in grid}
    best = max(values, key=values.get)
    near = [v for ell, v in values.items() if np.all(np.abs(np.array(ell) - star) <= 1)]
    assert bound <= min(near) <= values[best] <= float(ja.objective(problem, jnp.asarray(star)))
    assert values[best] == pytest.approx(float(ja.objective(problem, ja.integer_budgets(problem, jnp.asarray(star)))),
                                         rel=1e-12)
