"""Integer budgets from the continuous optimum (Section III-E, eqs. 39–40).

- :func:`round_budgets`: component-wise rounding (eq. 40).
- :func:`enumerate_floor_ceil`: the best of the 2^N floor/ceil combinations
  (eq. 39), vectorised; refused above :data:`MAX_ENUMERATE_TASKS` tasks.
- :func:`coordinate_search`: from the rounded point, flip single coordinates
  between floor and ceil while J improves; O(N) per sweep, any N.

The lower bound J̄ of eq. 41 is :func:`jaxalloc.objective.integer_lower_bound`
(for a server other than the paper's one FIFO server, the monotone bound
:func:`jaxalloc.objective.monotone_lower_bound`).

Every server kind: for an aggregate server (FIFO, batching) the candidates are
scored from the moments they give, through the server's
:meth:`~jaxalloc.servers.Server.delay`; for another (priority) by the full
objective of each candidate (2^N or N evaluations, vectorised).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..model import Problem
from ..objective import moments, objective, over_tasks, service_times, task_accuracy

MAX_ENUMERATE_TASKS = 16
"""Largest N for the 2^N enumeration of eq. 39 (65,536 candidates)."""


def _floor_ceil(problem: Problem, budgets):
    top = jnp.floor(problem.max_tokens)
    lo = jnp.clip(jnp.floor(budgets), 0.0, top)
    hi = jnp.clip(jnp.ceil(budgets), 0.0, top)
    return lo, hi


def round_budgets(problem: Problem, budgets):
    """ℓ_k^{int,2} = round(ℓ*_k), within [0, ⌊ℓ_max⌋] (eq. 40)."""
    return jnp.clip(jnp.round(budgets), 0.0, jnp.floor(problem.max_tokens))


def enumerate_floor_ceil(problem: Problem, budgets):
    """argmax of J over ℓ_k ∈ {⌊ℓ*_k⌋, ⌈ℓ*_k⌉} (eq. 39), all 2^N candidates at once.

    Works on one point (`budgets` of shape (N,)) or a batch ((..., N), the
    problem's fields broadcasting against it, as in a problem whose scalar
    fields hold one value per point). Ties go to the candidate of lowest
    index Σ_k 2^k [ℓ_k = ⌈ℓ*_k⌉], as `argmax` would.

    Raises `ValueError` when N > :data:`MAX_ENUMERATE_TASKS`; use
    :func:`coordinate_search` there.
    """
    n = budgets.shape[-1]
    if n > MAX_ENUMERATE_TASKS:
        raise ValueError(
            f"integer search: N = {n} tasks needs 2^{n} floor/ceil candidates (eq. 39); "
            f"enumeration is limited to N <= {MAX_ENUMERATE_TASKS}, use the coordinate search"
        )
    lo, hi = _floor_ceil(problem, budgets)
    if not problem.server.aggregate:
        bits = jnp.asarray((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1, budgets.dtype)
        score = lambda p, a, b: jax.vmap(lambda x: objective(p, jnp.where(x > 0, b, a)))(bits)
        for _ in range(budgets.ndim - 1):  # a batch: the problem's fields carry the same leading axes
            score = jax.vmap(score)
        best = _first_argmax(score(problem, lo, hi))
        chosen = (best[..., None] >> jnp.arange(n, dtype=best.dtype)) & 1
        return jnp.where(chosen > 0, hi, lo)
    # J of every candidate from its parts (eq. 7): the moments (eq. 3) and the mean
    # accuracy are linear in the floor/ceil choice, so 2^N candidates cost 2^N × 3
    # dot products of length N, and no exponential beyond the 2N of p(⌊ℓ⌋), p(⌈ℓ⌉).
    prob = problem.prob
    t_lo, t_hi = service_times(problem, lo), service_times(problem, hi)
    p_lo, p_hi = task_accuracy(problem, lo), task_accuracy(problem, hi)
    total = lambda at_lo, at_hi: _candidate_sums(prob * at_lo, prob * (at_hi - at_lo))
    m1, m2 = total(t_lo, t_hi), total(t_lo**2, t_hi**2)
    lam, alpha = (jnp.asarray(x)[..., None] for x in (problem.arrival_rate, problem.alpha))
    values = alpha * total(p_lo, p_hi) - _delay(problem)(lam, m1, m2)
    best = _first_argmax(values)
    chosen = (best[..., None] >> jnp.arange(n, dtype=best.dtype)) & 1
    return jnp.where(chosen > 0, hi, lo)


def _delay(problem: Problem):
    """The delay (λ, m1, m2) ↦ E[T] of the problem's aggregate server, its
    parameters given a trailing axis so that they broadcast against candidates
    on the last axis (one FIFO server: eq. 6 exactly, as written)."""
    server = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[..., None], problem.server)
    return server.delay


def _candidate_sums(base, step):
    """Σ_k base_k + Σ_k bit_k(c) step_k for every candidate c < 2^N (last axis).

    Written as N broadcast multiply-adds with constant 0/1 columns, which XLA
    fuses into one elementwise loop; a dot with the (2^N, N) bit matrix runs
    as a library GEMM of inner size N, slower here (with the two reductions
    of :func:`_first_argmax`, eq. 39 in a sweep block at N = 6 went from
    ~146 to ~78 ms per 262,144 points on 2 cores)."""
    n = base.shape[-1]
    bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
    total = over_tasks(jnp.add, base)[..., None]
    for k in range(n):
        total = total + step[..., k, None] * jnp.asarray(bits[:, k], base.dtype)
    return total


def _first_argmax(values):
    """`argmax` over the last axis, ties to the lowest index, as a max and a min:
    XLA:CPU runs `argmax` as a scalar loop over (value, index) pairs (at N = 6,
    2^6 candidates: 320 → 150 ns per point on one core)."""
    best = jnp.max(values, axis=-1, keepdims=True)
    index = jnp.arange(values.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(values == best, index, values.shape[-1]), axis=-1)


def coordinate_search(problem: Problem, budgets, max_flips: int | None = None):
    """Start at round(ℓ*) (eq. 40) and flip single coordinates between floor and
    ceiling, the best flip first, while J rises.

    Every step scores all N flips at once from the current (E[S], E[S²]) and
    mean accuracy, which each flip changes by one term (O(N) per step, fully
    vectorised), and takes the best; it stops when no flip improves J, i.e. at
    a point no single coordinate change can improve, or after `max_flips`
    (default N) flips.
    """
    lo, hi = _floor_ceil(problem, budgets)
    ell = jnp.clip(round_budgets(problem, budgets), lo, hi)
    if not problem.server.aggregate:
        return _coordinate_search_generic(problem, ell, lo, hi, budgets.shape[-1] if max_flips is None else max_flips)
    lam, alpha, prob = problem.arrival_rate, problem.alpha, problem.prob
    t_lo, t_hi = service_times(problem, lo), service_times(problem, hi)
    p_lo, p_hi = task_accuracy(problem, lo), task_accuracy(problem, hi)
    value = lambda m1, m2, acc: alpha * acc - problem.server.delay(lam, m1, m2)  # eq. 7 from its parts
    cap = budgets.shape[-1] if max_flips is None else int(max_flips)

    def body(state):
        ell, m1, m2, acc, flips, _ = state
        up = ell == lo  # at the floor: the flip goes to the ceiling, and vice versa
        t_old, t_new = jnp.where(up, t_lo, t_hi), jnp.where(up, t_hi, t_lo)
        p_old, p_new = jnp.where(up, p_lo, p_hi), jnp.where(up, p_hi, p_lo)
        m1n = m1 + prob * (t_new - t_old)
        m2n = m2 + prob * (t_new**2 - t_old**2)
        accn = acc + prob * (p_new - p_old)
        gains = value(m1n, m2n, accn)
        k = jnp.argmax(gains)
        better = gains[k] > value(m1, m2, acc)
        flip = better & (jnp.arange(ell.shape[-1]) == k)
        ell = jnp.where(flip, jnp.where(up, hi, lo), ell)
        pick = lambda new, old: jnp.where(better, new[k], old)
        return ell, pick(m1n, m1), pick(m2n, m2), pick(accn, acc), flips + 1, better

    m1, m2 = moments(problem, ell)
    acc = jnp.sum(prob * task_accuracy(problem, ell))
    state = (ell, m1, m2, acc, 0, jnp.asarray(True))
    ell, *_ = lax.while_loop(lambda s: s[5] & (s[4] < cap), body, state)
    return ell


def _coordinate_search_generic(problem: Problem, ell, lo, hi, cap: int):
    """:func:`coordinate_search` for a server that is not aggregate: the N flips
    scored by the full objective."""
    n = ell.shape[-1]
    eye = jnp.eye(n, dtype=bool)

    def body(state):
        ell, value, flips, _ = state
        up = ell == lo
        flipped = jnp.where(eye, jnp.where(up, hi, lo)[None, :], ell[None, :])  # row k: flip k
        gains = jax.vmap(lambda x: objective(problem, x))(flipped)
        k = jnp.argmax(gains)
        better = gains[k] > value
        return jnp.where(better, flipped[k], ell), jnp.where(better, gains[k], value), flips + 1, better

    state = (ell, objective(problem, ell), 0, jnp.asarray(True))
    ell, *_ = lax.while_loop(lambda s: s[3] & (s[2] < int(cap)), body, state)
    return ell


def integer_budgets(problem: Problem, budgets, method: str = "auto"):
    """Integer budgets by `method`: "enumerate" (eq. 39), "round" (eq. 40),
    "coordinate", or "auto" (enumerate up to :data:`MAX_ENUMERATE_TASKS` tasks,
    coordinate search beyond)."""
    if method == "auto":
        method = "enumerate" if budgets.shape[-1] <= MAX_ENUMERATE_TASKS else "coordinate"
    if method == "enumerate":
        return enumerate_floor_ceil(problem, budgets)
    if method == "round":
        return round_budgets(problem, budgets)
    if method == "coordinate":
        return coordinate_search(problem, budgets)
    raise ValueError(f"integer method = {method!r}: expected auto, enumerate, round or coordinate")
