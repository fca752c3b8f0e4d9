"""The Lemma 1–3 report of `jaxalloc verify`."""

import numpy as np

import jaxalloc as ja
from jaxalloc.verify import objective_hessian_closed_form, verify
from problems import random_problem
from reference import neg_hessian, params


def test_closed_form_equals_the_independent_reference(paper):
    ell = np.array([10.0, 300.0, 0.0, 50.0, 400.0, 30.0])
    np.testing.assert_allclose(objective_hessian_closed_form(paper, ell), -neg_hessian(params(paper), ell), rtol=1e-13)


def test_paper_profile_report(paper):
    report = verify(paper, points=60)
    assert report["pass"]
    l1, l2, l3 = report["lemma1"], report["lemma2"], report["lemma3"]
    assert l1["largest_eigenvalue"] < 0 and l1["utilization_range"][1] > 0.99
    assert l1["max_relative_error_objective_hessian"] < 1e-10
    assert "superlevel set" in l2["region"] and "rho_max = 41" in l2["region"]  # the paper's box is unstable
    assert l2["L_inf"] >= 1 and not l2["certifies_contraction"]  # Lemma 2 certifies nothing here
    assert l2["observed_max_jacobian_norm"] <= l2["L_inf"]
    assert l3["entries_within_bound"] and l3["looseness"] >= 1
    box = l3["largest_box"]  # the lemmas' own box, shrunk until stable (corner at ρ = 0.99)
    assert "rho_max = 0.99" in box["region"] and box["pass"] and l2["largest_box"]["pass"]


def test_small_box_uses_the_papers_region():
    problem = random_problem(3, 4, 0.2, 1.0).replace(max_tokens=50.0)
    report = verify(problem, points=40)
    assert report["lemma2"]["region"] == "the box [0, l_max]^N"
    assert report["pass"]
