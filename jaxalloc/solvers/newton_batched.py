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

E[T] is the delay of the problem's server (an aggregate one), whose
parameters may vary per point (`fields` such as `servers`, `max_batch`,
`batch_slowdown`, put in through :meth:`jaxalloc.Problem.replace`); T2 is kept
at least δ T1 as in :func:`jaxalloc.kkt.price_floor`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ..kkt import LARGE_S, log_lambertw_large
from ..lambertw import lambertw_and_log
from ..model import Problem
from ..objective import over_tasks
from ..servers import SWEEPABLE, Server
from .base import resolve_tol
from .newton import step_tol


class BatchState(NamedTuple):
    """Newton state of B points: moments, residual and Newton direction (pairs of
    (B,) arrays), step length, trial points so far, converged."""

    m: Array
    r: Array
    d: Array
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
    floor: tuple  # (B,) × 2: moments at ℓ = 0
    scale: tuple  # (B,) × 2: residual scale (moments at 0 plus one token of each task)
    server: Server  # the server, its leaves (B,), or (1,) where shared by the batch
    cap: Array  # (B,): the server's capacity (1 for one server)
    delta: Array  # (B,) or (1,): the floor of T2 / T1 (:func:`jaxalloc.kkt.price_floor`)


def task_sum(x):
    """Σ over tasks of a task-major array (axis 0), see :func:`jaxalloc.objective.over_tasks`."""
    return over_tasks(jnp.add, x, axis=0)


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
    floor = tuple(jnp.broadcast_to(x, (size,)) for x in (task_sum(pi * t0), task_sum(pi * t0 * t0)))
    unit = jnp.broadcast_to(task_sum(pi * c), (size,))
    scale = (floor[0] + unit, floor[1] + unit * unit)
    server = fields.get("server", problem.server)
    theirs = {f: v for f, v in fields.items() if f in SWEEPABLE}
    if theirs:
        server = server.replace(**theirs)
    # a parameter shared by the batch stays one value, (1,): per-state terms of the batching chain
    # are then computed once for the batch, not per point (B = 64: a sweep 15% faster, measured)
    server = jax.tree_util.tree_map(lambda x: jnp.reshape(x, (-1,)), server)
    eps = jnp.finfo(S.dtype).eps
    delta = eps * eps * jnp.min(b / c, axis=0)
    return _Batch(lam, S, S + b * t0 / c, b / c, 1.0 / b, c, t0, pi, top, floor, scale, server,
                  server.capacity(lam), delta)


def response(k: _Batch, m):
    """Budgets ℓ(m) (N, B), the moments they give F(m) (a pair of (B,) arrays)
    and ∂F/∂m (pairs of pairs, ∂F_i/∂m_j at [i][j]), for m a pair of (B,) arrays."""
    m1, m2 = m[0], m[1]
    (T1, T2), Q = k.server.delay_curvature(k.lam, m1, m2)  # Q[i][j] = ∂T_i/∂m_j, one pass through the delay
    dT_dm1, dT_dm2 = (Q[0][0], Q[1][0]), (Q[0][1], Q[1][1])
    low = T2 < k.delta * T1  # T2 ≈ 0: floored at δ T1 (jaxalloc.kkt.price_floor)
    T2 = jnp.where(low, k.delta * T1, T2)
    dT_dm1, dT_dm2 = ((d[0], jnp.where(low, k.delta * d[0], d[1])) for d in (dT_dm1, dT_dm2))
    u, v = T1 / (2.0 * T2), jnp.log(2.0 * T2)
    s = k.a - v + u * k.g
    big = s > LARGE_S  # T2 ≈ 0 (floored): the asymptotic branch of jaxalloc.kkt.log_lambertw_any
    w, log_w = lambertw_and_log(jnp.where(big, 0.0, s))  # eq. 22 in the log domain
    log_w_big = log_lambertw_large(jnp.where(big, s, LARGE_S))
    w, log_w = jnp.where(big, s - log_w_big, w), jnp.where(big, log_w_big, log_w)
    ell_hat = (k.S - v - log_w) * k.inv_b
    inside = (ell_hat > 0) & (ell_hat < k.top)
    ell = jnp.clip(ell_hat, 0.0, k.top)  # eq. 23
    q = jnp.where(inside, 1.0 / (1.0 + w), 0.0)
    dl_du, dl_dv = -q / k.c, -(w * q) * k.inv_b
    t = k.t0 + k.c * ell
    pc = k.pi * k.c
    F1, F2, Fu, Fv, Gu, Gv = map(task_sum, [k.pi * t, k.pi * t * t, pc * dl_du, pc * dl_dv,
                                            2 * pc * t * dl_du, 2 * pc * t * dl_dv])
    u1, u2 = (d[0] / (2.0 * T2) - T1 * d[1] / (2.0 * T2 * T2) for d in (dT_dm1, dT_dm2))
    v1, v2 = (d[1] / T2 for d in (dT_dm1, dT_dm2))
    return ell, (F1, F2), ((Fu * u1 + Fv * v1, Fu * u2 + Fv * v2), (Gu * u1 + Gv * v1, Gu * u2 + Gv * v2))


def _linearize(k: _Batch, m):
    """Scaled residual r = (F(m) − m) / scale and the Newton direction
    −(∂r/∂m)⁻¹ r at m (a fixed-point step F(m) − m where the Jacobian is singular)."""
    _, F, dF = response(k, m)
    r = _residual(k, F, m)
    a, b, c, e = ((dF[i][j] - (i == j)) / k.scale[i] for i in range(2) for j in range(2))
    det = a * e - b * c
    d = (-(e * r[0] - b * r[1]) / det, -(a * r[1] - c * r[0]) / det)
    ok = jnp.isfinite(d[0]) & jnp.isfinite(d[1])
    return r, tuple(jnp.where(ok, d[i], r[i] * k.scale[i]) for i in range(2))


def _residual(k: _Batch, F, m):
    """(F(m) − m) / scale, a pair of (B,) arrays."""
    return tuple((F[i] - m[i]) / k.scale[i] for i in range(2))


def _small(k: _Batch, m, r, tol):
    rel = [jnp.abs(r[i]) * k.scale[i] / jnp.maximum(m[i], k.scale[i]) for i in range(2)]
    return jnp.maximum(rel[0], rel[1]) <= tol


def _stop(k: _Batch, m, r, d, tol):
    """Converged at m, or the next Newton step d is below :func:`step_tol`."""
    rel = [jnp.abs(d[i]) / jnp.maximum(m[i], k.scale[i]) for i in range(2)]
    return _small(k, m, r, tol) | (jnp.maximum(rel[0], rel[1]) <= step_tol(tol))


def _trial(k: _Batch, m, d, t):
    """m + t d projected as in :meth:`AggregateNewton._trial`."""
    m1 = jnp.clip(m[0] + t * d[0], k.floor[0], m[0] + 0.9 * (k.cap / k.lam - m[0]))
    return m1, jnp.maximum(m[1] + t * d[1], jnp.maximum(k.floor[1], m1 * m1))


def init(k: _Batch, tol, m=None) -> BatchState:
    """Newton state at m (default: moments(0), where every point starts cold)."""
    m = k.floor if m is None else m
    r, d = _linearize(k, m)
    return BatchState(m, r, d, jnp.ones_like(m[0]), jnp.zeros(m[0].shape, jnp.int32), _stop(k, m, r, d, tol))


def running(s: BatchState, max_steps: int):
    return (~s.done) & (s.steps < max_steps) & jnp.isfinite(s.r[0]) & jnp.isfinite(s.r[1])


def advance(k: _Batch, s: BatchState, tol, max_steps: int, until: int = 0) -> BatchState:
    """Iterate every running point until at most `until` points are still running
    (each stops when converged or after `max_steps` trial points); the same step
    as :meth:`AggregateNewton.advance`, for the whole batch.

    The state carries the Newton direction at m rather than the Jacobian, and
    no budgets (:func:`newton_batch` computes them once, where the points
    stop): a rejected trial point keeps both, so the steps are the same, with
    less to select per step."""

    def body(s: BatchState) -> BatchState:
        go = running(s, max_steps)
        m_try = _trial(k, s.m, s.d, s.t)
        r_try, d_try = _linearize(k, m_try)
        accept = go & (r_try[0] ** 2 + r_try[1] ** 2 <= (1.0 - 1e-4 * s.t) * (s.r[0] ** 2 + s.r[1] ** 2))
        keep = lambda new, old: tuple(jnp.where(accept, x, y) for x, y in zip(new, old))
        m, r, d = keep(m_try, s.m), keep(r_try, s.r), keep(d_try, s.d)
        return BatchState(m, r, d, jnp.where(accept, 1.0, jnp.where(go, 0.5 * s.t, s.t)),
                          s.steps + go, jnp.where(go, _stop(k, m, r, d, tol), s.done))

    return lax.while_loop(lambda s: jnp.sum(running(s, max_steps)) > until, body, s)


def take(tree, index):
    """Points `index` of a task-major pytree (the last axis is the point axis)."""
    return jax.tree_util.tree_map(lambda x: x[..., index] if x.shape[-1] != 1 else x, tree)


def _running_first(go):
    """The permutation putting the points with `go` first, each group in its order
    (= a stable argsort of ~go, by prefix sums: a sort costs ~10 Newton steps' time)."""
    ahead = jnp.cumsum(go) - 1
    behind = jnp.sum(go) + jnp.cumsum(~go) - 1
    slot = jnp.where(go, ahead, behind)
    return jnp.zeros_like(slot).at[slot].set(jnp.arange(go.shape[0], dtype=slot.dtype), unique_indices=True)


SMALLEST_LEVEL = 256
"""Compaction stops at batches this small, which run to the end: every level
compiles its own loop (a sweep's first block, chunks of 4096 points: 24 s to
compile with levels down to 2 points, 11 s down to 256), and the levels below
gain nothing measurable."""


def _finish(k: _Batch, s: BatchState, tol, max_steps: int, shrink: int = 2) -> BatchState:
    """Iterate the batch until at most 1/`shrink` of its points still run, move
    those to the front, and finish them the same way in a batch that much
    smaller (down to :data:`SMALLEST_LEVEL` points, run to the end). A `while_loop` over a
    batch costs every point the steps of the slowest (9–14 on a wide (λ, α)
    grid, for a median of 3); this costs each level the steps of its own.
    Halving (`shrink` = 2) measured fastest against 4 and 8 (N = 6, 102,400
    points, 2 cores: 5% on a grid, 15% in random order against 8)."""
    size = k.lam.shape[0]
    rest = size // shrink
    if rest < SMALLEST_LEVEL or size % shrink:
        return advance(k, s, tol, max_steps)
    s = advance(k, s, tol, max_steps, until=rest)
    lanes = _running_first(running(s, max_steps))[:rest]
    sub = _finish(take(k, lanes), take(s, lanes), tol, max_steps, shrink)
    return jax.tree_util.tree_map(lambda x, y: x.at[..., lanes].set(y, unique_indices=True), s, sub)


def warm_start(k: _Batch, coarse, stride: int):
    """Start moments for every point of the batch from the solutions `coarse`
    (B / stride,) × 2 at points 0, stride, 2 stride, …: cubic Lagrange
    interpolation in point order on the four nearest (the end points repeated
    beyond the ends), projected onto stable moments of each point. Sweeps
    list their points in grid order, where ℓ*(λ, α) is smooth between
    neighbours, so the start is close: on the benchmark grid Newton takes 1.56
    steps on average from it (1.89 from linear interpolation) against 3.7 from
    ℓ = 0. Elsewhere the start is merely stable."""
    def between(c):
        n = c.shape[0]
        x = jnp.tile(jnp.arange(stride, dtype=c.dtype) / stride, n)
        padded = jnp.concatenate([c[:1], c, c[-1:], c[-1:]])  # the ends repeated
        near = [jnp.repeat(padded[i:i + n], stride) for i in range(4)]  # coarse points j-1, j, j+1, j+2
        weights = [-x * (x - 1) * (x - 2) / 6, (x + 1) * (x - 1) * (x - 2) / 2,  # cubic Lagrange on -1, 0, 1, 2
                   -(x + 1) * x * (x - 2) / 2, (x + 1) * x * (x - 1) / 6]
        return sum(w * v for w, v in zip(weights, near))

    m = tuple(map(between, coarse))
    ok = jnp.isfinite(m[0]) & jnp.isfinite(m[1])
    m1 = jnp.where(ok, m[0], k.floor[0])
    m1 = jnp.clip(m1, k.floor[0], k.floor[0] + 0.99 * (k.cap / k.lam - k.floor[0]))  # λ m1 < capacity (eq. 4)
    return m1, jnp.maximum(jnp.where(ok, m[1], k.floor[1]), jnp.maximum(k.floor[1], m1 * m1))  # E[S²] ≥ E[S]²


WARM_STEPS = 12
"""A warm-started point stops after this many trial points (cold: `max_steps`):
from a good start Newton takes 1–3, and one still running at 12 started badly
(between coarse solutions far apart, e.g. across the end of a grid row) and is
better started again from ℓ = 0 (:func:`jaxalloc.solve.solve_batch` does) than
run to `max_steps` with the lanes of its compaction level."""


def newton_batch(problem: Problem, fields: dict, tol=None, max_steps: int = 40, stride: int = 1):
    """Aggregate Newton on a batch of points.

    With `stride` > 1 (and the batch at least twice and a multiple of it),
    every `stride`-th point is solved first from ℓ = 0 and the others start
    from :func:`warm_start` between them, for at most min(`max_steps`,
    :data:`WARM_STEPS`) trial points; their steps are counted from there.
    Each phase runs through :func:`_finish`.

    **Returns:** (ℓ (B, N), steps (B,), converged (B,)).
    """
    k = prepare(problem, fields)
    tol = resolve_tol(tol, k.S.dtype)
    size = k.lam.shape[0]
    if stride > 1 and size % stride == 0 and size >= 2 * stride:
        kc = take(k, slice(0, None, stride))
        sc = _finish(kc, init(kc, tol), tol, max_steps)
        s = _finish(k, init(k, tol, warm_start(k, sc.m, stride)), tol, min(max_steps, WARM_STEPS))
        s = s._replace(steps=s.steps.at[::stride].add(sc.steps))
    else:
        s = _finish(k, init(k, tol), tol, max_steps)
    # the points that stopped take their last Newton step, and are checked there
    m = tuple(jnp.where(s.done, a, b) for a, b in zip(_trial(k, s.m, s.d, 1.0), s.m))
    ell, F, _ = response(k, m)
    done = s.done & _small(k, m, _residual(k, F, m), tol)
    return ell.T, s.steps, done
