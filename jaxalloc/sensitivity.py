"""Sensitivity studies: the paper's Fig. 4 and the derivatives of ℓ* along a parameter.

- :func:`budget_curve`: J as one task's budget varies with the others held at
  their optimum (Fig. 4), with the integer lower bound J̄ of eq. 41 beside it.
- :func:`parameter_curve`: ℓ*(θ) and dℓ*/dθ (implicit differentiation,
  :mod:`jaxalloc.implicit`) over a range of one scalar parameter θ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .implicit import optimal_budgets
from .model import Problem, ProblemError
from .objective import integer_lower_bound, objective
from .solve import solve

SCALAR_FIELDS = ("arrival_rate", "alpha", "max_tokens")


def task_index(problem: Problem, task: str) -> int:
    """Index of `task` by name; a clear error naming the known tasks otherwise."""
    if task not in problem.names:
        raise ProblemError(f"task = {task!r}: unknown task (profile has {', '.join(problem.names)})")
    return problem.names.index(task)


def budget_curve(problem: Problem, task: str, budgets) -> dict[str, np.ndarray]:
    """J and J̄ (eq. 41) as ℓ_task takes each value of `budgets`, the others at ℓ*.

    **Returns:** a dict of arrays: `budget`, `objective`, `lower_bound`, plus
    `optimum` (ℓ*) and `optimal_objective` (J(ℓ*)).
    """
    k = task_index(problem, task)
    star = solve(problem).budgets
    grid = jnp.asarray(budgets, star.dtype)
    points = jnp.broadcast_to(star, (grid.size, star.size)).at[:, k].set(grid)
    values = jax.vmap(objective, in_axes=(None, 0))(problem, points)
    bounds = jax.vmap(integer_lower_bound, in_axes=(None, 0))(problem, points)
    return {
        "budget": np.asarray(grid),
        "objective": np.asarray(values),
        "lower_bound": np.asarray(bounds),
        "optimum": np.asarray(star),
        "optimal_objective": np.asarray(objective(problem, star)),
    }


def simulated_budget_points(problem: Problem, task: str, budgets, *, queries: int = 10_000,
                            replications: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Simulated J = α × realised accuracy − mean system time at a few budgets of `task`
    (others at ℓ*), with a 95% interval, for the points of Fig. 4.

    The interval combines the simulator's intervals of the two terms as if
    independent: half-width √((α h_acc)² + h_T²).
    """
    from .simulate import simulate, simulation_report

    k = task_index(problem, task)
    star = np.asarray(solve(problem).budgets)
    alpha = float(problem.alpha)
    rows = []
    for v in np.asarray(budgets, dtype=float):
        ell = star.copy()
        ell[k] = v
        report = simulation_report(problem, ell, simulate(problem, ell, queries=queries,
                                                          replications=replications, seed=seed))
        acc, t = report["accuracy"], report["mean_system_time"]
        h_acc = 0.5 * (report["accuracy_ci95"][1] - report["accuracy_ci95"][0])
        h_t = 0.5 * (report["mean_system_time_ci95"][1] - report["mean_system_time_ci95"][0])
        rows.append((v, alpha * acc - t, float(np.hypot(alpha * h_acc, h_t))))
    rows = np.array(rows)
    return {"budget": rows[:, 0], "objective": rows[:, 1], "halfwidth": rows[:, 2]}


def parameter_curve(problem: Problem, param: str, values) -> dict[str, np.ndarray]:
    """ℓ*(θ) and dℓ*/dθ for θ = `param` (arrival_rate, alpha or max_tokens) over `values`.

    **Returns:** a dict with `value` (θ), `budgets` (len × N) and `derivative` (len × N).
    """
    if param not in SCALAR_FIELDS:
        raise ProblemError(f"param = {param!r}: expected one of {', '.join(SCALAR_FIELDS)}")
    theta = jnp.asarray(values, problem.A.dtype)
    f = lambda v: optimal_budgets(problem.replace(**{param: v}))
    budgets, derivative = jax.vmap(lambda v: jax.jvp(f, (v,), (jnp.ones_like(v),)))(theta)
    return {"value": np.asarray(theta), "budgets": np.asarray(budgets), "derivative": np.asarray(derivative)}
