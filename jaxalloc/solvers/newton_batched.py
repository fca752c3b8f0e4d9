"""The aggregate Newton iteration for a whole batch of points at once, task-major.

:class:`~jaxalloc.solvers.newton.AggregateNewton` under `vmap` lays a batch
out points-major, (points, tasks), and linearises with `jacfwd`; XLA then
spends most of a step on reductions over a six-long minor axis and on the
tangent copies. This module runs the same iteration (same trial points,
Armijo test, projection, stopping rule) on (tasks, points) arrays, with the
Jacobian of the best response written out (measured on a 2-core CPU, N = 6,
4096 points: 122 vs 239 ns per point and linearisation). It is the hot path of
:func:`jaxalloc.solve.solve_batch`; `tests/test_sweep.py` holds it equal to
the autodiff Jacobian and to the per-point solver.

The best response of eqs. 20–23, with u = T1/(2 T2) and v = log(2 T2)
(T1, T2 = :func:`jaxalloc.objective.delay_prices`, by autodiff):

    s_k = S_k − v + b_k (u + t0_k) / c_k,    S_k = log(α A_k b_k² / c_k²)
    ℓ_k = clip((S_k − v − log w_k) / b_k, 0, ℓ_max),   w_k + log w_k = s_k

so that, inside the clip, ∂ℓ_k/∂u = −1 / (c_k (1 + w_k)) and
∂ℓ_k/∂v = −w_k / (b_k (1 + w_k)); the moments (eq. 3) and their derivatives
follow by sums over tasks, and (u, v) depend on (m1, m2) through the
second derivatives of E[T] (autodiff again).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..lambertw import lambertw_and_log
from ..model import Problem
from ..objective import delay_prices
from .base import resolve_tol


class BatchState(NamedTuple):
    """Newton state of B points: moments (2, B), residual (2, B), Jacobian (2, 2, B),
    budgets (N, B), step length, trial points so far, converged."""

    m: Array
    r: Array
    jac: Array
    ell: Array
    t: Array
    steps: Array
    done: Array


class _Batch(NamedTuple):
    """Per-point constants, task-major: (N, B) or (N, 1) per task, (B,) per point."""

    lam: Array
    S: Array  # log(α A b² / c²)
    a: Array  # S + b t0 / c
    g: Array  # b / c
    inv_b: Array
    c: Array
    t0: Array
    pi: Array
    top: Array
    floor: Array  # (2, B): moments at ℓ = 0
    scale: Array  # (2, B): residual scale (moments at 0 plus one token of each task)


def _task_major(x):
    """A per-task field as (N, B) (batched (B, N)) or (N, 1) (shared (N,))."""
    return x.T if x.ndim == 2 else x[:, None]


def prepare(problem: Problem, fields: dict) -> _Batch:
    """The batch constants of `problem` with `fields` (leading batch axis) put in."""
    size = next(iter(fields.values())).shape[0]
    get = lambda f: fields[f] if f in fields else getattr(problem, f)
    per_task = {f: _task_major(jnp.asarray(get(f))) for f in ("prob", "A", "b", "t0", "c")}
    A, b, c, t0, pi = per_task["A"], per_task["b"], per_task["c"], per_task["t0"], per_task["prob"]
    alpha = jnp.broadcast_to(get("alpha"), (size,))
    lam = jnp.broadcast_to(get("arrival_rate"), (size,))
    top = jnp.broadcast_to(get("max_tokens"), (size,))
    S = jnp.log(alpha) + (jnp.log(A) + 2.0 * jnp.log(b) - 2.0 * jnp.log(c))
    floor = jnp.stack([jnp.sum(pi * t0, 0), jnp.sum(pi * t0 * t0, 0)])
    floor = jnp.broadcast_to(floor, (2, size))
    unit = jnp.broadcast_to(jnp.sum(pi * c, 0), (size,))
    scale = jnp.stack([floor[0] + unit, floor[1] + unit * unit])
    return _Batch(lam, S, S + b * t0 / c, b / c, 1.0 / b, c, t0, pi, top, floor, scale)


def response(k: _Batch, m):
    """Budgets ℓ(m) (N, B), the moments they give F(m) (2, B) and ∂F/∂m (2, 2, B)."""
    m1, m2 = m[0], m[1]
    prices = lambda x, y: delay_prices(k.lam, x, y)
    (T1, T2), dT_dm1 = jax.jvp(prices, (m1, m2), (jnp.ones_like(m1), jnp.zeros_like(m2)))
    _, dT_dm2 = jax.jvp(prices, (m1, m2), (jnp.zeros_like(m1), jnp.ones_like(m2)))
    u, v = T1 / (2.0 * T2), jnp.log(2.0 * T2)
    w, log_w = lambertw_and_log(k.a - v + u * k.g)  # eq. 22 in the log domain
    ell_hat = (k.S - v - log_w) * k.inv_b
    inside = (ell_hat > 0) & (ell_hat < k.top)
    ell = jnp.clip(ell_hat, 0.0, k.top)  # eq. 23
    q = jnp.where(inside, 1.0 / (1.0 + w), 0.0)
    dl_du, dl_dv = -q / k.c, -(w * q) * k.inv_b
    t = k.t0 + k.c * ell
    pc = k.pi * k.c
    F = jnp.stack([jnp.sum(k.pi * t, 0), jnp.sum(k.pi * t * t, 0)])
    dF_duv = jnp.stack([jnp.stack([jnp.sum(pc * dl_du, 0), jnp.sum(pc * dl_dv, 0)]),
                        jnp.stack([jnp.sum(2 * pc * t * dl_du, 0), jnp.sum(2 * pc * t * dl_dv, 0)])])
    duv_dm = jnp.stack([jnp.stack([d[0] / (2.0 * T2) - T1 * d[1] / (2.0 * T2 * T2) for d in (dT_dm1, dT_dm2)]),
                        jnp.stack([d[1] / T2 for d in (dT_dm1, dT_dm2)])])
    return ell, F, jnp.einsum("ikb,kjb->ijb", dF_duv, duv_dm)


def _linearize(k: _Batch, m):
    ell, F, dF = response(k, m)
    r = (F - m) / k.scale
    jac = (dF - jnp.eye(2, dtype=dF.dtype)[:, :, None]) / k.scale[:, None, :]
    return r, jac, ell


def _small(k: _Batch, m, r, tol):
    return jnp.max(jnp.abs(r) * k.scale / jnp.maximum(m, k.scale), axis=0) <= tol


def init(k: _Batch, tol) -> BatchState:
    """Newton state at m = moments(0)."""
    m = k.floor
    r, jac, ell = _linearize(k, m)
    size = m.shape[1]
    return BatchState(m, r, jac, ell, jnp.ones(size, m.dtype), jnp.zeros(size, jnp.int32), _small(k, m, r, tol))


def running(s: BatchState, max_steps: int):
    return (~s.done) & (s.steps < max_steps) & jnp.all(jnp.isfinite(s.r), axis=0)


def advance(k: _Batch, s: BatchState, tol, max_steps: int) -> BatchState:
    """Iterate every running point until all stop or reach `max_steps` trial points
    (the same step as :meth:`AggregateNewton.advance`, for the whole batch)."""

    def body(s: BatchState) -> BatchState:
        go = running(s, max_steps)
        det = s.jac[0, 0] * s.jac[1, 1] - s.jac[0, 1] * s.jac[1, 0]
        delta = -jnp.stack([s.jac[1, 1] * s.r[0] - s.jac[0, 1] * s.r[1],
                            s.jac[0, 0] * s.r[1] - s.jac[1, 0] * s.r[0]]) / det
        delta = jnp.where(jnp.all(jnp.isfinite(delta), axis=0), delta, s.r * k.scale)  # singular: FP step
        m1 = jnp.clip(s.m[0] + s.t * delta[0], k.floor[0], s.m[0] + 0.9 * (1.0 / k.lam - s.m[0]))
        m2 = jnp.maximum(s.m[1] + s.t * delta[1], jnp.maximum(k.floor[1], m1 * m1))
        m_try = jnp.stack([m1, m2])
        r_try, jac_try, ell_try = _linearize(k, m_try)
        accept = go & (jnp.sum(r_try**2, 0) <= (1.0 - 1e-4 * s.t) * jnp.sum(s.r**2, 0))
        m, r = jnp.where(accept, m_try, s.m), jnp.where(accept, r_try, s.r)
        return BatchState(m, r, jnp.where(accept, jac_try, s.jac), jnp.where(accept, ell_try, s.ell),
                          jnp.where(accept, 1.0, jnp.where(go, 0.5 * s.t, s.t)), s.steps + go,
                          jnp.where(go, _small(k, m, r, tol), s.done))

    return lax.while_loop(lambda s: jnp.any(running(s, max_steps)), body, s)


def take(tree, index):
    """Points `index` of a task-major pytree (the last axis is the point axis)."""
    return jax.tree_util.tree_map(lambda x: x[..., index] if x.shape[-1] != 1 else x, tree)


def newton_batch(problem: Problem, fields: dict, tol=None, max_steps: int = 40, first_steps: int = 6,
                 block: int = 128):
    """Aggregate Newton on a batch of points.

    Every point takes `first_steps` trial points together; the points still
    running are then moved to the front and finished in blocks of `block`,
    blocks with nothing left to do skipped (`lax.cond`), so that a batch does
    not cost its slowest point's iterations.

    **Returns:** (ℓ (B, N), steps (B,), converged (B,)).
    """
    k = prepare(problem, fields)
    tol = resolve_tol(tol, k.S.dtype)
    size = k.lam.shape[0]
    compact = size > block and size % block == 0 and first_steps < max_steps
    s = advance(k, init(k, tol), tol, first_steps if compact else max_steps)
    if compact:
        go = running(s, max_steps)
        order = jnp.argsort(~go, stable=True)
        blocks = lambda x: jnp.moveaxis(x.reshape(*x.shape[:-1], size // block, block), -2, 0) if x.shape[-1] == size else \
            jnp.broadcast_to(x, (size // block, *x.shape))
        kb, sb, gb = jax.tree_util.tree_map(blocks, take((k, s, go), order))
        finish = lambda kk, ss: advance(kk, ss, tol, max_steps)
        out = lax.map(lambda a: lax.cond(jnp.any(a[2]), finish, lambda kk, ss: ss, a[0], a[1]), (kb, sb, gb))
        unblock = lambda x: jnp.moveaxis(x, 0, -2).reshape(*x.shape[1:-1], size)
        out = jax.tree_util.tree_map(unblock, out)
        s = jax.tree_util.tree_map(lambda x: jnp.zeros_like(x).at[..., order].set(x), out)
    done = s.done & _small(k, s.m, s.r, tol)
    return s.ell.T, s.steps, done
