"""An independent reference: problem (9) written in NumPy and solved with scipy.

Nothing here imports jaxalloc's objective or solvers; tests compare the two.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize


def params(problem):
    """Plain float64 arrays from a jaxalloc Problem."""
    g = lambda f: np.asarray(getattr(problem, f), dtype=np.float64)
    return dict(
        lam=float(problem.arrival_rate), alpha=float(problem.alpha), lmax=float(problem.max_tokens),
        pi=g("prob"), A=g("A"), b=g("b"), D=g("D"), t0=g("t0"), c=g("c"),
    )


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


def scipy_solve(problem, tight=True):
    """L-BFGS-B on -J from ℓ = 0, coordinates rescaled by the curvature at 0.

    Returns (ℓ, J, scipy result).
    """
    p = params(problem)
    n = p["A"].size
    # Diagonal curvature at ℓ = 0 (accuracy part + M/G/1 diagonal), used only to scale.
    slack0 = 1 - p["lam"] * (p["pi"] @ p["t0"])
    h = p["alpha"] * p["pi"] * p["A"] * p["b"] ** 2 + p["lam"] * p["pi"] * p["c"] ** 2 / slack0
    s = 1 / np.sqrt(h)

    def f(x):
        ell = x * s
        val, grad = J(p, ell)
        if not np.isfinite(val):
            return 1e300, np.zeros_like(x)
        return -val, -grad * s

    opts = dict(ftol=1e-15, gtol=1e-13, maxiter=20000, maxls=100, maxcor=30) if tight else {}
    res = minimize(f, np.zeros(n), jac=True, method="L-BFGS-B",
                   bounds=[(0, p["lmax"] / si) for si in s], options=opts)
    ell = res.x * s
    return ell, J(p, ell)[0], res
