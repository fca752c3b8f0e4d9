"""The gateway's budgets: re-solved at the estimated load, moved only when J gains enough.

At each re-solve the profile's problem is taken at the estimated (λ̂, π̂) and solved (eq. 9,
any server kind: :func:`jaxalloc.solve_point`), its optimum made whole
(:func:`jaxalloc.integer_budgets`), and both the proposed budgets ℓ' and the budgets in force
ℓ are scored at the estimate with the one objective J (eq. 7). The budgets move to ℓ' only
when

    J(ℓ') − J(ℓ) > `min_gain`     (or ℓ is unstable at the estimate, J(ℓ) = −∞),

so that estimation noise (λ̂ is known to about 1/√n) does not make them flap. When even ℓ = 0
is unstable at the estimate (status ``unstable_queue``), the budgets go to 0 and the decision
carries an alarm: requests still pass, as fast as the server can take them.

One function does all of that under ``jax.jit``, compiled once at start (the problem's
shapes never change, only the values of λ and π): a re-solve then takes about a
millisecond, timed in every :class:`Decision` and in ``bench/bench_gateway.py``.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..model import Problem
from ..objective import objective, task_system_time
from ..solution import Status
from ..solve import solve_point
from ..solvers.integer import integer_budgets
from .estimate import Load


class Decision(NamedTuple):
    """One re-solve. `budgets`: in force after it; `proposed`: the integer optimum at the
    estimate; `changed`; `objective`: J of `budgets` at the estimate; `gain`: J(proposed) −
    J(budgets before) at the estimate (+inf when those were unstable there); `status`: the
    solve's :class:`~jaxalloc.Status` label; `alarm`: even ℓ = 0 is unstable at the estimate;
    `predicted_s`: E[T_k] of `budgets` at the estimate (+inf where unstable); `rate`, `prob`: the
    estimate used; `seconds`: wall time of the re-solve."""

    budgets: tuple[int, ...]
    proposed: tuple[int, ...]
    changed: bool
    objective: float
    gain: float
    status: str
    alarm: bool
    predicted_s: tuple[float, ...]
    rate: float
    prob: tuple[float, ...]
    seconds: float


def _evaluate(problem: Problem, current):
    """The jitted step: the integer optimum at `problem`'s (λ, π) and J, E[T_k] of both budget sets."""
    solution = solve_point(problem)
    chosen = problem.replace(server=solution.server) if solution.server is not None else problem
    proposed = integer_budgets(chosen, solution.budgets)
    proposed = jnp.where(solution.status == Status.UNSTABLE_QUEUE, jnp.zeros_like(proposed), proposed)
    current = current.astype(proposed.dtype)
    return (proposed, objective(chosen, proposed), objective(chosen, current), solution.status,
            task_system_time(chosen, proposed), task_system_time(chosen, current))


class Policy:
    """Budgets that follow the load (see the module docstring).

    **Arguments:** `problem`: the profile; `min_gain`: the J gain that moves the budgets (≥ 0,
    in J's units: accuracy minus α times seconds); `budgets`: the starting budgets (default:
    the integer optimum at the profile's own λ and π); `pinned`: keep `budgets` whatever the load
    (an operator's fixed budgets, or the baseline of an A/B comparison: the re-solves still run,
    so the metrics show what the optimum would be and the alarm still rings). Compiles and runs
    the step once.
    """

    def __init__(self, problem: Problem, *, min_gain: float = 1e-3, budgets=None, pinned: bool = False):
        if not (isinstance(min_gain, (int, float)) and math.isfinite(min_gain) and min_gain >= 0):
            raise ValueError(f"--min-gain = {min_gain!r}: must be a number >= 0")
        self.problem = problem
        self.min_gain = float(min_gain)
        self.dtype = jnp.result_type(problem.t0)
        self._step = jax.jit(_evaluate)
        start = self._run(problem, jnp.zeros(problem.num_tasks, self.dtype))
        if budgets is None:
            self.budgets = tuple(int(x) for x in np.asarray(start[0]))
        else:
            if len(budgets) != problem.num_tasks or any(int(b) != b or b < 0 for b in budgets):
                raise ValueError(f"budgets = {list(budgets)}: expected {problem.num_tasks} whole numbers >= 0")
            self.budgets = tuple(int(b) for b in budgets)
        if pinned and budgets is None:
            raise ValueError("pinned budgets: give the budgets to pin")
        self.pinned = bool(pinned)

    def _run(self, point: Problem, current):
        out = self._step(point, current)
        return jax.block_until_ready(out)

    def point(self, load: Load) -> Problem:
        """The profile's problem at the estimate (same shapes and dtypes: no recompilation)."""
        return self.problem.replace(arrival_rate=jnp.asarray(load.rate, self.dtype),
                                    prob=jnp.asarray(load.prob, self.dtype))

    def update(self, load: Load) -> Decision:
        """Re-solve at `load` and apply the rule of the module docstring; returns the :class:`Decision`."""
        tic = time.perf_counter()
        current = jnp.asarray(self.budgets, self.dtype)
        proposed, j_new, j_cur, status, t_new, t_cur = self._run(self.point(load), current)
        seconds = time.perf_counter() - tic
        status = Status(int(status))
        proposed = tuple(int(x) for x in np.asarray(proposed))
        j_new, j_cur = float(j_new), float(j_cur)
        alarm = status == Status.UNSTABLE_QUEUE
        gain = math.inf if not math.isfinite(j_cur) else j_new - j_cur
        move = not self.pinned and proposed != self.budgets and (alarm or gain > self.min_gain)
        if move:
            self.budgets = proposed
        times = np.asarray(t_new if move else t_cur, np.float64)
        predicted = tuple(float(t) if math.isfinite(t) and t > 0 else math.inf for t in times)
        return Decision(self.budgets, proposed, move, j_new if move else j_cur, gain, status.label, alarm,
                        predicted, float(load.rate), tuple(float(p) for p in load.prob), seconds)
