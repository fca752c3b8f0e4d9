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


def test_quantile_columns_equal_system_time_quantiles(paper, tmp_path, capsys):
    """`sensitivity --quantile p99 --quantile p95`: CSV columns (and a PNG panel) holding the overall
    system time's quantiles at each point's budgets, as system_time_quantiles gives them (exact)."""
    import csv
    import json

    import equinox as eqx
    import jax.numpy as jnp

    from jaxalloc.cli import main
    from jaxalloc.quantiles import system_time_quantiles

    levels = (0.99, 0.95)
    direct = eqx.filter_jit(lambda problem, ell: system_time_quantiles(problem, ell, levels, "exact").overall)
    out = tmp_path / "fig4"
    assert main(["sensitivity", "--task", "GSM8K", "--range", "0:1000:6", "--quantile", "p99", "--quantile", "p95",
                 "--quantile", "0.99", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quantiles"] == ["p99", "p95"]
    with open(tmp_path / "fig4.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["budget", "objective", "lower_bound", "p99", "p95"] and len(rows) == 6
    star = ja.solve(paper).budgets
    k = paper.names.index("GSM8K")
    for row in rows:
        ell = star.at[k].set(float(row["budget"]))
        want = np.asarray(direct(paper, ell))
        np.testing.assert_allclose([float(row["p99"]), float(row["p95"])], want, rtol=1e-9)
    assert (tmp_path / "fig4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # along a parameter: at ℓ*(θ)
    lam = np.array([0.05, 0.1, 0.2])
    curve = parameter_curve(paper, "arrival_rate", lam, quantiles=levels)
    assert curve["quantiles"].shape == (3, 2)
    for i, v in enumerate(lam):
        want = np.asarray(direct(paper.replace(arrival_rate=v), jnp.asarray(curve["budgets"][i])))
        np.testing.assert_allclose(curve["quantiles"][i], want, rtol=1e-9)
    assert np.all(np.diff(curve["quantiles"][:, 0]) != 0)
