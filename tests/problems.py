"""Random valid problems for property tests (hypothesis strategies)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import jaxalloc as ja

# A few task counts only: every new N is a new compilation of every solver.
TASK_COUNTS = (1, 6, 64)


def random_problem(seed: int, n: int, rho0: float, log_alpha: float, b_range=(1e-5, 1.0)) -> ja.Problem:
    """A valid problem with utilisation `rho0` at ℓ = 0 and α = 10**log_alpha."""
    rng = np.random.default_rng(seed)
    A = rng.uniform(0.05, 1.0, n)
    D = rng.uniform(0.0, 1.0, n) * (1 - A)
    lo, hi = np.log(b_range[0]), np.log(b_range[1])
    b = np.exp(rng.uniform(lo, hi, n))
    t0 = rng.uniform(0.0, 1.0, n)
    c = np.exp(rng.uniform(np.log(1e-4), np.log(5e-2), n))
    prob = rng.uniform(0.05, 1.0, n)
    prob /= prob.sum()
    m1 = float(prob @ t0)
    lam = rho0 / max(m1, 1e-3)
    return ja.make_problem(
        arrival_rate=lam, alpha=10.0**log_alpha, max_tokens=32768.0,
        A=A, b=b, D=D, t0=t0, c=c, prob=prob,
    )


@st.composite
def problems(draw, task_counts=TASK_COUNTS, b_range=(1e-5, 1.0)):
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.sampled_from(task_counts))
    rho0 = draw(st.floats(1e-3, 0.9))
    log_alpha = draw(st.floats(-1.0, 3.0))
    return random_problem(seed, n, rho0, log_alpha, b_range)
