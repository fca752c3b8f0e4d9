"""The Lemma 1–3 report of `jaxalloc verify`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import random_problem
from reference import neg_hessian, params
from scipy.special import lambertw

import jaxalloc as ja
import jaxalloc.verify
from jaxalloc.cli import main
from jaxalloc.kkt import fixed_point_map
from jaxalloc.verify import _unprojected_map, format_verify_report, objective_hessian_closed_form, verify


def eq22_reference(problem, ell):
    """ℓ̂(ℓ) of eqs. 20–22 as printed, in NumPy with scipy's Lambert W, not projected."""
    p = params(problem)
    lam, pi, c = p["lam"], p["pi"], p["c"]
    t = p["t0"] + c * ell
    m1, m2 = pi @ t, pi @ (t * t)
    slack = 1 - lam * m1
    L = p["alpha"] * p["A"] * p["b"] / (lam * c**2) * slack  # eq. 20
    K = -p["t0"] / c - slack / (lam * c) - lam * m2 / (2 * c * slack)  # eq. 21
    z = p["b"] * L * np.exp(-p["b"] * K)
    assert np.all(np.isfinite(z)), z  # keep to points where z fits a float64
    return K + lambertw(z).real / p["b"]  # eq. 22


def fd_jacobian_norm(f, ell, h=1e-3):
    """‖∂f/∂ℓ‖∞ (largest absolute row sum) by central differences."""
    columns = [(f(ell + h * e) - f(ell - h * e)) / (2 * h) for e in np.eye(len(ell))]
    return np.abs(np.stack(columns, axis=1)).sum(axis=1).max()


def _l_inf_floor(problem):
    """Σ_j π_j c_j / min_k c_k: the k of the smallest c_k alone puts L∞ (eq. 26) above this, and it is ≥ 1."""
    p = params(problem)
    return p["pi"] @ p["c"] / p["c"].min()


def test_closed_form_equals_the_independent_reference(paper):
    ell = np.array([10.0, 300.0, 0.0, 50.0, 400.0, 30.0])
    np.testing.assert_allclose(objective_hessian_closed_form(paper, ell), -neg_hessian(params(paper), ell), rtol=1e-13)


def test_lemma2_map_is_the_unprojected_eq22(paper):
    """At ℓ* three budgets of the paper profile sit at 0: the map checked is eq. 22
    itself (negative values there), and its Jacobian norm, which the clip at 0 would
    lower from 0.4385 to 0.3101, equals a finite-difference one of the reference."""
    star = np.asarray(ja.solve(paper).budgets)
    hat = np.asarray(_unprojected_map(paper, jnp.asarray(star)))
    np.testing.assert_allclose(hat, eq22_reference(paper, star), rtol=1e-10)
    assert np.all(hat[[0, 2, 3]] < -200)
    jac = np.asarray(jax.jacfwd(lambda x: _unprojected_map(paper, x))(jnp.asarray(star)))
    norm = np.abs(jac).sum(axis=1).max()
    assert norm == pytest.approx(fd_jacobian_norm(lambda x: eq22_reference(paper, x), star), rel=1e-7)
    assert norm == pytest.approx(0.43854, abs=1e-5)
    clipped = np.abs(np.asarray(jax.jacfwd(lambda x: fixed_point_map(paper, x))(jnp.asarray(star)))).sum(axis=1).max()
    assert clipped == pytest.approx(0.31007, abs=1e-5)


def test_paper_profile_report(paper):
    """Lemmas 2–3 are not applicable to the paper profile (ρ_max = 41 on its box), their
    bounds hold on the stable regions checked instead; the report says so, and the
    Jacobian norms it reports equal finite differences of eq. 22 at the points met."""
    report = verify(paper, points=60)
    l1, l2, l3 = report["lemma1"], report["lemma2"], report["lemma3"]
    assert (l1["outcome"], l2["outcome"], l3["outcome"]) == ("holds", "not_applicable", "not_applicable")
    assert report["failed"] == []
    assert l1["largest_eigenvalue"] < 0 and l1["utilization_range"][1] > 0.99
    assert l1["max_relative_error_objective_hessian"] < 1e-10
    assert l2["rho_max_box"] == pytest.approx(41.3545, abs=1e-4) and not l2["assumption_holds"]
    assert "rho_max = 41.4" in l2["reason"] and "rho_max = 41.4" in l3["reason"]
    assert l2["region"] == "the superlevel set {J >= J(0)}" and l2["rho_max"] < 1
    box = l2["largest_box"]  # the lemmas' own box, shrunk until stable (corner at ρ = 0.99)
    assert box["rho_max"] == pytest.approx(0.99) and box["region"] == "the largest stable box [0, 775.0]^N"
    top = float(box["region"].split("[0, ")[1].split("]")[0])
    for entry, problem in [(l2, paper), (box, paper.replace(max_tokens=top))]:
        assert entry["bound_holds"] and entry["observed_max_jacobian_norm"] <= entry["L_inf"]
        fd = fd_jacobian_norm(lambda x, q=problem: eq22_reference(q, x), np.array(entry["worst_point"]))
        assert entry["observed_max_jacobian_norm"] == pytest.approx(fd, rel=1e-7)
    assert l2["L_inf"] >= _l_inf_floor(paper) >= 1 and not l2["certifies_contraction"]
    assert l3["entries_within_bound"] and l3["looseness"] >= 1 and l3["largest_box"]["bound_holds"]
    text = format_verify_report(report)
    assert "Lemma 2 (Jacobian bound of the fixed-point map, eq. 26): not applicable" in text
    assert "PASS" not in text and text.endswith("overall: no lemma fails")


def test_lemmas_hold_where_their_assumption_does():
    """A box small enough to be stable (ρ_max = 0.27 < 1): Lemmas 2 and 3 hold as stated.
    L∞ < 1 cannot be built, whatever the c_k: L∞ ≥ Σπ_j c_j / min c_k ≥ 1 (here 8.26)."""
    problem = random_problem(3, 4, 0.2, 1.0).replace(max_tokens=50.0)
    report = verify(problem, points=40)
    l2, l3 = report["lemma2"], report["lemma3"]
    assert (report["lemma1"]["outcome"], l2["outcome"], l3["outcome"]) == ("holds", "holds", "holds")
    assert l2["region"] == "the box [0, l_max]^N" and l2["assumption_holds"] and "largest_box" not in l2
    p = params(problem)
    assert l2["rho_max"] == pytest.approx(p["lam"] * p["pi"] @ (p["t0"] + p["c"] * 50.0), rel=1e-12)
    assert l2["rho_max"] < 1
    fd = fd_jacobian_norm(lambda x: eq22_reference(problem, x), np.array(l2["worst_point"]))
    assert l2["observed_max_jacobian_norm"] == pytest.approx(fd, rel=1e-7)
    assert l2["observed_max_jacobian_norm"] == pytest.approx(0.6137, abs=1e-4)
    assert _l_inf_floor(problem) == pytest.approx(8.2648, abs=1e-4)
    assert l2["L_inf"] >= _l_inf_floor(problem)
    assert not l2["certifies_contraction"] and "certifies no contraction" in l2["contraction_note"]
    assert "bound (26) holds" in l2["reason"] and report["failed"] == []


def test_a_violated_bound_fails_with_exit_status_1(monkeypatch, capsys):
    """An autodiff Jacobian above L∞ is a failure, with its reason, and `jaxalloc verify` exits 1;
    a lemma not applicable to the profile (the paper's, by default) is not."""
    assert main(["verify", "--points", "5"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(jaxalloc.verify, "contraction_constant", lambda problem, region: jnp.asarray(1e-3))
    report = verify(ja.paper_profile(), points=5)
    assert report["lemma2"]["outcome"] == "fails" and report["failed"] == ["lemma2"]
    assert "> L_inf = 0.001 (eq. 26)" in report["lemma2"]["reason"]
    assert main(["verify", "--points", "5"]) == 1
    assert "overall: FAIL (lemma2)" in capsys.readouterr().out
