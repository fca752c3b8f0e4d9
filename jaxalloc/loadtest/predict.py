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


def scale_times(problem: Problem, scale: float) -> Problem:
    """The profile on a host `scale` times slower: every time of the model multiplied by it,
    the service times t0 and c (eq. 1) and a server's `admission` h where it has one; the
    batching shape (β, B) and the task mix are ratios and stay. Used by ``loadtest
    --baseline``, which measures `scale` just before a load (:func:`time_scale`)."""
    import equinox as eqx
    import jax.numpy as jnp

    server = problem.server
    if hasattr(server, "admission"):
        server = eqx.tree_at(lambda s: s.admission, server, jnp.asarray(server.admission) * scale)
    return problem.replace(t0=jnp.asarray(problem.t0) * scale, c=jnp.asarray(problem.c) * scale, server=server)


def time_scale(problem: Problem, budgets: Sequence[float], measured: Sequence[float]) -> float:
    """How many times slower the host is now than the profile says: Σ π_k m_k / Σ π_k t_k(ℓ_k),
    with m_k the mean service time of task k measured one query at a time (nothing else
    running, so the measured time is the service time of eq. 1) and t_k = t0_k + c_k ℓ_k."""
    pi = np.asarray(problem.prob, np.float64)
    return float(np.dot(pi, np.asarray(measured, np.float64)) / np.dot(pi, profile_service(problem, budgets)))


def profile_service(problem: Problem, budgets: Sequence[float]) -> np.ndarray:
    """The profile's t_k(ℓ_k) (eq. 1, :func:`jaxalloc.objective.service_times`) as float64 NumPy."""
    import jax.numpy as jnp

    from ..objective import service_times

    return np.asarray(service_times(problem, jnp.asarray(budgets, jnp.result_type(problem.t0))), np.float64)


def relative_error(measured: float | None, predicted: float) -> float | None:
    """(measured − predicted) / predicted; None (n/a) without a measurement or a finite, positive prediction."""
    if measured is None or not math.isfinite(predicted) or predicted <= 0:
        return None
    return (measured - predicted) / predicted
