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

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ProblemError
from ..model import Problem
from ..objective import service_times
from . import euler
from .lundberg import decay_rate, log_prefactor
from .roots import mixture_quantile
from .transform import wait_tail_transform

LEVELS = (0.5, 0.9, 0.95, 0.99)
"""The quantiles reported by default (p50, p90, p95, p99)."""

METHODS = ("auto", "lundberg", "exact")

ILLINOIS_STEPS = {"lundberg": 60, "exact": 40}


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


def _classes(problem: Problem, dtype):
    higher, through = problem.server.wait_classes(problem.num_tasks)
    return jnp.asarray(higher, dtype), jnp.asarray(through, dtype)


def system_time_quantiles(problem: Problem, budgets, levels=LEVELS, method: str = "auto") -> Quantiles:
    """The `levels` quantiles of the system time, overall and per task, at budgets ℓ.

    Pure JAX (jit, vmap, grad in ℓ and every problem field); `levels` and
    `method` are static. Unstable points give +inf. Call
    :func:`check_supported` first at the boundary: an unsupported server
    raises there, with a message, not here.

    **Returns:** :class:`Quantiles` (seconds).
    """
    levels = tuple(float(q) for q in np.atleast_1d(np.asarray(levels, dtype=np.float64)))
    method = resolve_method(problem, method)
    lam, prob = problem.arrival_rate, problem.prob
    t = service_times(problem, budgets)
    rho = lam * jnp.sum(prob * t, -1)
    stable = rho < 1.0
    lam_s = jnp.where(stable, lam, 0.5 / jnp.maximum(jnp.sum(prob * t, -1), 1e-300))  # harmless stand-in
    mean_wait = problem.server.task_system_time(lam_s, prob, t, t * t) - t
    n = problem.num_tasks
    higher, through = _classes(problem, t.dtype)
    rho_s = lam_s * jnp.sum(prob * t, -1)
    one_queue = problem.server.kind == "fifo"  # every type waits the same W
    if method == "lundberg":
        gamma = decay_rate(lam_s, prob, t)
        logc = log_prefactor(gamma, lam_s, prob, t)
        params = {"gamma": gamma, "logc": logc}
        tails_of = _lundberg_tails
        g0 = jnp.full((n,), jnp.exp(jnp.minimum(logc, 0.0)))
        asymptote = jnp.maximum(0.0, logc[..., None] - jnp.log1p(-jnp.asarray(levels, t.dtype))) / gamma
    else:
        params = {"lam": lam_s, "prob": prob, "t": t, "higher": higher, "through": through}
        tails_of = _fifo_tails if one_queue else _exact_tails
        g0 = jnp.full((n,), rho_s)
        asymptote = jnp.zeros(len(levels), t.dtype)
    iters = ILLINOIS_STEPS[method]

    def bound(i, q, k=None):
        """A y with tail ≤ 1 − q: Markov's E[W]/(1 − q) (doubled), or the asymptote's own quantile."""
        w = mean_wait if k is None else mean_wait[k]
        shift = 0.0 if k is None else t[k]
        return jnp.max(shift + jnp.maximum(2.0 * w / (1.0 - q), 1.001 * asymptote[i])) + 1e-300

    def task(k, i, q):
        if one_queue:  # T_k = W + t_k with one W for all: its quantile, shifted
            single = jnp.zeros((1,), t.dtype)
            return t[k] + mixture_quantile(tails_of, iters, params, g0[:1], single, jnp.ones((1,), t.dtype), q,
                                           bound(i, q, 0) - t[0])
        sub = dict(params, higher=higher[k][None], through=through[k][None])
        return mixture_quantile(_exact_tails, iters, sub, g0[k][None], t[k][None], jnp.ones((1,), t.dtype), q,
                                bound(i, q, k))

    def overall(i, q):
        return mixture_quantile(tails_of, iters, params, g0, t, prob, q, bound(i, q) + jnp.max(t))

    tasks = jnp.stack([jnp.stack([task(k, i, q) for i, q in enumerate(levels)]) for k in range(n)])
    total = jnp.stack([overall(i, q) for i, q in enumerate(levels)])
    inf = jnp.asarray(jnp.inf, t.dtype)
    return Quantiles(jnp.where(stable, total, inf), jnp.where(stable, tasks, inf), levels)


def wait_tail(problem: Problem, budgets, x, method: str = "exact") -> jax.Array:
    """P(W_k > x) per task (N,) at x > 0 seconds (the wait before service starts)."""
    method = resolve_method(problem, method)
    lam, prob = problem.arrival_rate, problem.prob
    t = service_times(problem, budgets)
    n = problem.num_tasks
    x = jnp.broadcast_to(jnp.asarray(x, t.dtype), (n,))
    if method == "lundberg":
        gamma = decay_rate(lam, prob, t)
        return _lundberg_tails({"gamma": gamma, "logc": log_prefactor(gamma, lam, prob, t)})(x)
    higher, through = _classes(problem, t.dtype)
    tails = _fifo_tails if problem.server.kind == "fifo" else _exact_tails
    return tails({"lam": lam, "prob": prob, "t": t, "higher": higher, "through": through})(x)


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
    "resolve_method",
    "supported",
    "system_time_quantiles",
    "wait_tail",
]
