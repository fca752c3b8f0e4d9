"""Fig. 4 and parameter curves."""

import numpy as np
import pytest

import jaxalloc as ja
from jaxalloc.sensitivity import budget_curve, parameter_curve


def test_fig4_peaks_at_341_tokens(paper):
    curve = budget_curve(paper, "GSM8K", np.arange(0, 1001.0))
    peak = curve["budget"][np.argmax(curve["objective"])]
    assert peak == 341.0  # the continuous optimum is 340.89
    assert np.max(curve["objective"]) <= float(curve["optimal_objective"])
    assert np.all(curve["lower_bound"] <= curve["objective"])
    with pytest.raises(ja.ProblemError, match="task = 'MATH': unknown task"):
        budget_curve(paper, "MATH", [0.0])


def test_parameter_curve_derivative_matches_differences(paper):
    lam = np.linspace(0.05, 0.25, 41)
    curve = parameter_curve(paper, "arrival_rate", lam)
    fd = np.gradient(curve["budgets"], lam, axis=0)
    # second-order central differences on a 0.005 grid: compare inside, relative 1e-3
    inner = slice(2, -2)
    np.testing.assert_allclose(curve["derivative"][inner], fd[inner], rtol=1e-3, atol=1e-6)
    with pytest.raises(ja.ProblemError, match="param = 'beta'"):
        parameter_curve(paper, "beta", [1.0])


def test_simulated_points_track_the_curve(paper):
    from jaxalloc.sensitivity import simulated_budget_points

    budgets = np.array([0.0, 341.0, 800.0])
    sim = simulated_budget_points(paper, "GSM8K", budgets, queries=10_000, replications=20, seed=3)
    exact = budget_curve(paper, "GSM8K", budgets)["objective"]
    assert np.all(sim["halfwidth"] > 0) and np.all(sim["halfwidth"] < 0.2)
    # within 3 half-widths of the 95% interval (about 6 standard errors)
    assert np.all(np.abs(sim["objective"] - exact) <= 3 * sim["halfwidth"]), (sim, exact)
