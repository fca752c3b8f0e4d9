"""Quantiles of the system time: per task and overall, in JAX, differentiable.

| server            | "lundberg" (fast)                      | "exact"                                  |
|-------------------|----------------------------------------|------------------------------------------|
| FIFO, one server  | Cramér–Lundberg asymptote C e^{−γx}    | Euler inversion of Pollaczek–Khinchine   |
| priority          | —  (uses "exact")                      | Euler inversion of the delay-cycle LST   |
| FIFO c > 1, batching | not supported: :class:`QuantileError` |                                       |

Given the budgets, service is deterministic per type, so T_k = W_k + t_k
exactly and the quantiles of T come from the tail of the wait W_k
(:mod:`.roots`): the Cramér–Lundberg asymptote (:mod:`.lundberg`) or the
numerical inversion (:mod:`.euler`) of the waiting-time transform
(:mod:`.transform`). `method="auto"` takes the exact inversion where the
asymptote's error is not negligible (see :data:`AUTO_RULE`).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ProblemError
from ..model import Problem
from ..objective import service_times
from . import euler
from .lundberg import decay_rate, log_prefactor
from .roots import mixture_quantile, mixture_tail
from .transform import wait_tail_transform

LEVELS = (0.5, 0.9, 0.95, 0.99)
"""The quantiles reported by default (p50, p90, p95, p99)."""

METHODS = ("auto", "lundberg", "exact")

ILLINOIS_STEPS = {"lundberg": 20, "exact": 25}
"""Illinois steps per quantile: on the paper profile (FIFO and priority, ρ from 0.03 to 0.95) 20 steps
already agree with 80 to 3e-11 relative (the asymptote's log tail is linear: 20 are exact to 2e-16);
the exact method keeps 5 more as margin."""


class QuantileError(ProblemError):
    """Quantiles asked of a server without a method, or at a level outside (0, 1)."""


class Quantiles(NamedTuple):
    """System-time quantiles (seconds): `overall` (L,), `tasks` (N, L), at `levels` (L,)."""

    overall: jax.Array
    tasks: jax.Array
    levels: tuple[float, ...]


def level_name(q: float) -> str:
    """0.99 → "p99", 0.5 → "p50", 0.999 → "p99.9"."""
    return "p" + f"{100 * q:.6g}"


def parse_level(text: str) -> float:
    """"p99" → 0.99, "p99.9" → 0.999, "0.95" → 0.95; :class:`QuantileError` otherwise or outside (0, 1)."""
    raw = text.strip()
    try:
        q = float(raw[1:]) / 100 if raw[:1] in ("p", "P") else float(raw)
    except ValueError:
        raise QuantileError(f"quantile level {text!r}: expected pNN (e.g. p99) or a number in (0, 1)") from None
    return check_level(q, text)


def check_level(q, shown=None) -> float:
    q = float(q)
    if not (0.0 < q < 1.0):
        raise QuantileError(f"quantile level {shown if shown is not None else q!r}: must lie in (0, 1)")
    return q


def supported(problem: Problem) -> bool:
    """Whether the problem's server has quantiles (one FIFO server, or priority)."""
    return problem.server.wait_classes(problem.num_tasks) is not None


def check_supported(problem: Problem, method: str = "auto") -> None:
    """Raise :class:`QuantileError` unless `method` gives quantiles for the problem's server."""
    if method not in METHODS:
        raise QuantileError(f"quantile method {method!r}: expected one of {', '.join(METHODS)}")
    server = problem.server
    if not supported(problem):
        what = server.kind + (" with servers > 1" if server.kind == "fifo" else "")
        raise QuantileError(f"server.kind = {server.kind!r}: quantiles are not supported for this server ({what}); "
                            "they are for one FIFO server and for priority classes")
    if method == "lundberg" and server.kind != "fifo":
        raise QuantileError(f"quantile method 'lundberg': for one FIFO server only, not {server.kind!r} "
                            "(use 'exact' or 'auto')")


def resolve_method(problem: Problem, method: str) -> str:
    """The method "auto" stands for on this server (static): see :data:`AUTO_RULE`."""
    if method != "auto":
        return method
    return "exact"


AUTO_RULE = "exact inversion everywhere it is supported (the asymptote is the fast option, 'lundberg')"


def _lundberg_tails(params):
    gamma, logc = params["gamma"], params["logc"]
    return lambda x: jnp.exp(jnp.minimum(logc, 0.0) - gamma * x)


def _exact_tails(params):
    """Priority: each component k its own W_k (rows of `higher`, `through`)."""
    lam, prob, t, higher, through = (params[k] for k in ("lam", "prob", "t", "higher", "through"))

    def one(h, th, x):
        return euler.invert(lambda s: wait_tail_transform(lam, prob, t, h, th, s), x)

    return lambda x: jax.vmap(one)(higher, through, x)


def _fifo_tails(params):
    """One FIFO server: every component waits the same W (no busy period of higher classes)."""
    lam, prob, t = params["lam"], params["prob"], params["t"]
    ones = jnp.ones_like(t)
    one = lambda x: euler.invert(lambda s: wait_tail_transform(lam, prob, t, None, ones, s), x)
    return lambda x: jax.vmap(one)(x)


def _tails_of(ctx) -> object:
    """The tails function (params ↦ (x ↦ G_k(x_k))) of `ctx`'s method and server, for every component."""
    if ctx.method == "lundberg":
        return _lundberg_tails
    return _fifo_tails if ctx.one_queue else _exact_tails


def _classes(problem: Problem, dtype):
    higher, through = problem.server.wait_classes(problem.num_tasks)
    return jnp.asarray(higher, dtype), jnp.asarray(through, dtype)


class _Setup(NamedTuple):
    """What every quantile of one operating point shares (see :func:`_setup`)."""

    method: str
    one_queue: bool  # one FIFO server: every type waits the same W
    params: dict
    g0: jax.Array  # P(W_k > 0) (N,): ρ exactly, C for the asymptote
    t: jax.Array
    prob: jax.Array
    mean_wait: jax.Array  # E[W_k] (N,), for Markov's bound
    logc: jax.Array | None
    gamma: jax.Array | None
    higher: jax.Array
    through: jax.Array
    stable: jax.Array


def _setup(problem: Problem, budgets, method: str) -> _Setup:
    method = resolve_method(problem, method)
    lam, prob = problem.arrival_rate, problem.prob
    t = service_times(problem, budgets)
    m1 = jnp.sum(prob * t, -1)
    stable = lam * m1 < 1.0
    lam = jnp.where(stable, lam, 0.5 / jnp.maximum(m1, 1e-300))  # a harmless stand-in; results set to +inf
    mean_wait = problem.server.task_system_time(lam, prob, t, t * t) - t
    n = problem.num_tasks
    higher, through = _classes(problem, t.dtype)
    one_queue = problem.server.kind == "fifo"
    gamma = logc = None
    if method == "lundberg":
        gamma = decay_rate(lam, prob, t)
        logc = log_prefactor(gamma, lam, prob, t)
        params = {"gamma": gamma, "logc": logc}
        g0 = jnp.full((n,), jnp.exp(jnp.minimum(logc, 0.0)))
    else:
        params = {"lam": lam, "prob": prob, "t": t, "higher": higher, "through": through}
        g0 = jnp.full((n,), lam * m1)
    return _Setup(method, one_queue, params, g0, t, prob, mean_wait, logc, gamma, higher, through, stable)


def _bound(ctx: _Setup, q, waits) -> jax.Array:
    """A wait beyond the q-quantile of every W_k in `waits`: Markov's E[W]/(1 − q), doubled
    (the true tail is below it), or past the asymptote's own quantile."""
    w = 2.0 * jnp.max(waits) / (1.0 - q)
    if ctx.method == "lundberg":
        w = jnp.maximum(w, 1.001 * jnp.maximum(0.0, ctx.logc - jnp.log1p(-q)) / ctx.gamma)
    return w + 1e-300


def _wait_quantile(ctx: _Setup, q) -> jax.Array:
    """The q-quantile of the one W every type waits (one FIFO server, or the asymptote)."""
    one = jnp.ones((1,), ctx.t.dtype)
    return mixture_quantile(_tails_of(ctx), ILLINOIS_STEPS[ctx.method], ctx.params, ctx.g0[:1], 0.0 * one, one, q,
                            _bound(ctx, q, ctx.mean_wait))


def _task_quantile(ctx: _Setup, k, q) -> jax.Array:
    """The q-quantile of T_k (k may be traced: priority solves every type in one vmapped program)."""
    if ctx.method == "lundberg" or ctx.one_queue:
        return ctx.t[k] + _wait_quantile(ctx, q)
    one = jnp.ones((1,), ctx.t.dtype)
    sub = dict(ctx.params, higher=ctx.higher[k][None], through=ctx.through[k][None])
    return mixture_quantile(_exact_tails, ILLINOIS_STEPS[ctx.method], sub, ctx.g0[k][None], ctx.t[k][None], one, q,
                            ctx.t[k] + _bound(ctx, q, ctx.mean_wait[k]))


def _overall_quantile(ctx: _Setup, q) -> jax.Array:
    bound = jnp.max(ctx.t) + _bound(ctx, q, ctx.mean_wait)
    return mixture_quantile(_tails_of(ctx), ILLINOIS_STEPS[ctx.method], ctx.params, ctx.g0, ctx.t, ctx.prob, q, bound)


def quantile(problem: Problem, budgets, level: float, task: int | None = None, method: str = "auto") -> jax.Array:
    """One quantile of the system time: of task `task` (an index), or overall (None).
    Pure JAX like :func:`system_time_quantiles`; `task` and `method` static."""
    ctx = _setup(problem, budgets, method)
    level = jnp.asarray(level, ctx.t.dtype)
    value = _overall_quantile(ctx, level) if task is None else _task_quantile(ctx, int(task), level)
    return jnp.where(ctx.stable, value, jnp.inf)


def tail(problem: Problem, budgets, y, task: int | None = None, method: str = "auto") -> jax.Array:
    """P(T > y): the probability that the system time exceeds y seconds, of task `task` (an index) or overall
    (None). Plain autodiff (no root solve): the q-quantile is ≤ y exactly when this is ≤ 1 − q, which is how
    :mod:`jaxalloc.slo` writes an SLO. Unstable points give 1. `task` and `method` static."""
    ctx = _setup(problem, budgets, method)
    y = jnp.asarray(y, ctx.t.dtype)
    if task is not None and _tails_of(ctx) is _exact_tails:  # priority: only type k's own wait
        sub = dict(ctx.params, higher=ctx.higher[task][None], through=ctx.through[task][None])
        one = jnp.ones((1,), ctx.t.dtype)
        value = mixture_tail(_exact_tails(sub), ctx.g0[task][None], ctx.t[task][None], one, y)
        return jnp.where(ctx.stable, value, 1.0)
    tails = _tails_of(ctx)(ctx.params)
    weights = ctx.prob if task is None else jnp.zeros_like(ctx.prob).at[task].set(1.0)
    return jnp.where(ctx.stable, mixture_tail(tails, ctx.g0, ctx.t, weights, y), 1.0)


def system_time_quantiles(problem: Problem, budgets, levels=LEVELS, method: str = "auto") -> Quantiles:
    """The `levels` quantiles of the system time, overall and per task, at budgets ℓ.

    Pure JAX (jit, vmap, grad in ℓ and every problem field); `levels` and
    `method` are static. Unstable points give +inf. Call
    :func:`check_supported` first at the boundary: an unsupported server
    raises there, with a message, not here. The levels (and for priority the
    types) are vmapped, so the program holds one copy of each root solve.

    **Returns:** :class:`Quantiles` (seconds).
    """
    levels = tuple(float(q) for q in np.atleast_1d(np.asarray(levels, dtype=np.float64)))
    ctx = _setup(problem, budgets, method)
    qs = jnp.asarray(levels, ctx.t.dtype)
    n = problem.num_tasks
    if ctx.method == "lundberg" or ctx.one_queue:  # one W: its quantiles once, shifted per type
        tasks = ctx.t[:, None] + jax.vmap(lambda q: _wait_quantile(ctx, q))(qs)[None, :]
    else:
        per = jax.vmap(lambda k: jax.vmap(lambda q: _task_quantile(ctx, k, q))(qs))
        tasks = per(jnp.arange(n))
    total = jax.vmap(lambda q: _overall_quantile(ctx, q))(qs)
    inf = jnp.asarray(jnp.inf, ctx.t.dtype)
    return Quantiles(jnp.where(ctx.stable, total, inf), jnp.where(ctx.stable, tasks, inf), levels)


quantiles_jit = eqx.filter_jit(system_time_quantiles)
""":func:`system_time_quantiles` compiled (levels and method static): the one compiled copy that
`solve`, `simulate` and the SLO report share."""


def wait_tail(problem: Problem, budgets, x, method: str = "exact") -> jax.Array:
    """P(W_k > x) per task (N,) at x > 0 seconds (the wait before service starts); stable points only."""
    ctx = _setup(problem, budgets, method)
    return _tails_of(ctx)(ctx.params)(jnp.broadcast_to(jnp.asarray(x, ctx.t.dtype), ctx.t.shape))


__all__ = [
    "AUTO_RULE",
    "LEVELS",
    "METHODS",
    "QuantileError",
    "Quantiles",
    "check_level",
    "check_supported",
    "level_name",
    "parse_level",
    "quantile",
    "quantiles_jit",
    "resolve_method",
    "supported",
    "system_time_quantiles",
    "tail",
    "wait_tail",
]
