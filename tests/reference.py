"""An independent reference: problem (9) written in NumPy and solved with scipy.

Nothing here imports jaxalloc's objective or solvers; tests compare the two.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, minimize


def params(problem):
    """Plain float64 arrays from a jaxalloc Problem."""
    g = lambda f: np.asarray(getattr(problem, f), dtype=np.float64)
    return {
        "lam": float(problem.arrival_rate), "alpha": float(problem.alpha), "lmax": float(problem.max_tokens),
        "pi": g("prob"), "A": g("A"), "b": g("b"), "D": g("D"), "t0": g("t0"), "c": g("c"),
    }


def J(p, ell):
    """Eq. 7 and its gradient (eq. 10 and 15), by hand. -inf when unstable."""
    t = p["t0"] + p["c"] * ell
    m1, m2 = p["pi"] @ t, p["pi"] @ (t * t)
    slack = 1 - p["lam"] * m1
    if slack <= 0:
        return -np.inf, np.zeros_like(ell)
    acc = p["pi"] @ (p["A"] * (1 - np.exp(-p["b"] * ell)) + p["D"])
    val = p["alpha"] * acc - p["lam"] * m2 / (2 * slack) - m1
    dwait = p["lam"] * p["pi"] * p["c"] * (t / slack + p["lam"] * m2 / (2 * slack**2))
    grad = p["alpha"] * p["pi"] * p["A"] * p["b"] * np.exp(-p["b"] * ell) - dwait - p["pi"] * p["c"]
    return val, grad


def neg_hessian(p, ell):
    """−∇²J by hand: accuracy curvature (eq. 33) plus the delay Hessian (eq. 34)."""
    t = p["t0"] + p["c"] * ell
    m1, m2 = p["pi"] @ t, p["pi"] @ (t * t)
    lam, D = p["lam"], 1 - p["lam"] * m1
    w = p["pi"] * p["c"]
    acc = p["alpha"] * p["pi"] * p["A"] * p["b"] ** 2 * np.exp(-p["b"] * ell)
    return (
        np.diag(acc + lam * p["pi"] * p["c"] ** 2 / D)
        + lam**2 * np.outer(w, w) * (t[:, None] + t[None, :]) / D**2
        + lam**3 * np.outer(w, w) * m2 / D**3
    )


def scipy_solve(problem, tight=True):
    """scipy's answer to (9), from ℓ = 0, coordinates rescaled by the curvature at 0.

    L-BFGS-B alone, started at 0, can stop at once reporting convergence while
    far from the optimum (the unstable region is a cliff for it), so a
    `trust-constr` interior-point run with the stability condition as a linear
    constraint goes first, and L-BFGS-B at tight tolerances polishes its point.
    With `tight=False`: plain L-BFGS-B at scipy's defaults (what users reach for).

    Returns (ℓ, J, scipy result of the last stage).
    """
    p = params(problem)
    n = p["A"].size
    # Diagonal curvature at ℓ = 0 (accuracy part + M/G/1 diagonal), used only to scale.
    slack0 = 1 - p["lam"] * (p["pi"] @ p["t0"])
    h = p["alpha"] * p["pi"] * p["A"] * p["b"] ** 2 + p["lam"] * p["pi"] * p["c"] ** 2 / slack0
    s = 1 / np.sqrt(h)
    upper = p["lmax"] / s

    def f(x):
        ell = x * s
        val, grad = J(p, ell)
        if not np.isfinite(val):
            return 1e300, np.zeros_like(x)
        return -val, -grad * s

    def hess(x):
        return neg_hessian(p, x * s) * np.outer(s, s)

    x0 = np.zeros(n)
    if tight:
        stability = LinearConstraint((p["lam"] * p["pi"] * p["c"] * s)[None, :], -np.inf, slack0 - 1e-9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first = minimize(f, x0, jac=True, hess=hess, method="trust-constr", bounds=Bounds(0, upper),
                             constraints=[stability], options={"gtol": 1e-9, "xtol": 1e-12, "maxiter": 5000})
        x0 = np.clip(first.x, 0, upper)
        opts = {"ftol": 1e-15, "gtol": 1e-13, "maxiter": 20000, "maxls": 100, "maxcor": 30}
    else:
        opts = {}
    res = minimize(f, x0, jac=True, method="L-BFGS-B", bounds=[(0, u) for u in upper], options=opts)
    ell = res.x * s
    return ell, J(p, ell)[0], res
