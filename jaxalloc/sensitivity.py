"""Sensitivity studies: the paper's Fig. 4 and the derivatives of ℓ* along a parameter.

- :func:`budget_curve`: J as one task's budget varies with the others held at
  their optimum (Fig. 4), with the integer lower bound J̄ of eq. 41 beside it.
- :func:`parameter_curve`: ℓ*(θ) and dℓ*/dθ (implicit differentiation,
  :mod:`jaxalloc.implicit`) over a range of one scalar parameter θ: λ, α,
  ℓ_max, or a parameter of the problem's server (`batch_slowdown`; and
  `servers` / `max_batch`, whole numbers, for which ℓ* comes without a
  derivative: NaN).

Both can add quantiles of the system time at each point's budgets
(`quantiles=(0.99,)`: the exact inversion of :mod:`jaxalloc.quantiles`,
for one FIFO server or priority classes).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .implicit import optimal_budgets
from .model import Problem, ProblemError
from .objective import integer_lower_bound, objective
from .quantiles import check_level, check_supported, system_time_quantiles
from .servers import SWEEPABLE
from .solve import solve, solve_point, solver_for

SCALAR_FIELDS = ("arrival_rate", "alpha", "max_tokens") + SWEEPABLE
"""Parameters :func:`parameter_curve` can vary: the operating point and the server's scalar parameters."""
INTEGER_FIELDS = ("servers", "max_batch")
"""Whole-number server parameters: ℓ* along them, without derivatives."""


def task_index(problem: Problem, task: str) -> int:
    """Index of `task` by name; a clear error naming the known tasks otherwise."""
    if task not in problem.names:
        raise ProblemError(f"task = {task!r}: unknown task (profile has {', '.join(problem.names)})")
    return problem.names.index(task)


def quantile_levels(problem: Problem, quantiles) -> tuple[float, ...]:
    """`quantiles` (levels in (0, 1)) checked, with the problem's server: a
    :class:`~jaxalloc.quantiles.QuantileError` naming the level or the server otherwise."""
    levels = tuple(check_level(q) for q in quantiles)
    if levels:
        check_supported(problem, "exact")
    return levels


@eqx.filter_jit
def _quantiles_at(problem: Problem, points, levels: tuple[float, ...]):
    """The `levels` quantiles of the overall system time at each row of `points` (P, L), exact inversion."""
    return jax.vmap(lambda ell: system_time_quantiles(problem, ell, levels, "exact").overall)(points)


@eqx.filter_jit
def _quantiles_along(problem: Problem, param: str, theta, budgets, levels: tuple[float, ...]):
    """The same along a parameter: problem θ = `theta[i]` at the budgets `budgets[i]` (its own
    priority order where the solver chooses it, as ℓ* was solved for)."""
    def one(v, ell):
        q = problem.replace(**{param: v})
        if q.server.searched():
            q = q.replace(server=solve_point(q, solver_for(q, None)).server)
        return system_time_quantiles(q, ell, levels, "exact").overall

    return jax.vmap(one)(theta, budgets)


def budget_curve(problem: Problem, task: str, budgets, quantiles=()) -> dict[str, np.ndarray]:
    """J and J̄ (eq. 41) as ℓ_task takes each value of `budgets`, the others at ℓ*.

    **Returns:** a dict of arrays: `budget`, `objective`, `lower_bound`, plus
    `optimum` (ℓ*) and `optimal_objective` (J(ℓ*)); with `quantiles` (levels,
    e.g. (0.95, 0.99)) also `quantiles`, the overall system time's quantiles at
    each point (len × levels, seconds, +inf where the queue is unstable), and
    `levels`.
    """
    k = task_index(problem, task)
    levels = quantile_levels(problem, quantiles)
    solution = solve(problem)
    problem = problem.replace(server=solution.server)  # for order = "auto": the order chosen
    star = solution.budgets
    grid = jnp.asarray(budgets, star.dtype)
    points = jnp.broadcast_to(star, (grid.size, star.size)).at[:, k].set(grid)
    values = jax.vmap(objective, in_axes=(None, 0))(problem, points)
    bounds = jax.vmap(integer_lower_bound, in_axes=(None, 0))(problem, points)
    out = {
        "budget": np.asarray(grid),
        "objective": np.asarray(values),
        "lower_bound": np.asarray(bounds),
        "optimum": np.asarray(star),
        "optimal_objective": np.asarray(objective(problem, star)),
    }
    if levels:
        out.update(quantiles=np.asarray(_quantiles_at(problem, points, levels)), levels=np.asarray(levels))
    return out


def simulated_objectives(problem: Problem, budgets, *, queries: int = 10_000, replications: int = 20,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Simulated J = α × realised accuracy − mean system time at each row of
    `budgets` (shape (P, N)), with a 95% interval; one compiled simulation
    for all P points (:func:`jaxalloc.simulate.simulate_points`, common random
    numbers).

    The interval combines the simulator's intervals of the two terms as if
    independent: half-width √((α h_acc)² + h_T²).

    **Returns:** a dict of arrays of length P: `objective`, `halfwidth`,
    `accuracy`, `mean_system_time`.
    """
    from .simulate import point, simulate_points, simulation_report

    budgets = np.asarray(budgets, dtype=float)
    stacked = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (len(budgets),) + x.shape), problem)
    result = simulate_points(stacked, budgets, queries=queries, replications=replications, seed=seed)
    alpha = float(problem.alpha)
    rows = []
    for i, ell in enumerate(budgets):
        report = simulation_report(problem, ell, point(result, i))
        acc, t = report["accuracy"], report["mean_system_time"]
        h_acc = 0.5 * (report["accuracy_ci95"][1] - report["accuracy_ci95"][0])
        h_t = 0.5 * (report["mean_system_time_ci95"][1] - report["mean_system_time_ci95"][0])
        rows.append((alpha * acc - t, float(np.hypot(alpha * h_acc, h_t)), acc, t))
    rows = np.array(rows, dtype=float).reshape(-1, 4)
    return {"objective": rows[:, 0], "halfwidth": rows[:, 1], "accuracy": rows[:, 2], "mean_system_time": rows[:, 3]}


def simulated_budget_points(problem: Problem, task: str, budgets, *, queries: int = 10_000,
                            replications: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Simulated J at a few budgets of `task` (others at ℓ*), with a 95% interval,
    for the points of Fig. 4 (see :func:`simulated_objectives`).

    **Returns:** a dict of arrays: `budget`, `objective`, `halfwidth`.
    """
    k = task_index(problem, task)
    values = np.asarray(budgets, dtype=float)
    solution = solve(problem)
    problem = problem.replace(server=solution.server)  # for order = "auto": the order chosen
    points = np.tile(np.asarray(solution.budgets), (values.size, 1))
    points[:, k] = values
    sim = simulated_objectives(problem, points, queries=queries, replications=replications, seed=seed)
    return {"budget": values, "objective": sim["objective"], "halfwidth": sim["halfwidth"]}


def parameter_curve(problem: Problem, param: str, values, quantiles=()) -> dict[str, np.ndarray]:
    """ℓ*(θ) and dℓ*/dθ for θ = `param` over `values`.

    `param`: arrival_rate, alpha, max_tokens, or a parameter of the problem's
    server (:data:`SCALAR_FIELDS`; one of another server kind is an error
    naming it). For `servers` and `max_batch` the values must be whole numbers
    (the server is resized to hold the largest) and the derivative is NaN:
    they are integers, with no derivative.

    **Returns:** a dict with `value` (θ), `budgets` (len × N) and `derivative` (len × N);
    with `quantiles` (levels) also `quantiles`, the overall system time's quantiles
    at ℓ*(θ) (len × levels, seconds), and `levels`.
    """
    if param not in SCALAR_FIELDS:
        raise ProblemError(f"param = {param!r}: expected one of {', '.join(SCALAR_FIELDS)}")
    if param in SWEEPABLE and param not in problem.server.fields:
        have = ", ".join(problem.server.fields) or "none"
        raise ProblemError(f"param = {param!r}: not a parameter of this profile's {problem.server.kind!r} server "
                           f"(its parameters: {have})")
    raw = np.asarray(values, dtype=np.float64).reshape(-1)
    if param in INTEGER_FIELDS:
        bad = (raw != np.round(raw)) | (raw < 1)
        if bad.any():
            raise ProblemError(f"{param} = {raw[bad][0]:g}: must be an integer >= 1 (a range of whole numbers, "
                               f"e.g. 1:8:8)")
        problem = problem.replace(server=problem.server.resized(int(raw.max())))
    elif param in ("batch_slowdown", "admission") and (raw < 0).any():
        raise ProblemError(f"{param} = {raw[raw < 0][0]:g}: must be >= 0")
    levels = quantile_levels(problem, quantiles)  # after resizing: servers > 1 have none
    theta = jnp.asarray(raw, problem.A.dtype)
    f = lambda v: optimal_budgets(problem.replace(**{param: v}))
    if param in INTEGER_FIELDS:
        budgets = jax.vmap(f)(theta)
        derivative = jnp.full_like(budgets, jnp.nan)
    else:
        budgets, derivative = jax.vmap(lambda v: jax.jvp(f, (v,), (jnp.ones_like(v),)))(theta)
    out = {"value": np.asarray(theta), "budgets": np.asarray(budgets), "derivative": np.asarray(derivative)}
    if levels:
        out.update(quantiles=np.asarray(_quantiles_along(problem, param, theta, budgets, levels)),
                   levels=np.asarray(levels))
    return out
