"""The gateway: an OpenAI-compatible reverse proxy that applies the budgets and follows the load.

Routes:

- ``POST /v1/chat/completions``, ``POST /v1/completions``: the task is read off the request
  (:func:`~jaxalloc.gateway.enforce.task_of`), counted as an arrival, its budget applied
  (:mod:`~jaxalloc.gateway.enforce`), and the request sent upstream; the answer comes back as
  it arrives (a stream chunk by chunk, or whole), with headers ``X-Jaxalloc-Task`` and
  ``X-Jaxalloc-Budget`` saying what it was given.
- ``GET /v1/models``: passed through.
- ``GET /metrics``: Prometheus (:mod:`~jaxalloc.gateway.metrics`); ``GET /budgets``: JSON.
- anything else: 404 in the OpenAI error shape.

Every ``--resolve-every`` seconds the load on the window is estimated
(:mod:`~jaxalloc.gateway.estimate`) and the problem re-solved (:mod:`~jaxalloc.gateway.policy`).

**Failures** never crash the gateway; each is an OpenAI-shaped error ``{"error": {"message",
"type", "param", "code"}}``: upstream unreachable 502, upstream too slow (``--timeout``) 504,
malformed JSON or an unknown task 400, a body over ``--max-body`` 413. A client that goes away
mid-answer cancels the upstream request (the handler is cancelled, and with it the upstream
connection, which vLLM sees as an abort).

**Why aiohttp.** One well-kept library is both the server and the upstream client, streams
in both directions without buffering, cancels a handler when its client disconnects
(``handler_cancellation``), and needs no separate ASGI server process; starlette with uvicorn
and httpx would be three packages for the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, TCPConnector, web

from ..model import Problem
from .enforce import DEFAULT_ANSWER_TOKENS, ENFORCE, RequestError, UpstreamError, apply_cap, field_path, task_of
from .estimate import WindowEstimator
from .metrics import Metrics
from .policy import Decision, Policy

LOG = logging.getLogger("jaxalloc.gateway")
PROXIED = ("/v1/chat/completions", "/v1/completions")
DEFAULT_MAX_BODY = 4 * 2**20


def error_body(status: int, message: str, param: str | None = None, kind: str | None = None) -> dict:
    """The OpenAI error shape."""
    kind = kind or ("invalid_request_error" if status < 500 else "upstream_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response(error_body(status, message, param), status=status)


def event(name: str, **fields: Any) -> None:
    """A structured log line: `name` and its fields (JSON with ``--json-logs``, see :mod:`.cli`)."""
    LOG.info(name, extra={"fields": fields})


class Gateway:
    """The gateway's state and handlers (see the module docstring).

    **Arguments:** `problem`: the profile; `upstream`: ``http://HOST:PORT`` of the server;
    `enforce`: ``"cap"`` or ``"exact"``; `window`, `resolve_every`: seconds; `task_header`,
    `task_field` (dotted), `default_task`; `answer_tokens`: room left for the answer (cap);
    `min_gain`: J gain that moves the budgets; `max_body`: bytes; `timeout`: seconds an upstream
    answer may take; `tokenizer_dir`: the served model's tokenizer (``exact`` needs it);
    `pin`: budgets (one whole number per task) applied whatever the load (``--pin``; the
    re-solves still run for the metrics and the alarm); `clock`: monotonic seconds (tests).
    """

    def __init__(self, problem: Problem, upstream: str, *, enforce: str = "cap", window: float = 60.0,
                 resolve_every: float = 5.0, task_header: str = "X-Task", task_field: str = "metadata.task",
                 default_task: str | None = None, answer_tokens: int = DEFAULT_ANSWER_TOKENS,
                 min_gain: float = 1e-3, max_body: int = DEFAULT_MAX_BODY, timeout: float = 600.0,
                 tokenizer_dir: str | None = None, pin=None, clock: Callable[[], float] = time.monotonic):
        self.names = tuple(str(n) for n in problem.names) or tuple(f"task{k}" for k in range(problem.num_tasks))
        if enforce not in ENFORCE:
            raise ValueError(f"--enforce = {enforce!r}: expected one of {', '.join(ENFORCE)}")
        self.exact = None
        if enforce == "exact":
            if tokenizer_dir is None:
                raise ValueError("--enforce = 'exact': give the served model's tokenizer with --model TOKENIZER_DIR")
            from ..calibrate.qwen3 import ModelError
            from .exact import Exact

            try:
                self.exact = Exact(tokenizer_dir)
            except ModelError as err:
                raise ValueError(f"--model: {err}") from None
        if default_task is not None and default_task not in self.names:
            raise ValueError(f"--default-task = {default_task!r}: not a task of the profile ({', '.join(self.names)})")
        for flag, value in (("--resolve-every", resolve_every), ("--timeout", timeout)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{flag} = {value!r}: must be a positive number of seconds")
        if not (isinstance(answer_tokens, int) and answer_tokens >= 1):
            raise ValueError(f"--answer-tokens = {answer_tokens!r}: must be a whole number >= 1")
        if not (isinstance(max_body, int) and max_body >= 1):
            raise ValueError(f"--max-body = {max_body!r}: must be a whole number of bytes >= 1")
        self.problem, self.upstream = problem, upstream.rstrip("/").removesuffix("/v1")
        self.enforce, self.resolve_every, self.timeout = enforce, float(resolve_every), float(timeout)
        self.task_header, self.task_field, self.default_task = task_header, field_path(task_field), default_task
        self.answer_tokens, self.max_body = answer_tokens, max_body
        self.metrics = Metrics(self.names)
        # compiles the re-solve once (seconds)
        self.policy = Policy(problem, min_gain=min_gain, budgets=pin, pinned=pin is not None)
        # after the compile: its seconds are no window without arrivals (λ̂ = 0); restarted at serving
        self.estimator = WindowEstimator(self.names, window, float(problem.arrival_rate),
                                         [float(p) for p in problem.prob], clock=clock)
        self.decision: Decision = self.resolve()
        self.session: ClientSession | None = None
        self._resolver: asyncio.Task | None = None

    # ------------------------------------------------------------------ the budgets

    def resolve(self) -> Decision:
        """Estimate the load, re-solve, record and log the decision."""
        load = self.estimator.estimate()
        decision = self.policy.update(load)
        self.decision = decision
        self.metrics.decided(decision)
        if decision.changed or decision.alarm:
            event("budgets" if not decision.alarm else "alarm", budgets=dict(zip(self.names, decision.budgets)),
                  rate=decision.rate, prob=dict(zip(self.names, decision.prob)), gain=decision.gain,
                  status=decision.status, resolve_ms=1e3 * decision.seconds, source=load.source)
        return decision

    async def _resolve_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resolve_every)
            try:  # in a worker thread: the requests do not wait for the re-solve (XLA releases the GIL)
                await asyncio.to_thread(self.resolve)
            except Exception as err:  # noqa: BLE001 -- a failed re-solve keeps the budgets in force
                event("resolve_failed", error=f"{type(err).__name__}: {err}")

    def budgets_json(self) -> dict:
        """What ``GET /budgets`` returns: the last decision, by task."""
        d = self.decision
        return {
            "budgets": dict(zip(self.names, d.budgets)), "proposed": dict(zip(self.names, d.proposed)),
            "arrival_rate": d.rate, "prob": dict(zip(self.names, d.prob)),
            "predicted_latency_s": {n: (t if math.isfinite(t) else None) for n, t in zip(self.names, d.predicted_s)},
            "objective": d.objective if math.isfinite(d.objective) else None,
            "gain": d.gain if math.isfinite(d.gain) else None, "status": d.status, "alarm": d.alarm,
            "resolve_ms": 1e3 * d.seconds, "enforce": self.enforce, "window_s": self.estimator.window,
            "resolve_every_s": self.resolve_every,
        }

    # ------------------------------------------------------------------ handlers

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body over --max-body = {self.max_body} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            return _error(400, f"malformed JSON: {err}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        try:
            k = task_of(request.headers, body, self.names, header=self.task_header, field=self.task_field,
                        default=self.default_task)
            self.estimator.record(k)
            budget = self.decision.budgets[k]
            sent = apply_cap(body, budget, self.answer_tokens)
        except RequestError as err:
            return _error(err.status, str(err), err.param)
        task = self.names[k]
        applied = {"X-Jaxalloc-Task": task, "X-Jaxalloc-Budget": str(budget)}  # what this request was given
        if self.exact is not None:
            response = await self._exact(request, body, budget, task, applied)
        else:
            response = await self._forward(request, sent, task, applied)
        self.metrics.requests.labels(task, str(response.status)).inc()
        if response.status < 400:
            self.metrics.latency.labels(task).observe(time.perf_counter() - start)
        return response

    async def _guarded(self, exchange, url: str, task: str | None, path: str) -> web.StreamResponse:
        """Await `exchange` (one request to the upstream), turning its failures into OpenAI-shaped
        errors, each counted by kind; a client gone mid-answer cancels it (and the upstream request)."""
        try:
            return await exchange
        except RequestError as err:
            return _error(err.status, str(err), err.param)
        except asyncio.CancelledError:
            self.metrics.upstream.labels("disconnect").inc()
            event("client_gone", task=task, path=path)
            raise
        except (asyncio.TimeoutError, TimeoutError):
            self.metrics.upstream.labels("timeout").inc()
            return _error(504, f"{url}: no answer within --timeout = {self.timeout:g} s")
        except UpstreamError as err:
            self.metrics.upstream.labels("protocol").inc()
            return _error(502, str(err))
        except (ClientConnectionError, OSError) as err:
            self.metrics.upstream.labels("connect").inc()
            return _error(502, f"{url}: {type(err).__name__}: {err}")

    async def _forward(self, request: web.Request, body: dict, task: str, applied: dict) -> web.StreamResponse:
        assert self.session is not None
        url = self.upstream + request.path
        headers = {"Content-Type": "application/json"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]

        async def exchange() -> web.StreamResponse:
            async with self.session.post(url, data=json.dumps(body).encode(), headers=headers) as up:
                if not body.get("stream"):
                    payload = await up.read()
                    return web.Response(body=payload, status=up.status, headers=applied,
                                        content_type=up.content_type or "application/json")
                out = web.StreamResponse(status=up.status, headers={
                    "Content-Type": up.headers.get("Content-Type", "text/event-stream"), "Cache-Control": "no-cache",
                    **applied})
                await out.prepare(request)
                async for chunk in up.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out

        return await self._guarded(exchange(), url, task, request.path)

    async def _exact(self, request: web.Request, body: dict, budget: int, task: str,
                     applied: dict) -> web.StreamResponse:
        assert self.session is not None and self.exact is not None
        exchange = self.exact.respond(request, self.session, self.upstream, body, budget, self.answer_tokens, applied)
        return await self._guarded(exchange, f"{self.upstream}/v1/completions", task, request.path)

    async def models(self, request: web.Request) -> web.Response:
        assert self.session is not None
        url = self.upstream + "/v1/models"

        async def exchange() -> web.Response:
            async with self.session.get(url) as up:
                return web.Response(body=await up.read(), status=up.status,
                                    content_type=up.content_type or "application/json")

        return await self._guarded(exchange(), url, None, request.path)

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.text(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def budgets(self, request: web.Request) -> web.Response:
        return web.json_response(self.budgets_json())

    async def not_found(self, request: web.Request) -> web.Response:
        return _error(404, f"{request.method} {request.path}: not served by the gateway "
                           f"(it serves {', '.join(PROXIED)}, /v1/models, /metrics, /budgets)")

    # ------------------------------------------------------------------ life cycle

    def app(self) -> web.Application:
        """The aiohttp application (its startup opens the upstream session and starts re-solving)."""
        app = web.Application(client_max_size=self.max_body)
        for path in PROXIED:
            app.router.add_post(path, self.proxy)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/budgets", self.budgets)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app) -> None:
        timeout = ClientTimeout(total=None, sock_connect=min(10.0, self.timeout), sock_read=self.timeout)
        self.session = ClientSession(connector=TCPConnector(limit=0), timeout=timeout, auto_decompress=False)
        self.estimator.restart()  # the window opens with the gateway
        self._resolver = asyncio.get_running_loop().create_task(self._resolve_loop())

    async def _cleanup(self, app) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
        if self.session is not None:
            await self.session.close()

    async def serve(self, host: str, port: int) -> web.AppRunner:
        """Start listening on `host`:`port` (0: a free port; the bound one is ``self.port``)."""
        runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self.port = int(runner.addresses[0][1])  # the port bound (for port 0: a free one)
        return runner
