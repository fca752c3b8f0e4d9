"""When queries arrive and of which task: a Poisson schedule, or the replay of a trace.

A schedule is a list of arrival times (seconds from the start of its run, sorted) and
the task of each arrival (an index into the profile's tasks). A Poisson schedule at rate
λ draws inter-arrival gaps Exp(λ) and tasks by π, from a seeded NumPy generator; a trace
is a CSV file with a header and the columns ``arrival_s,task`` (a task by its name in the
profile), replayed as written (rows sorted by time, ties kept in file order).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class LoadtestError(ValueError):
    """Bad input to the load test; the message names the field and the value."""


@dataclass(frozen=True)
class Schedule:
    """Arrivals of one run.

    **Fields:** `times` (seconds from the start, non-decreasing); `tasks` (task index per
    arrival); `rate` (λ used for the predictions: the Poisson rate, or the trace's mean
    rate); `prob` (task shares used for the predictions: π, or the trace's own mix);
    `source` (``"poisson"`` or ``"trace"``).
    """

    times: np.ndarray
    tasks: np.ndarray
    rate: float
    prob: np.ndarray
    source: str


def check_rate(rate) -> float:
    """A finite rate > 0, or :class:`LoadtestError` naming ``--rate`` and the value."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise LoadtestError(f"--rate = {rate!r}: must be a positive number (requests/s)") from None
    if not (math.isfinite(value) and value > 0):
        raise LoadtestError(f"--rate = {rate!r}: must be a positive number (requests/s)")
    return value


def poisson_schedule(rate: float, requests: int, prob: Sequence[float], seed: int | Sequence[int] = 0) -> Schedule:
    """`requests` Poisson arrivals at `rate` per second, tasks drawn by `prob`.

    **Arguments:** `rate` (λ > 0); `requests` (N ≥ 1); `prob` (π, sums to 1); `seed`
    (an int or a sequence of ints for ``numpy.random.default_rng``).

    **Returns:** a :class:`Schedule`; the first arrival is one gap after the start.
    """
    rate = check_rate(rate)
    rng = np.random.default_rng(seed)
    prob = np.asarray(prob, dtype=np.float64)
    times = np.cumsum(rng.exponential(1.0 / rate, size=int(requests)))
    tasks = rng.choice(prob.size, size=int(requests), p=prob / prob.sum())
    return Schedule(times, tasks.astype(np.int64), rate, prob, "poisson")


def read_trace(path: str, names: Sequence[str], requests: int | None = None) -> Schedule:
    """Arrivals replayed from a CSV trace with columns ``arrival_s,task``.

    **Arguments:** `path`; `names`: the profile's task names; `requests`: use only
    the first this many rows (after sorting by time), all when None.

    **Returns:** a :class:`Schedule` whose `rate` is the trace's mean rate (arrivals
    over the time of the last one) and `prob` its task mix. Raises
    :class:`LoadtestError` naming ``--trace``, the row and the value: a missing
    file or column, a time that is not a finite number ≥ 0, a task not in `names`.
    """
    where = f"--trace = {str(path)!r}"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            fields = rows[0].keys() if rows else []
    except OSError as err:
        raise LoadtestError(f"{where}: cannot read it ({err.strerror or err})") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise LoadtestError(f"{where}: not a CSV file ({err})") from None
    if not rows:
        raise LoadtestError(f"{where}: no rows (expected a header arrival_s,task and one row per arrival)")
    missing = [c for c in ("arrival_s", "task") if c not in fields]
    if missing:
        raise LoadtestError(f"{where}: no column {missing[0]!r} (expected arrival_s,task)")
    index = {n: k for k, n in enumerate(names)}
    times, tasks = [], []
    for line, row in enumerate(rows, start=2):
        text, task = (row.get("arrival_s") or "").strip(), (row.get("task") or "").strip()
        try:
            t = float(text)
        except ValueError:
            t = math.nan
        if not (math.isfinite(t) and t >= 0):
            raise LoadtestError(f"{where}: line {line}: arrival_s = {text!r}: must be a finite number >= 0")
        if task not in index:
            raise LoadtestError(f"{where}: line {line}: unknown task {task!r} (tasks: {', '.join(names)})")
        times.append(t)
        tasks.append(index[task])
    order = np.argsort(np.asarray(times), kind="stable")
    times, tasks = np.asarray(times)[order], np.asarray(tasks, dtype=np.int64)[order]
    if requests is not None:
        times, tasks = times[: int(requests)], tasks[: int(requests)]
    span = float(times[-1])
    rate = len(times) / span if span > 0 else math.inf
    prob = np.bincount(tasks, minlength=len(names)) / len(tasks)
    return Schedule(times, tasks, rate, prob, "trace")
