"""`jaxalloc loadtest`: load a running vLLM/SGLang server and check the queueing models against it.

Queries arrive by a Poisson process at each rate (or as a trace replays them), each with
its task's exact thinking budget (:mod:`jaxalloc.loadtest.run`); the measured system
times are set beside what the profile's server model and the paper's single FIFO server
predict (:mod:`jaxalloc.loadtest.predict`, :mod:`jaxalloc.loadtest.summary`).

- :mod:`~jaxalloc.loadtest.arrivals`: Poisson schedules and trace replay.
- :mod:`~jaxalloc.loadtest.client`: the asyncio HTTP/1.1 streaming client (standard library only).
- :mod:`~jaxalloc.loadtest.run`: :func:`loadtest`, :class:`Record`, :class:`LoadtestResult`.
- :mod:`~jaxalloc.loadtest.predict`: predictions from jaxalloc's formulas.
- :mod:`~jaxalloc.loadtest.summary`: per-rate summaries, the table and the CSV of records.
- :mod:`~jaxalloc.loadtest.plot`: the figure; :mod:`~jaxalloc.loadtest.cli`: the command.
"""

from .arrivals import LoadtestError, Schedule, poisson_schedule, read_trace
from .predict import predict, predictions, relative_error
from .run import QUESTIONS, STATUSES, LoadtestResult, Record, loadtest, question

__all__ = [
    "QUESTIONS",
    "STATUSES",
    "LoadtestError",
    "LoadtestResult",
    "Record",
    "Schedule",
    "loadtest",
    "poisson_schedule",
    "predict",
    "predictions",
    "question",
    "read_trace",
    "relative_error",
]
