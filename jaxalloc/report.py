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
    is_one_server,
    load,
    mean_accuracy,
    moments,
    objective,
    system_time,
    task_accuracy,
    task_system_time,
)
from .solution import Solution, Status
from .solvers.integer import integer_budgets


def json_number(x) -> float | None:
    """A JSON-safe float: None for NaN or ±inf."""
    v = float(x)
    return v if math.isfinite(v) else None


def used_server(problem: Problem, solution: Solution):
    """The server a solution was solved for: the solver's report of it where it
    gives one (for a priority server with order "auto", the order it chose),
    else the problem's own."""
    server = getattr(solution, "server", None)
    return problem.server if server is None else server


def mean_wait(problem: Problem, budgets):
    """E[W]: the mean time before service starts, E[T] − E[S] over all tasks
    (eq. 5 for one FIFO server, from the server's own formula where it has one)."""
    m1, m2 = moments(problem, budgets)
    wait = getattr(problem.server, "mean_wait", None)
    if wait is not None:  # one FIFO queue: Pollaczek-Khinchine (c = 1) or Lee-Longton, as is
        return wait(problem.arrival_rate, m1, m2)
    return server_system_time(problem, budgets) - m1


def server_system_time(problem: Problem, budgets):
    """E[T] of the problem's server, as J computes it (from the moments for an
    aggregate server: eq. 6 bit for bit for one FIFO server)."""
    if problem.server.aggregate:
        return problem.server.delay(problem.arrival_rate, *moments(problem, budgets))
    return system_time(problem, budgets)


def solution_report(problem: Problem, solution: Solution, method: str, integer: str = "auto") -> dict[str, Any]:
    """The contract's JSON fields for a solved problem.

    Queue and accuracy figures (`accuracy`, `mean_wait`, `mean_system_time`,
    `task_system_time`, `utilization`) are at the continuous optimum ℓ*, from
    the server's delay model (:mod:`jaxalloc.servers`; utilisation is the load
    λE[S] over the server's capacity); the `integer_*` fields at the integer
    budgets chosen by `integer` (see
    :func:`jaxalloc.solvers.integer.integer_budgets`). `server` is the server
    used: its kind and parameters, and for priority the order used (the one
    chosen when the profile says "auto"). Non-finite numbers are written as null.
    """
    problem = problem.replace(server=used_server(problem, solution))
    ell = solution.budgets
    ell_int = integer_budgets(problem, ell, integer)
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
        # which bound: eq. 41 for the paper's one FIFO server, else the monotone bound
        # (objective.monotone_lower_bound), whatever the server's parameters
        "integer_lower_bound_formula": "eq. 41" if is_one_server(problem) else "monotone",
        "accuracy": json_number(mean_accuracy(problem, ell)),
        "task_accuracy": [float(x) for x in np.asarray(task_accuracy(problem, ell))],
        "mean_wait": json_number(mean_wait(problem, ell)),
        "mean_system_time": json_number(server_system_time(problem, ell)),
        "task_system_time": [json_number(x) for x in np.asarray(task_system_time(problem, ell))],
        "utilization": json_number(load(problem, ell)),
        "kkt_residual": json_number(solution.kkt_residual),
        "status": Status(int(solution.status)).label,
        "method": method,
        "iterations": int(solution.iterations),
        "arrival_rate": float(lam),
        "alpha": float(problem.alpha),
        "max_tokens": float(problem.max_tokens),
        "prob": [float(x) for x in np.asarray(problem.prob)],
        "server": problem.server.describe(tuple(names)),
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
    if "server" in report:
        lines.append(f"server: {describe_server(report['server'])}")
    lines.append("")
    lines.append(f"{'task':<{width}}  {'share π':>8}  {'budget ℓ*':>11}  {'integer':>8}  {'accuracy':>8}  {'E[T_k] s':>9}")
    times = report.get("task_system_time") or [None] * len(report["tasks"])
    for name, pi, ell, li, acc, t in zip(
        report["tasks"], report["prob"], report["budgets"], report["integer_budgets"], report["task_accuracy"], times
    ):
        lines.append(f"{name:<{width}}  {pi:>8.4f}  {ell:>11.3f}  {li:>8d}  {acc:>8.4f}  {fmt(t, '>9.4f')}")
    lines.append("")
    bound = fmt(report["integer_lower_bound"], ".6f")
    one = _one_server(report)
    eq41 = report.get("integer_lower_bound_formula", "eq. 41") == "eq. 41"
    if not report["integer_lower_bound_valid"]:
        bound += (" (eq. 41 assumption λ(E[S]+c_max) < 1 fails)" if eq41 else
                  " (the queue is unstable with every budget one token higher)")
    lines += [
        f"objective J(ℓ*)        {fmt(report['objective'], '.6f')}",
        f"integer J(ℓ_int)       {fmt(report['integer_objective'], '.6f')}",
        (f"lower bound J̄ (eq. 41) {bound}" if eq41 else f"lower bound J̄          {bound}"),
        f"mean accuracy          {fmt(report['accuracy'], '.4f')}",
        f"mean wait E[W]         {fmt(report['mean_wait'], '.4f')} s",
        f"mean system time E[T]  {fmt(report['mean_system_time'], '.4f')} s",
        f"utilization ρ          {fmt(report['utilization'], '.4f')}" + ("" if one else "  (load λE[S] / capacity)"),
        (f"status                 {report['status']} after {report['iterations']} iterations, "
         f"KKT residual {fmt(report['kkt_residual'], '.2e')}"),
    ]
    return "\n".join(lines)


def _one_server(report: dict[str, Any]) -> bool:
    return report.get("server", {"kind": "fifo", "servers": 1}) == {"kind": "fifo", "servers": 1}


def describe_server(desc: dict[str, Any]) -> str:
    """One line for a server's :meth:`~jaxalloc.servers.Server.describe`: kind, parameters, model."""
    kind = desc["kind"]
    if kind == "fifo":
        c = desc["servers"]
        return ("fifo, 1 server (M/G/1, Pollaczek-Khinchine: the paper's model)" if c == 1 else
                f"fifo, {c} servers sharing one queue (M/G/{c}, Lee-Longton approximation)")
    if kind == "priority":
        how = "chosen to maximise J (order \"auto\")" if desc.get("auto") else "as given"
        return f"priority (non-preemptive M/G/1, Cobham), order {' > '.join(desc['order'])}, {how}"
    if kind == "batching":
        admission = f", admission = {desc['admission']:g} s" if desc.get("admission") else ""
        return (f"batching, max_batch = {desc['max_batch']}, batch_slowdown = {desc['batch_slowdown']:g}{admission} "
                "(state-dependent processor sharing)")
    return ", ".join(f"{k} = {v}" for k, v in desc.items())
