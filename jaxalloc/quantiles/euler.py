"""Numerical inversion of a Laplace transform: the Euler algorithm of Abate and Whitt (1995).

For a function G on x > 0 with transform Ĝ(s) = ∫ e^{−sx} G(x) dx,

    s_n(x) = e^{A/2}/(2x) Re Ĝ(A/(2x)) + e^{A/2}/x Σ_{k=1}^{n} (−1)^k Re Ĝ((A + 2kπi)/(2x)),
    G(x) ≈ Σ_{j=0}^{m} C(m, j) 2^{−m} s_{n+j}(x)          (Euler summation of the alternating tail)

(Abate and Whitt, "Numerical inversion of Laplace transforms of probability
distributions", ORSA J. Computing 7, 1995, eqs. 13 and 15). The discretisation
error is at most e^{−A}/(1 − e^{−A}) for 0 ≤ G ≤ 1: 1e-8 with A = 18.4.
Rounding is amplified by e^{A/2} ≈ 1e4: use float64.

**Terms.** Deterministic service makes the wait's density jump at the service
times and their sums, and the series converges slowly there. Measured on
M/D/1 (ρ = 0.3, one service time d: the worst case, every kink at a multiple
of d) against Erlang's closed form: Abate and Whitt's usual n = 15, m = 11
was off by 2% at tail 1e-2 (x = 2d) and 9% at 2e-6 (x = 6d); n = 60, m = 20
is within 5e-5 relative at x = 2d, 2.5d, 3d, 6d, 3e-4 at 1.5d, and 4e-3 within
0.001d of a kink (tests/test_quantiles.py). A quantile moves by the tail's
relative error divided by γy (≥ 1 where it matters), so the p99 is exact
to about 1e-4.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

A = 18.4
TERMS = 60
EULER = 20


def _weights(dtype) -> tuple[np.ndarray, np.ndarray]:
    """(k, w_k): the nodes' indices 0..n+m and the weight of Re Ĝ at each, after Euler summation."""
    n, m = TERMS, EULER
    k = np.arange(n + m + 1)
    # s_{n+j} = Σ_{k ≤ n+j} c_k a_k, averaged with binomial weights: a_k's weight is Σ_{j: n+j ≥ k} C(m,j) 2^-m
    binom = np.array([math.comb(m, j) for j in range(m + 1)], dtype=np.float64) / 2.0**m
    tail = np.array([binom[max(0, kk - n):].sum() for kk in k])
    sign = np.where(k % 2 == 0, 1.0, -1.0)
    sign[0] = 0.5
    return k, (sign * tail).astype(dtype)


def invert(transform, x) -> jnp.ndarray:
    """G(x) from Ĝ by the Euler algorithm; `transform(s)` maps complex s of shape
    S + (K,) to Ĝ(s) of shape S + (K,) + T (T: any trailing shape, e.g. per type);
    `x` > 0 of shape S. Returns shape S + T."""
    x = jnp.asarray(x)
    k, w = _weights(np.float64)
    s = (A + 2j * math.pi * jnp.asarray(k)) / (2.0 * x[..., None])  # S + (K,)
    g = jnp.real(transform(s))  # S + (K,) + T
    extra = g.ndim - s.ndim
    w = jnp.asarray(w, dtype=x.dtype).reshape((-1,) + (1,) * extra)
    scale = (math.exp(A / 2) / x).reshape(x.shape + (1,) * extra)
    return scale * jnp.sum(w * g, axis=x.ndim)
