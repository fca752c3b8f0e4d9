"""Everything a person or a program wants to know about one solved problem, as plain data.

:func:`solution_report` returns the dictionary behind `jaxalloc solve --json`
(the keys of the command-line contract); :func:`format_report` renders it as
a table for people.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .model import Problem
from .objective import (
    integer_bound_holds,
    integer_lower_bound,
    mean_accuracy,
    mean_system_time,
    mean_wait,
    moments,
    objective,
    task_accuracy,
    utilization,
)
from .solution import Solution, Status
from .solvers.integer import integer_budgets


def json_number(x) -> float | None:
    """A JSON-safe float: None for NaN or ±inf."""
    v = float(x)
    return v if math.isfinite(v) else None


def solution_report(problem: Problem, solution: Solution, method: str, integer: str = "auto") -> dict[str, Any]:
    """The contract's JSON fields for a solved problem.

    Queue and accuracy figures (`accuracy`, `mean_wait`, `mean_system_time`,
    `utilization`) are at the continuous optimum ℓ*; the `integer_*` fields at
    the integer budgets chosen by `integer` (see
    :func:`jaxalloc.solvers.integer.integer_budgets`). Non-finite numbers are
    written as null.
    """
    ell = solution.budgets
    ell_int = integer_budgets(problem, ell, integer)
    m1, m2 = moments(problem, ell)
    lam = problem.arrival_rate
    bound_ok = bool(integer_bound_holds(problem, ell))
    names = list(problem.names) or [f"task{k}" for k in range(problem.num_tasks)]
    return {
        "tasks": names,
        "budgets": [float(x) for x in np.asarray(ell)],
        "integer_budgets": [int(x) for x in np.asarray(ell_int)],
        "objective": json_number(solution.objective),
        "integer_objective": json_number(objective(problem, ell_int)),
        "integer_lower_bound": json_number(integer_lower_bound(problem, ell)),
        "integer_lower_bound_valid": bound_ok,
        "accuracy": json_number(mean_accuracy(problem, ell)),
        "task_accuracy": [float(x) for x in np.asarray(task_accuracy(problem, ell))],
        "mean_wait": json_number(mean_wait(lam, m1, m2)),
        "mean_system_time": json_number(mean_system_time(lam, m1, m2)),
        "utilization": json_number(utilization(lam, m1)),
        "kkt_residual": json_number(solution.kkt_residual),
        "status": Status(int(solution.status)).label,
        "method": method,
        "iterations": int(solution.iterations),
        "arrival_rate": float(lam),
        "alpha": float(problem.alpha),
        "max_tokens": float(problem.max_tokens),
        "prob": [float(x) for x in np.asarray(problem.prob)],
    }


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A fixed-width table of a :func:`solution_report`."""
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    width = max(8, *(len(n) for n in report["tasks"]))
    lines = []
    if title:
        lines.append(title)
    lines.append(
        f"arrival rate λ = {report['arrival_rate']:g}/s   α = {report['alpha']:g}   "
        f"ℓ_max = {report['max_tokens']:g}   method = {report['method']}"
    )
    lines.append("")
    lines.append(f"{'task':<{width}}  {'share π':>8}  {'budget ℓ*':>11}  {'integer':>8}  {'accuracy':>8}")
    for name, pi, ell, li, acc in zip(
        report["tasks"], report["prob"], report["budgets"], report["integer_budgets"], report["task_accuracy"]
    ):
        lines.append(f"{name:<{width}}  {pi:>8.4f}  {ell:>11.3f}  {li:>8d}  {acc:>8.4f}")
    lines.append("")
    bound = fmt(report["integer_lower_bound"], ".6f")
    if not report["integer_lower_bound_valid"]:
        bound += " (eq. 41 assumption λ(E[S]+c_max) < 1 fails)"
    lines += [
        f"objective J(ℓ*)        {fmt(report['objective'], '.6f')}",
        f"integer J(ℓ_int)       {fmt(report['integer_objective'], '.6f')}",
        f"lower bound J̄ (eq. 41) {bound}",
        f"mean accuracy          {fmt(report['accuracy'], '.4f')}",
        f"mean wait E[W]         {fmt(report['mean_wait'], '.4f')} s",
        f"mean system time E[T]  {fmt(report['mean_system_time'], '.4f')} s",
        f"utilization ρ          {fmt(report['utilization'], '.4f')}",
        (f"status                 {report['status']} after {report['iterations']} iterations, "
         f"KKT residual {fmt(report['kkt_residual'], '.2e')}"),
    ]
    return "\n".join(lines)
