"""Latency SLOs as constraints: maximise J(ℓ) subject to quantiles of the system time.

    maximise J(ℓ)   subject to   q_i(ℓ) ≤ L_i (i = 1..m),   0 ≤ ℓ ≤ ℓ_max,

where q_i is a quantile of the system time, overall or of one task
(:mod:`jaxalloc.quantiles`), e.g. "p99 ≤ 8 s" or "GSM8K: p95 ≤ 5 s".

**Feasibility.** Every quantile rises with every budget (a longer service
time makes every wait stochastically longer, and T_k = W_k + t_k), so the
smallest value each q_i can take is q_i(0): the SLOs are infeasible exactly
when some q_i(0) > L_i, and that value is what the error reports.

**Method.** The augmented Lagrangian of Powell, Hestenes and Rockafellar
(Nocedal and Wright, *Numerical Optimization*, §17.4, the bound-constrained
form), on the constraints written as tails, g_i(ℓ) = log P(T > L_i) − log(1 − q_i) ≤ 0 (the
q_i-quantile is ≤ L_i exactly when the tail at L_i is ≤ 1 − q_i; the tail needs one transform
inversion and plain autodiff, the quantile a root solve):

    Φ(ℓ; μ, c) = J(ℓ) − (1/2c) Σ_i [max(0, μ_i + c g_i(ℓ))² − μ_i²],

maximised over the box by projected Newton (the Bertsekas active set of
:mod:`jaxalloc.solvers.projected_newton`, an Armijo search on Φ) on the
autodiff Hessian of Φ, its eigenvalues taken in absolute value where it is not negative
definite (J need not be concave under priority, and Φ is only C¹ where μ_i + c g_i crosses 0),
so every step is an ascent step; the Hessian row by row (:func:`value_grad_hessian`). Each
inner solve stops at a step of 10^-2 of the constraints' gap (never looser than 10^-4) while
they are far from met, at `tol` once they are. Then μ_i ← max(0, μ_i + c g_i(ℓ)), and c grows
×10 when the violation did not fall by 4×. It starts from the unconstrained optimum, which is
the answer when it already meets every SLO. At the end, μ_i (−∂g_i/∂L_i) is the multiplier of
SLO i in J per second: how much J one more second of the limit would buy (∂J*/∂L_i).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .errors import ProblemError
from .model import Problem, validate
from .objective import objective
from .quantiles import (
    LEVELS,
    check_supported,
    level_name,
    parse_level,
    quantile,
    quantiles_jit,
    resolve_method,
    supported,
    tail,
)
from .solution import Solution, Status
from .solve import solve_point
from .solvers.projected_newton import _dense_solve


class SLOError(ProblemError):
    """A malformed SLO: the message names it and the value."""


class SLO(NamedTuple):
    """One SLO: the `level` quantile of the system time of task `task` (an index; None: overall) ≤ `limit` seconds."""

    task: int | None
    level: float
    limit: float

    def label(self, names) -> str:
        q = level_name(self.level)
        return q if self.task is None else f"{names[self.task]}:{q}"


def parse_slo(text: str, names) -> SLO:
    """`[TASK:]pNN=SECONDS` (e.g. "p99=8", "GSM8K:p95=5") → :class:`SLO`; :class:`SLOError` naming what is wrong."""
    raw = text.strip()
    if "=" not in raw:
        raise SLOError(f"--slo {text!r}: expected [TASK:]pNN=SECONDS, e.g. p99=8 or GSM8K:p95=5")
    head, _, value = raw.rpartition("=")
    task_name, _, level_text = head.rpartition(":")
    task = None
    if task_name:
        if task_name not in names:
            raise SLOError(f"--slo {text!r}: unknown task {task_name!r} (tasks: {', '.join(names)})")
        task = list(names).index(task_name)
    try:
        level = parse_level(level_text)
    except ProblemError as exc:
        raise SLOError(f"--slo {text!r}: {exc}") from None
    try:
        limit = float(value)
    except ValueError:
        raise SLOError(f"--slo {text!r}: time {value!r} is not a number of seconds") from None
    if not math.isfinite(limit) or limit <= 0:
        raise SLOError(f"--slo {text!r}: time {value} must be a finite number of seconds > 0")
    return SLO(task, level, limit)


def slo_values(problem: Problem, budgets, spec: tuple, method: str = "auto") -> jax.Array:
    """The quantiles the SLOs constrain, (m,), at budgets ℓ; `spec`: ((task, level), ...), static."""
    return jnp.stack([quantile(problem, budgets, level, task, method) for task, level in spec])


def slo_constraints(problem: Problem, budgets, spec: tuple, limits, method: str = "auto") -> jax.Array:
    """g_i = log P(T > L_i) − log(1 − q_i), (m,): ≤ 0 exactly when the q_i-quantile is ≤ L_i.

    The tail at the limit needs no root solve (one transform inversion, plain autodiff), where the
    quantile itself would: the solver works on these, and reports the quantiles at the end."""
    tails = [tail(problem, budgets, limits[i], task, method) for i, (task, _level) in enumerate(spec)]
    levels = jnp.asarray([level for _task, level in spec], budgets.dtype)
    return jnp.log(jnp.maximum(jnp.stack(tails), 1e-300)) - jnp.log1p(-levels)


def slo_caps(problem: Problem, spec: tuple, limits) -> jax.Array:
    """Per-task upper bounds on ℓ implied by the SLOs, (N,): a task whose own quantile is constrained, or whose
    share alone exceeds an overall SLO's 1 − q, must have t_k = t0_k + c_k ℓ_k below the limit (else P(T > L)
    ≥ its share, and the tail no longer moves with ℓ_k: a flat, infeasible region the solver must not enter)."""
    top = jnp.broadcast_to(problem.max_tokens, problem.A.shape)
    for i, (task, level) in enumerate(spec):
        bound = (limits[i] - problem.t0) / problem.c * (1.0 - 1e-9)
        needs = (jnp.arange(problem.num_tasks) == task) if task is not None else (problem.prob >= 1.0 - level)
        top = jnp.where(needs, jnp.minimum(top, jnp.maximum(bound, 0.0)), top)
    return top


class AugmentedLagrangian(eqx.Module):
    """Hyperparameters of :func:`solve_slo_point` (see the module docstring).

    - `tol`: on the inner step (tokens, relative).
    - `ctol`: on each constraint, |g_i| for an SLO with a multiplier, g_i⁺ for the others (g_i is a
      log tail: 1e-8 is a relative error of 1e-8 in P(T > L_i), far below the formulas' own). The
      solver aims at g_i = −ctol, so what it returns meets every SLO.
    - `max_outer`, `max_inner`: multiplier updates; Newton steps per update.
    - `penalty`: the first c.
    """

    tol: float = 1e-10
    ctol: float = 1e-8
    max_outer: int = 40
    max_inner: int = 50
    penalty: float = 10.0


DEFAULT = AugmentedLagrangian()


def value_grad_hessian(f, x):
    """(f(x), ∇f(x), ∇²f(x)), the Hessian one row at a time: a forward-over-reverse product with each
    basis vector in sequence (`lax.map`), whose primal outputs are the value and gradient.

    `jax.hessian` pushes all N tangents through at once; on the exact tails (complex transforms at
    81 nodes) XLA then spends its time in the batched transcendentals. Measured on the paper
    profile's p99 constraint, N = 6, medians of 100: `jax.hessian` 2.7 ms, row by row 0.82 ms
    (`jax.linearize` once, then its linear map per row: 1.2 ms)."""
    (values, grads), (_, rows) = lax.map(lambda v: jax.jvp(jax.value_and_grad(f), (x,), (v,)),
                                         jnp.eye(x.shape[0], dtype=x.dtype))
    return values[0], grads[0], rows


def _augmented_lagrangian(problem: Problem, spec: tuple, limits, method: str, solver, start, mu0, penalty):
    """(ℓ, μ, outer steps, inner steps, converged) from (start, μ0, c0); see the module docstring."""
    top = slo_caps(problem, spec, limits)
    # aimed ctol inside each SLO: converged to |g| ≤ ctol, the answer meets it (g ≤ 0), not nearly
    g_of = lambda x: slo_constraints(problem, x, spec, limits, method) + solver.ctol

    def phi(x, mu, c):
        return objective(problem, x) - jnp.sum(jnp.maximum(0.0, mu + c * g_of(x)) ** 2 - mu**2) / (2.0 * c)

    def inner(x, mu, c, tol):
        def cond(s):
            _, k, done = s
            return (~done) & (k < solver.max_inner)

        def body(s):
            x, k, _ = s
            value, grad, H = value_grad_hessian(lambda y: phi(y, mu, c), x)
            H = -H
            eps = jnp.minimum(1e-3 * (1.0 + jnp.abs(x)), 1.0)
            active = ((x <= eps) & (grad < 0)) | ((x >= top - eps) & (grad > 0))
            d = _dense_solve(H, ~active, grad)

            def bt_cond(b):
                _, new, val, n = b
                return (n < 60) & ~(val >= value + 1e-4 * jnp.sum(grad * (new - x)))

            def bt_body(b):
                t = 0.5 * b[0]
                new = jnp.clip(x + t * d, 0.0, top)
                return t, new, phi(new, mu, c), b[3] + 1

            first = jnp.clip(x + d, 0.0, top)
            _, new, val, _ = lax.while_loop(bt_cond, bt_body, (jnp.asarray(1.0, x.dtype), first, phi(first, mu, c), 0))
            new = jnp.where(val >= value, new, x)
            rel = lambda y: jnp.max(jnp.abs(y - x) / jnp.maximum(1.0, jnp.abs(x)))
            # the Newton step is below tol, or the line search could only take a step below it: Φ is
            # flat to its rounding there (the exact tails are accurate to ~1e-12), the answer to that noise
            return new, k + 1, (rel(first) <= tol) | (rel(new) <= solver.tol)

        x, k, _ = lax.while_loop(cond, body, (x, jnp.asarray(0), jnp.asarray(False)))
        return x, k

    def outer_cond(s):
        return (~s[-1]) & (s[4] < solver.max_outer)

    def gap(g, mu):  # how far from a KKT point's constraints: violated, or a multiplier's SLO not tight
        return jnp.max(jnp.where(mu > 0, jnp.abs(g), jnp.maximum(g, 0.0)))

    def outer_body(s):
        x, mu, c, viol, n, steps, far, _ = s
        # inexact inner solves while the constraints are far off (Conn, Gould and Toint's rule, simplified):
        # to a step of 1e-2 of the gap, never looser than 1e-4; the last one, to tol
        tol = jnp.maximum(solver.tol, jnp.minimum(1e-4, 1e-2 * far))
        x, k = inner(x, mu, c, tol)
        g = g_of(x)
        mu = jnp.maximum(0.0, mu + c * g)
        new_viol = jnp.max(jnp.maximum(g, 0.0))
        c = jnp.where(new_viol > 0.25 * viol, 10.0 * c, c)
        # feasible, and complementary: an SLO with a multiplier is met with equality (|g| ≤ ctol), from an
        # inner solve to tol that converged
        new_far = gap(g, mu)
        done = (new_far <= solver.ctol) & (tol <= solver.tol) & (k < solver.max_inner)
        return x, mu, c, new_viol, n + 1, steps + k, new_far, done

    start = jnp.minimum(start, top)
    g0 = g_of(start)
    viol0 = jnp.max(jnp.maximum(g0, 0.0))
    feasible_free = (viol0 <= 0) & jnp.all(mu0 == 0)  # the unconstrained optimum meets every SLO
    state = (start, mu0, jnp.asarray(penalty, start.dtype), viol0, jnp.asarray(0), jnp.asarray(0), gap(g0, mu0),
             feasible_free)
    x, mu, _, _, outer, steps, _, done = lax.while_loop(outer_cond, outer_body, state)
    return x, mu, outer, steps, done


def solve_slo_point(problem: Problem, spec: tuple, limits, method: str = "auto", solver: AugmentedLagrangian | None = None):
    """(ℓ, μ, outer steps, inner steps, converged) of the SLO-constrained problem; pure JAX.

    `spec` ((task, level), ...) and `method` static; `limits` (m,) seconds.
    μ are the multipliers of the constraints g of :func:`slo_constraints`.

    With the exact method on one FIFO server it first solves with the Cramér–Lundberg asymptote
    (cheap: closed-form tails) and starts the exact solve from that point and its multipliers
    (measured on the paper profile, p99 ≤ 8 s, compiled: 64 → 11 Newton steps; with the rest of
    docs/quantiles.md#speed, 1031 → 15 ms; bench/bench_quantiles.py);
    the answer is the exact problem's either way."""
    solver = DEFAULT if solver is None else solver
    limits = jnp.asarray(limits, problem.A.dtype)
    start = solve_point(problem).budgets
    mu0 = jnp.zeros(len(spec), start.dtype)
    penalty = solver.penalty
    if resolve_method(problem, method) == "exact" and problem.server.kind == "fifo":
        x, mu, _, _, done = _augmented_lagrangian(problem, spec, limits, "lundberg", solver, start, mu0, penalty)
        start, mu0 = jnp.where(done, x, start), jnp.where(done, mu, mu0)
    return _augmented_lagrangian(problem, spec, limits, method, solver, start, mu0, penalty)


_solve_slo_jit = eqx.filter_jit(solve_slo_point)
_values_jit = eqx.filter_jit(slo_values)


class SLOSolution(NamedTuple):
    """The result of :func:`solve_slo`.

    - `solution`: the :class:`Solution` (budgets, J, KKT residual of J alone, steps, status);
    - `slos`: the SLOs; `values` (m,): each constrained quantile at the budgets;
      `multipliers` (m,): J per second of limit, 0 where the SLO does not bind;
    - `smallest` (m,): each quantile at ℓ = 0, the least it can be;
    - `feasible`: every SLO can be met (else the budgets are zero and `status` says why).
    """

    solution: Solution
    slos: tuple[SLO, ...]
    values: np.ndarray
    multipliers: np.ndarray
    smallest: np.ndarray
    feasible: bool

    @property
    def status(self) -> str:
        return "infeasible" if not self.feasible else Status(int(self.solution.status)).label


def _spec(slos) -> tuple:
    return tuple((s.task, s.level) for s in slos)


def solve_slo(problem: Problem, slos, method: str = "auto", *, check: bool = True,
              solver: AugmentedLagrangian | None = None) -> SLOSolution:
    """Maximise J subject to the SLOs (see the module docstring).

    **Arguments:** `problem` (concrete); `slos`: :class:`SLO` values (or
    strings for :func:`parse_slo`); `method`: the quantile method
    (:mod:`jaxalloc.quantiles`; "auto" is the exact inversion).

    **Returns:** :class:`SLOSolution`; infeasible SLOs come back with
    `feasible` False and the least achievable values in `smallest`.
    Raises :class:`ProblemError` for a bad problem or SLO, or a server without quantiles.
    """
    if check:
        validate(problem)
    slos = tuple(parse_slo(s, problem.names) if isinstance(s, str) else SLO(*s) for s in slos)
    if not slos:
        raise SLOError("solve_slo: give at least one SLO, e.g. 'p99=8'")
    check_supported(problem, method)
    if problem.server.searched():
        raise SLOError('server.order = "auto": an SLO needs a fixed priority order (give one, e.g. from '
                       "a solve without --slo)")
    spec = _spec(slos)
    limits = np.asarray([s.limit for s in slos])
    zero = jnp.zeros_like(problem.A)
    smallest = np.asarray(_values_jit(problem, zero, spec, method))
    if np.any(smallest > limits):
        none = Solution(budgets=zero, objective=objective(problem, zero), kkt_residual=jnp.asarray(jnp.inf),
                        iterations=jnp.asarray(0, jnp.int32), status=jnp.asarray(Status.CONVERGED, jnp.int32),
                        server=problem.server)
        return SLOSolution(none, slos, smallest, np.zeros(len(slos)), smallest, False)
    x, mu, _outer, steps, done = _solve_slo_jit(problem, spec, limits, method, solver)
    values = np.asarray(_values_jit(problem, x, spec, method))
    j = objective(problem, x)
    status = Status.CONVERGED if bool(done) else Status.MAX_STEPS_REACHED
    sol = Solution(budgets=x, objective=j, kkt_residual=jnp.asarray(slo_kkt_residual(problem, x, mu, spec, limits, method)),
                   iterations=jnp.asarray(steps, jnp.int32), status=jnp.asarray(status, jnp.int32), server=problem.server)
    return SLOSolution(sol, slos, values, np.asarray(mu) * limit_prices(problem, x, spec, limits, method), smallest, True)


def limit_prices(problem: Problem, budgets, spec, limits, method="auto") -> np.ndarray:
    """−∂g_i/∂L_i (per second): turns μ_i into ∂J*/∂L_i, J per second of SLO limit."""
    lim = jnp.asarray(limits, budgets.dtype)
    diag = jax.jacfwd(lambda L: slo_constraints(problem, budgets, spec, L, method))(lim)
    return -np.diagonal(np.asarray(diag))


def slo_kkt_residual(problem: Problem, budgets, mu, spec, limits, method="auto") -> float:
    """‖ℓ − P(ℓ + ∇_ℓ L)‖∞ with L = J − Σ μ_i g_i: the projected-gradient KKT residual of the Lagrangian."""
    limits = jnp.asarray(limits, budgets.dtype)
    lag = lambda x: objective(problem, x) - jnp.sum(mu * slo_constraints(problem, x, spec, limits, method))
    g = jax.grad(lag)(budgets)
    return float(jnp.max(jnp.abs(jnp.clip(budgets + g, 0.0, problem.max_tokens) - budgets)))


def feasible_integer_budgets(problem: Problem, budgets, slos, method: str = "auto") -> tuple[np.ndarray, float]:
    """(integer budgets, their J) that meet the SLOs, near ℓ: ⌊ℓ⌋ (feasible: quantiles rise with ℓ), then
    each budget raised to ⌈ℓ_k⌉ in turn, largest gain in J first, where J rises and the SLOs still hold."""
    spec, limits = _spec(slos), np.asarray([s.limit for s in slos])
    ell = np.asarray(budgets)
    best = np.floor(ell)
    gains = []
    for k in np.nonzero(np.ceil(ell) > best)[0]:
        up = best.copy()
        up[k] += 1
        gains.append((float(objective(problem, jnp.asarray(up))) - float(objective(problem, jnp.asarray(best))), k))
    for gain, k in sorted(gains, reverse=True):
        if gain <= 0:
            break
        up = best.copy()
        up[k] += 1
        if np.all(np.asarray(_values_jit(problem, jnp.asarray(up), spec, method)) <= limits) and \
                float(objective(problem, jnp.asarray(up))) > float(objective(problem, jnp.asarray(best))):
            best = up
    return best.astype(int), float(objective(problem, jnp.asarray(best)))


def quantile_report(problem: Problem, budgets, method: str = "auto", levels=None) -> dict | None:
    """`{"overall": {"p50": …}, "tasks": {NAME: {…}}, "method": …}` in seconds at `budgets`, or None
    when the server has no quantiles (FIFO with c > 1, batching)."""
    if not supported(problem):
        return None
    levels = LEVELS if levels is None else tuple(levels)
    q = quantiles_jit(problem, jnp.asarray(budgets, problem.A.dtype), levels, method)
    num = lambda v: float(v) if math.isfinite(float(v)) else None
    names = list(problem.names) or [f"task{k}" for k in range(problem.num_tasks)]
    return {
        "overall": {level_name(lv): num(v) for lv, v in zip(levels, np.asarray(q.overall))},
        "tasks": {n: {level_name(lv): num(v) for lv, v in zip(levels, row)} for n, row in zip(names, np.asarray(q.tasks))},
        "method": resolve_method(problem, method),
    }


def slo_report(problem: Problem, result: SLOSolution) -> list[dict]:
    """One entry per SLO: its name, task, level, limit, value at the budgets, multiplier, and whether it binds."""
    names = list(problem.names)
    out = []
    for s, v, m, low in zip(result.slos, result.values, result.multipliers, result.smallest):
        out.append({
            "slo": s.label(names),
            "task": None if s.task is None else names[s.task],
            "level": s.level,
            "limit": s.limit,
            "value": float(v),
            "multiplier": float(m),
            "binding": bool(m > 0),
            "smallest": float(low),
        })
    return out



def format_slo(report: dict) -> str:
    """The SLO and quantile lines of the `solve` table."""
    lines = []
    q = report.get("quantiles")
    if q:
        lines.append("system time " + " / ".join(q["overall"]) + " (s, " + q["method"] + ")  " +
                     " / ".join("n/a" if v is None else f"{v:.4g}" for v in q["overall"].values()))
    for e in report.get("slo", []):
        state = "binds" if e["binding"] else "slack"
        lines.append(f"SLO {e['slo']} <= {e['limit']:g} s: {e['value']:.6g} s ({state}; multiplier "
                     f"{e['multiplier']:.4g} J/s; least possible {e['smallest']:.4g} s)")
    if report.get("message"):
        lines.append(report["message"])
    return "\n".join(lines)
