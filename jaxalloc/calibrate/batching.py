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
- **B** (:func:`fit_batching`): `max_batch` if given; else, when some level ran
  fewer than it sent, the most seen running at once (``observed``); else the
  largest level, a lower bound (``lower bound``).
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
MIN_LEVELS = 3  # distinct m ≤ B for a finite interval (a line has 2 parameters)


class Round(NamedTuple):
    """One round at one concurrency: `concurrency` m, `repeat`, the steady-state step time of
    each stream (`step_s`, seconds per token), the most streams seen running at once
    (`running`), tokens per stream, the round's wall time and each stream's time to its
    first token (`first_token_s`: the prefills of requests that arrive together queue)."""

    concurrency: int
    repeat: int
    step_s: tuple[float, ...]
    running: int
    tokens: int
    wall_s: float
    first_token_s: tuple[float, ...] = ()

    @property
    def median_s(self) -> float:
        """τ(m) of this round: the median step time over its streams."""
        return float(statistics.median(self.step_s))


def prompt_ids(n: int) -> list[int]:
    """The fixed prompt of `n` token ids, all below 240: ordinary ids of any vocabulary with the
    256 byte tokens of a byte-level BPE (a small test model's included)."""
    return [33 + (37 * i) % 200 for i in range(n)]


def step_time(arrivals: Sequence[tuple[float, int]], tokens: int, skip: int) -> float:
    """Steady-state seconds per token of one stream.

    **Arguments:** `arrivals`: ``(time, cumulative tokens)`` per chunk
    (:attr:`Stream.arrivals <jaxalloc.calibrate.openai_backend.Stream>`); `tokens`: the
    stream's length; `skip`: tokens left out at each end.

    **Returns:** the median of Δtime/Δtokens over spans of half the steady state: the
    window holds the chunks with `skip` to `tokens − skip` tokens; from each chunk in its
    first half, the span runs to the first chunk at least half the window's tokens
    later. Each chunk ends or starts at most two spans, so a chunk read late (the client
    descheduled for a moment, then reading a burst) moves few of them and not the
    median, while a slow server step inside the window lies in most spans. Without
    stalls it is the window's Δtime/Δtokens. Raises :class:`CalibrationError` when fewer
    than two chunks fall in the window.
    """
    inside = [(t, n) for t, n in arrivals if skip <= n <= tokens - skip]
    if len(inside) < 2 or inside[-1][1] <= inside[0][1]:
        raise CalibrationError(f"--skip = {skip}: fewer than two chunks between tokens {skip} and {tokens - skip} "
                               f"(the server sent {len(arrivals)} chunks for {tokens} tokens): lower --skip or "
                               "raise --tokens")
    t = np.array([a for a, _ in inside])
    n = np.array([b for _, b in inside], float)
    half = (n[-1] - n[0]) / 2
    ends = np.searchsorted(n, n + half)  # first chunk at least `half` tokens on
    starts = np.nonzero(ends < len(n))[0]
    if half < 1 or len(starts) == 0:
        return float((t[-1] - t[0]) / (n[-1] - n[0]))
    j = ends[starts]
    return float(np.median((t[j] - t[starts]) / (n[j] - n[starts])))


def running_at_once(spans: Sequence[tuple[float, float]]) -> int:
    """The most streams decoding together: at each stream's midpoint, how many
    ``(first chunk, last chunk)`` spans contain it (see the module docstring)."""
    return max((sum(1 for a, b in spans if a <= (s + e) / 2 <= b) for s, e in spans), default=0)


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

    collecting = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection would stall every thread and shift the clock readings of all streams at once
    try:
        start = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(m)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        if collecting:
            gc.enable()
    if errors:
        raise CalibrationError(errors[0])
    for s in streams:
        if len(s.token_ids) != tokens:
            raise CalibrationError(f"--tokens = {tokens}: the server returned {len(s.token_ids)} tokens for "
                                   f"max_tokens = min_tokens = {tokens}: does it support min_tokens (as vLLM)?")
    steps = tuple(step_time(s.arrivals, tokens, skip) for s in streams)
    running = running_at_once([(s.arrivals[0][0], s.arrivals[-1][0]) for s in streams])
    return Round(m, repeat, steps, running, tokens, wall, tuple(float(s.ttft_s) for s in streams))


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


@functools.lru_cache(maxsize=64)
def _t_quantile(q: float, df: int) -> float:
    from .fit import t_quantile

    return t_quantile(q, df)


@dataclass(frozen=True)
class BatchingFit:
    """τ(m) = τ1 (1 + β(m − 1)) fitted to measured step times, and B.

    `levels` (distinct m), `step_s` (τ(m): median over all streams of all rounds at m),
    `running` (most seen at once, over the rounds); `max_batch` B and `max_batch_source`
    (``"given"``, ``"observed"`` or ``"lower bound"``), `observed_batch` (most seen
    running at any level); `fitted_levels` (the m ≤ B used), `points` (their number);
    `step1_s` τ1 and `slope_s` τ1β with standard errors; `beta` β, `se_beta`, `ci_beta`
    at `level`; `df` (points − 2); `rounds` (all of them).
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

    def fitted(self, m) -> np.ndarray:
        """The fitted step time (s) at concurrency m: τ1 (1 + β(min(m, B) − 1))."""
        return self.step1_s + self.slope_s * (np.minimum(np.asarray(m, float), self.max_batch) - 1)

    @property
    def batch_slowdown(self) -> float:
        """β as written to the profile: the estimate, or 0 where noise made it negative."""
        return max(self.beta, 0.0)

    def server_table(self) -> dict[str, Any]:
        """The profile's ``[server]`` table: kind ``"batching"``, `max_batch`, `batch_slowdown`."""
        return {"kind": "batching", "max_batch": int(self.max_batch), "batch_slowdown": float(self.batch_slowdown)}

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
                        "running": r.running, "tokens": r.tokens, "wall_s": r.wall_s,
                        "first_token_ms": [1e3 * s for s in r.first_token_s]} for r in self.rounds],
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


def fit_batching(rounds: Sequence[Round], *, max_batch: int | None = None, level: float = 0.95) -> BatchingFit:
    """Fit β and B to measured rounds (see the module docstring).

    **Arguments:** `rounds`: :func:`measure_batching`'s result (or :class:`Round` s made
    otherwise); `max_batch`: B, overriding what the rounds show; `level`: of the interval.

    **Returns:** the :class:`BatchingFit`. Raises :class:`CalibrationError` with fewer
    than three distinct concurrencies m ≤ B, or a fitted τ1 ≤ 0.
    """
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
    elif any(r < m for m, r in zip(levels, running)):
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
    )


def server_text(fit: BatchingFit, source: str = "") -> str:
    """The ``[server]`` table of `fit` as TOML (through :func:`jaxalloc.servers.server_to_toml`), under a
    comment recording the fit; `source` names the server measured."""
    from ..servers import make_server, server_to_toml

    table = fit.server_table()
    server = make_server("batching", (), max_batch=table["max_batch"], batch_slowdown=table["batch_slowdown"])
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
    head.append("# Add this table to a profile, or: jaxalloc calibrate fit MEASUREMENTS --server THIS_FILE")
    lines = server_to_toml(server, ())
    return "\n".join(head + [ln for ln in lines if ln]) + "\n"


def _batch_words(fit: BatchingFit) -> str:
    over = [m for m, r in zip(fit.levels, fit.running) if r < m]
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
    return "\n".join(lines)


def plot_batching(fit: BatchingFit, path, title: str = "") -> None:
    """Step time against concurrency: each round's median (markers; over its streams, their
    range as bars), the fitted line τ1(1 + β(min(m, B) − 1)) and B. `path`: a file name or
    a binary file object (PNG)."""
    from ..plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
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
