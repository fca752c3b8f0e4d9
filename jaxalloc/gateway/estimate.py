"""The load the gateway sees: arrival rate λ̂ and task mix π̂ on a sliding window.

Every request that reaches the gateway is an arrival of its task. Over the last `window`
seconds (or since the start, if that is shorter) with n_k arrivals of task k and n in all,

    λ̂ = n / T,    π̂_k = n_k / n,    T = min(window, time since the start),

the maximum-likelihood estimates of a Poisson process's rate and of a multinomial mix. The
relative standard error of λ̂ is 1/√n (a Poisson count), so a window of 60 s at 2 queries/s
knows λ to about 9%; `stderr` reports it (√max(n, 1) / T: with no arrival, the rate that one
would have given). Within the first `min_span` seconds (where n / T would jump from one
arrival to the next) the profile's own λ and π stand; a window without arrivals is λ̂ = 0
with the profile's π. Time comes from a monotonic clock, injectable for tests.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Load(NamedTuple):
    """An estimate: `rate` λ̂ (queries/s), `prob` π̂ (one share per task, summing to 1), `arrivals`
    n in the window, `span_s` T, `stderr` the standard error of λ̂ (√n / T; None for the prior),
    `source` ``"window"`` or ``"profile"`` (the prior: too little time yet)."""

    rate: float
    prob: tuple[float, ...]
    arrivals: int
    span_s: float
    stderr: float | None
    source: str


class WindowEstimator:
    """Arrivals per task on a sliding window (see the module docstring); thread-safe.

    **Arguments:** `names`: the tasks; `window`: seconds (> 0); `prior_rate`, `prior_prob`:
    λ and π until there is data (the profile's); `min_span`: seconds of data before the window
    is trusted (default: a tenth of the window, at most 5 s); `clock`: seconds, monotonic.
    """

    def __init__(self, names: Sequence[str], window: float, prior_rate: float, prior_prob: Sequence[float], *,
                 min_span: float | None = None, clock: Callable[[], float] = time.monotonic):
        if not (isinstance(window, (int, float)) and math.isfinite(window) and window > 0):
            raise ValueError(f"--window = {window!r}: must be a positive number of seconds")
        if len(prior_prob) != len(names):
            raise ValueError(f"prior_prob: {len(prior_prob)} shares for {len(names)} tasks")
        self.names = tuple(names)
        self.window = float(window)
        self.min_span = min(self.window / 10, 5.0) if min_span is None else float(min_span)
        self.prior = Load(float(prior_rate), tuple(float(p) for p in prior_prob), 0, 0.0, None, "profile")
        self.clock = clock
        self.start = clock()
        self._arrivals: deque[tuple[float, int]] = deque()
        self._counts = [0] * len(self.names)
        self._lock = threading.Lock()

    def restart(self, now: float | None = None) -> None:
        """Forget every arrival and start the window afresh (the gateway calls it when it starts
        listening, so the seconds spent compiling before are not read as seconds without load)."""
        with self._lock:
            self.start = self.clock() if now is None else now
            self._arrivals.clear()
            self._counts = [0] * len(self.names)

    def _drop(self, now: float) -> None:
        while self._arrivals and self._arrivals[0][0] <= now - self.window:
            _, k = self._arrivals.popleft()
            self._counts[k] -= 1

    def record(self, task: int, now: float | None = None) -> None:
        """One arrival of task index `task` (now, or at `now` on the estimator's clock)."""
        if not 0 <= task < len(self.names):
            raise ValueError(f"task index {task}: expected 0..{len(self.names) - 1}")
        now = self.clock() if now is None else now
        with self._lock:
            self._arrivals.append((now, task))
            self._counts[task] += 1
            self._drop(now)

    def estimate(self, now: float | None = None) -> Load:
        """λ̂ and π̂ now (the prior until `min_span` seconds have passed with an arrival)."""
        now = self.clock() if now is None else now
        with self._lock:
            self._drop(now)
            n, counts = len(self._arrivals), list(self._counts)
        span = min(self.window, now - self.start)
        if span < self.min_span:
            return self.prior
        prob = tuple(c / n for c in counts) if n else self.prior.prob  # no arrivals: λ̂ = 0, the mix unknown
        return Load(n / span, prob, n, span, math.sqrt(max(n, 1)) / span, "window")
