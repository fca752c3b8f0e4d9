"""Choosing the priority order that maximises J (`order = "auto"`).

For a priority server (:class:`jaxalloc.servers.Priority`) with `auto`, the
optimum is max over orders σ of max over ℓ of J(ℓ, σ). The budgets of each
order come from a fixed-order solver (projected Newton with the dense Hessian);
the order is chosen here:

- **N ≤ :data:`MAX_ENUMERATE_TASKS` (6, 720 orders): exact.** Every order is
  solved, all at once (`vmap`), and the best J wins (ties: the first in
  lexicographic order of the priority lists).
- **Beyond: the cμ rule, iterated, then adjacent swaps.** For fixed budgets,
  the order only moves the delay term: J = α Σ π_k p_k − Σ_k π_k E[T_k], and
  Σ_k π_k E[T_k] = E[N]/λ (Little) is the mean number in system per unit
  arrival rate, i.e. a holding cost of 1 per request per second whatever its
  class. For non-preemptive priority M/G/1 the order minimising Σ_k h_k E[N_k]
  serves classes in decreasing h_k / E[S_k] (the cμ rule; Cox & Smith, 1961,
  from Cobham's formula by an interchange argument), here decreasing 1 / t_k:
  shortest expected service first. So max_σ J(ℓ, σ) = J(ℓ, SEPT(ℓ)) exactly,
  and alternating "order ← SEPT(ℓ)", "ℓ ← argmax J(·, order)" raises J at
  every step and stops when the order is its own SEPT order: a joint local
  optimum. Since the budgets then change the service times, other orders can
  still be better; adjacent swaps in the order (each re-solved, all N − 1 at
  once) are then taken, best first, while J rises by more than rounding.
  This is a local search: exact only up to N = 6 (tests check it against
  brute force there).
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..model import Problem
from ..objective import objective, service_times

MAX_ENUMERATE_TASKS = 6
"""Largest N whose N! orders are all solved (720 at N = 6)."""


def all_ranks(n: int, dtype) -> jnp.ndarray:
    """(N!, N): the rank vector (0 = served first) of every order, orders in
    lexicographic order of their priority lists (highest first)."""
    perms = np.asarray(list(itertools.permutations(range(n))))
    return jnp.asarray(np.argsort(perms, axis=1), dtype)


def with_rank(problem: Problem, rank) -> Problem:
    """The problem with its priority server's `rank` replaced."""
    server = eqx.tree_at(lambda s: s.rank, problem.server, jnp.asarray(rank, jnp.result_type(problem.server.rank)))
    return problem.replace(server=server)


def sept_rank(problem: Problem, ell, dtype):
    """Ranks serving the shortest expected service t_k(ℓ_k) first (ties: task order)."""
    t = service_times(problem, ell)
    return jnp.argsort(jnp.argsort(t, stable=True), stable=True).astype(dtype)


def _first_argmax(values):
    best = jnp.max(values)
    return jnp.argmin(jnp.where(values == best, jnp.arange(values.shape[0]), values.shape[0]))


def search_order(problem: Problem, solver, start=None):
    """(ℓ, steps, converged, server): the budgets and the order maximising J
    (see the module docstring); `solver(problem, start)` solves one fixed order.
    Steps are summed over every solve."""
    n = problem.num_tasks
    dtype = jnp.result_type(problem.server.rank)
    start = jnp.zeros_like(problem.A) if start is None else start

    def run(rank, ell0):
        p = with_rank(problem, rank)
        ell, steps, done = solver(p, ell0)
        value = objective(p, ell)
        return ell, jnp.sum(steps), done, jnp.where(done & jnp.isfinite(value), value, -jnp.inf)

    if n <= MAX_ENUMERATE_TASKS:
        ranks = all_ranks(n, dtype)
        ells, steps, done, values = jax.vmap(run, in_axes=(0, None))(ranks, start)
        best = _first_argmax(values)
        return ells[best], jnp.sum(steps), done[best], with_rank(problem, ranks[best]).server

    # the cμ (SEPT) rule, iterated with re-solving
    rank0 = problem.server.rank
    ell0, steps0, done0, value0 = run(rank0, start)

    def sept_cond(s):
        rank, ell, _steps, _done, _value, rounds = s
        return jnp.any(sept_rank(problem, ell, dtype) != rank) & (rounds < n)

    def sept_body(s):
        rank, ell, steps, done, value, rounds = s
        new = sept_rank(problem, ell, dtype)
        ell_n, steps_n, done_n, value_n = run(new, ell)
        better = value_n >= value
        pick = lambda a, b: jnp.where(better, a, b)
        return (pick(new, rank), pick(ell_n, ell), steps + steps_n, pick(done_n, done), pick(value_n, value),
                jnp.where(better, rounds + 1, n))

    state = lax.while_loop(sept_cond, sept_body, (rank0, ell0, steps0, done0, value0, 0))

    # adjacent swaps, best first, while J rises
    positions = jnp.arange(n - 1, dtype=dtype)

    def swapped(rank, i):
        return jnp.where(rank == i, i + 1, jnp.where(rank == i + 1, i, rank))

    def swap_cond(s):
        return s[-1] & (s[-2] < n * n)

    def swap_body(s):
        rank, ell, steps, done, value, rounds, _ = s
        ranks = jax.vmap(swapped, in_axes=(None, 0))(rank, positions)
        ells, steps_n, done_n, values = jax.vmap(run, in_axes=(0, None))(ranks, ell)
        k = _first_argmax(values)
        better = values[k] > value + 1e-12 * (1.0 + jnp.abs(value))
        pick = lambda a, b: jnp.where(better, a, b)
        return (pick(ranks[k], rank), pick(ells[k], ell), steps + jnp.sum(steps_n), pick(done_n[k], done),
                pick(values[k], value), rounds + 1, better)

    rank, ell, steps, done, _, _, _ = lax.while_loop(swap_cond, swap_body, (*state, jnp.asarray(True)))
    return ell, steps, done, with_rank(problem, rank).server
