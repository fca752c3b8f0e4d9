"""What the queueing models predict for a load test: mean system time per task and overall.

Two models at every rate: the profile's own server (its ``[server]`` table, see
:mod:`jaxalloc.servers`) and the paper's single FIFO server (M/G/1,
Pollaczek–Khinchine), both from jaxalloc's own formulas
(:func:`jaxalloc.objective.task_system_time`, :func:`jaxalloc.objective.system_time`)
at the budgets the load test sends. Outside a model's stability region its prediction
is +inf (unstable), never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..model import Problem


def _finite_or_inf(x) -> float:
    v = float(x)
    return v if math.isfinite(v) else math.inf


def predict(problem: Problem, budgets: Sequence[float], rate: float, prob: Sequence[float] | None = None,
            server=None) -> dict:
    """Mean system times predicted at arrival rate `rate` and `budgets`.

    **Arguments:** `problem`; `budgets` (ℓ, one per task); `rate` (λ); `prob`: task
    shares (default the problem's π); `server`: the model (default the problem's own).

    **Returns:** ``{"tasks": [E[T_k] ...], "overall": E[T], "stable": bool}`` in seconds;
    +inf where the queue is unstable at `rate`.
    """
    import jax.numpy as jnp

    from ..objective import system_time, task_system_time

    changes = {"arrival_rate": jnp.asarray(rate, jnp.result_type(problem.arrival_rate))}
    if prob is not None:
        changes["prob"] = jnp.asarray(prob, jnp.result_type(problem.prob))
    if server is not None:
        changes["server"] = server
    point = problem.replace(**changes)
    ell = jnp.asarray(budgets, jnp.result_type(problem.t0))
    tasks = [_finite_or_inf(x) for x in np.asarray(task_system_time(point, ell))]
    overall = _finite_or_inf(system_time(point, ell))
    stable = math.isfinite(overall) and all(math.isfinite(t) for t in tasks)
    if not stable:
        tasks, overall = [math.inf] * len(tasks), math.inf
    return {"tasks": tasks, "overall": overall, "stable": stable}


def predictions(problem: Problem, budgets: Sequence[float], rate: float, prob: Sequence[float] | None = None) -> dict:
    """:func:`predict` for the problem's server (``"server"``) and for one FIFO server (``"fifo"``)."""
    from ..servers import default_server

    fifo = default_server(np.asarray(problem.t0).dtype)
    return {"server": predict(problem, budgets, rate, prob),
            "fifo": predict(problem, budgets, rate, prob, server=fifo)}


def relative_error(measured: float | None, predicted: float) -> float | None:
    """(measured − predicted) / predicted; None (n/a) without a measurement or a finite, positive prediction."""
    if measured is None or not math.isfinite(predicted) or predicted <= 0:
        return None
    return (measured - predicted) / predicted
