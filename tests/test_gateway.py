"""`jaxalloc gateway`: the load estimate, the re-solve and its hysteresis, budgets applied to
requests, and every failure path, against a scripted upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import socket

import numpy as np
import pytest

pytest.importorskip("aiohttp")

from aiohttp import ClientSession, TCPConnector, web

import jaxalloc as ja
from jaxalloc.cli import main
from jaxalloc.gateway.app import Gateway
from jaxalloc.gateway.enforce import RequestError, apply_cap, field_path, task_of
from jaxalloc.gateway.estimate import Load, WindowEstimator
from jaxalloc.gateway.policy import Policy

NAMES = ("GSM8K", "ARC-Challenge")


def two_tasks(**changes):
    options = {"arrival_rate": 0.5, "alpha": 30.0, "max_tokens": 4096.0, "A": [0.7, 0.4], "b": [3e-3, 0.015],
               "D": [0.2, 0.5], "t0": [0.15, 0.06], "c": [0.0014, 0.0012], "prob": [0.25, 0.75], "names": list(NAMES)}
    options.update(changes)
    return ja.make_problem(**options)


@pytest.fixture(scope="module")
def policy():
    return Policy(two_tasks())  # compiled once for the module


# ------------------------------------------------------------------ the estimate


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_window_estimate_of_a_poisson_stream():
    clock, rng = Clock(), np.random.default_rng(0)
    est = WindowEstimator(NAMES, 60.0, 0.5, [0.25, 0.75], clock=clock)
    assert est.estimate().source == "profile"  # no time yet: the prior
    lam, pi = 4.0, np.array([0.3, 0.7])
    times = np.cumsum(rng.exponential(1 / lam, 2000))
    tasks = rng.choice(2, size=times.size, p=pi)
    for t, k in zip(times, tasks):
        clock.now = t
        est.record(int(k))
    load = est.estimate()
    inside = times > times[-1] - 60
    assert load.arrivals == int(inside.sum()) and load.span_s == 60.0 and load.source == "window"
    assert load.rate == pytest.approx(inside.sum() / 60)
    # λ̂ of a Poisson count: within three standard errors (√n / T) of the true rate
    assert abs(load.rate - lam) <= 3 * load.stderr
    assert load.prob == pytest.approx(tuple(np.bincount(tasks[inside], minlength=2) / inside.sum()))
    # the window forgets: 61 s later without arrivals, λ̂ = 0 and π the prior
    clock.now = times[-1] + 61
    quiet = est.estimate()
    assert quiet.rate == 0 and quiet.arrivals == 0 and quiet.prob == (0.25, 0.75)


def test_window_estimate_early_and_bad_input():
    clock = Clock()
    est = WindowEstimator(NAMES, 30.0, 0.5, [0.25, 0.75], clock=clock)
    clock.now = 1.0
    est.record(0)
    assert est.estimate().source == "profile"  # 1 s < min_span = 3 s
    clock.now = 4.0
    est.record(1)
    load = est.estimate()
    assert load.rate == pytest.approx(2 / 4.0) and load.prob == (0.5, 0.5)
    # restarted (the gateway starts listening): the arrivals are gone and the prior stands again
    clock.now = 100.0
    est.restart()
    assert est.estimate().source == "profile"
    clock.now = 103.0
    est.record(0)
    assert est.estimate() == (pytest.approx(1 / 3.0), (1.0, 0.0), 1, 3.0, pytest.approx(1 / 3.0), "window")
    with pytest.raises(ValueError, match="--window = 0"):
        WindowEstimator(NAMES, 0, 0.5, [0.25, 0.75])
    with pytest.raises(ValueError, match="task index 2"):
        est.record(2)


# ------------------------------------------------------------------ the re-solve


def _reference(problem, rate, prob):
    """The integer optimum by the public solve, independently of the gateway's jitted step."""
    point = problem.replace(arrival_rate=rate, prob=np.asarray(prob))
    solution = ja.solve(point)
    return tuple(int(x) for x in np.asarray(ja.integer_budgets(point, solution.budgets)))


def test_resolve_matches_solve_and_budgets_shrink_with_load(policy):
    problem = two_tasks()
    light, heavy = Load(0.3, (0.25, 0.75), 30, 60.0, 0.1, "window"), Load(2.5, (0.25, 0.75), 150, 60.0, 0.2, "window")
    d = policy.update(light)
    assert d.proposed == _reference(problem, 0.3, (0.25, 0.75)) and d.budgets == d.proposed
    d2 = policy.update(heavy)
    assert d2.proposed == _reference(problem, 2.5, (0.25, 0.75))
    assert d2.changed and all(h <= lo for h, lo in zip(d2.budgets, d.budgets)) and d2.budgets != d.budgets
    # E[T_k] at the estimate, for the budgets in force: the model's own
    point = problem.replace(arrival_rate=2.5)
    expected = np.asarray(ja.task_system_time(point, np.asarray(d2.budgets, float)))
    assert d2.predicted_s == pytest.approx(tuple(expected), rel=1e-10)
    assert d2.status == "converged" and not d2.alarm and 0 < d2.seconds < 1


@pytest.mark.parametrize("kind, params", [("batching", {"max_batch": 8, "batch_slowdown": 0.1, "admission": 0.01}),
                                           ("priority", {"order": "ARC-Challenge,GSM8K"}),
                                           ("fifo", {"servers": 3})])
def test_resolve_for_every_server_kind(kind, params):
    """The gateway's compiled step against the public solve of the same point, for each server kind."""
    from jaxalloc.servers import make_server

    problem = two_tasks(server=make_server(kind, NAMES, **params))
    policy = Policy(problem)
    for rate in (0.5, 4.0):
        d = policy.update(Load(rate, (0.4, 0.6), 100, 60.0, 0.1, "window"))
        assert d.proposed == _reference(problem, rate, (0.4, 0.6)) and d.status == "converged"
        point = problem.replace(arrival_rate=rate, prob=np.asarray([0.4, 0.6]))
        expected = np.asarray(ja.task_system_time(point, np.asarray(d.budgets, float)))
        assert d.predicted_s == pytest.approx(tuple(expected), rel=1e-10)


def test_budgets_do_not_flap_on_a_small_change(policy):
    policy.update(Load(1.0, (0.25, 0.75), 60, 60.0, 0.1, "window"))
    before = policy.budgets
    d = policy.update(Load(1.0 * (1 + 1e-4), (0.25, 0.75), 60, 60.0, 0.1, "window"))
    assert d.budgets == before and not d.changed and (d.proposed == before or d.gain <= policy.min_gain)


def test_overload_sets_budgets_to_zero_and_raises_the_alarm(policy):
    problem = two_tasks()
    capacity = 1 / float(np.dot([0.25, 0.75], [0.15, 0.06]))  # λ at which even ℓ = 0 is unstable
    d = policy.update(Load(1.5 * capacity, (0.25, 0.75), 600, 60.0, 1.0, "window"))
    assert d.alarm and d.budgets == (0, 0) and d.status == "unstable_queue"
    assert all(math.isinf(t) for t in d.predicted_s)
    d = policy.update(Load(0.3, (0.25, 0.75), 30, 60.0, 0.1, "window"))  # and back
    assert not d.alarm and d.budgets == _reference(problem, 0.3, (0.25, 0.75))


def test_pinned_budgets_stay_whatever_the_load():
    problem = two_tasks()
    capacity = 1 / float(np.dot([0.25, 0.75], [0.15, 0.06]))
    pinned = Policy(problem, budgets=(7, 3), pinned=True)
    for load in (Load(2.5, (0.25, 0.75), 150, 60.0, 0.2, "window"),
                 Load(1.5 * capacity, (0.25, 0.75), 600, 60.0, 1.0, "window")):
        d = pinned.update(load)
        assert d.budgets == (7, 3) and not d.changed
        assert d.proposed == (_reference(problem, load.rate, load.prob) if not d.alarm else (0, 0))
    assert d.alarm  # the alarm still rings at an overload
    with pytest.raises(ValueError, match="give the budgets to pin"):
        Policy(problem, pinned=True)


# ------------------------------------------------------------------ applying a budget


def test_task_and_cap():
    field = field_path("metadata.task")
    assert task_of({"X-Task": "ARC-Challenge"}, {}, NAMES, header="X-Task", field=field, default=None) == 1
    assert task_of({}, {"metadata": {"task": "GSM8K"}}, NAMES, header="X-Task", field=field, default=None) == 0
    assert task_of({}, {}, NAMES, header="X-Task", field=field, default="ARC-Challenge") == 1
    with pytest.raises(RequestError, match="unknown task 'AIME'.*GSM8K, ARC-Challenge"):
        task_of({"X-Task": "AIME"}, {}, NAMES, header="X-Task", field=field, default=None)
    with pytest.raises(RequestError, match="no task"):
        task_of({}, {}, NAMES, header="X-Task", field=field, default=None)
    body = {"messages": [], "max_tokens": 100}
    assert apply_cap(body, 300, 512) == {"messages": [], "max_tokens": 100, "thinking_token_budget": 300}
    assert apply_cap({"max_completion_tokens": 5000}, 300, 512)["max_completion_tokens"] == 812
    assert apply_cap({}, 0, 16) == {"thinking_token_budget": 0, "max_tokens": 16}
    assert body == {"messages": [], "max_tokens": 100}  # not changed in place
    with pytest.raises(RequestError, match="max_tokens = 0"):
        apply_cap({"max_tokens": 0}, 10)
    with pytest.raises(ValueError, match="--task-field"):
        field_path("metadata..task")


# ------------------------------------------------------------------ the proxy, against a scripted upstream


class Upstream:
    """An OpenAI-like upstream: answers with the body it received (``{"received": body}``), or
    streams `chunks` SSE events 20 ms apart; ``hang`` never answers; records disconnects."""

    def __init__(self, chunks=5, hang=False):
        self.chunks, self.hang, self.bodies, self.cancelled = chunks, hang, [], 0

    async def completions(self, request):
        body = await request.json()
        self.bodies.append(body)
        if self.hang:
            await asyncio.sleep(3600)
        if not body.get("stream"):
            return web.json_response({"received": body, "choices": [{"text": "ok"}]})
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        try:
            for i in range(self.chunks):
                await out.write(f"data: {json.dumps({'i': i})}\n\n".encode())
                await asyncio.sleep(0.02)
            await out.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        return out

    async def models(self, request):
        return web.json_response({"object": "list", "data": [{"id": "stub"}]})

    async def start(self):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro):
    return asyncio.run(coro)


async def _with(gateway_kw, body, *, upstream=None):
    upstream = await (upstream or Upstream()).start()
    gw = Gateway(two_tasks(), upstream.url, **gateway_kw)
    runner = await gw.serve("127.0.0.1", 0)
    try:
        return await body(gw, upstream, f"http://127.0.0.1:{gw.port}")
    finally:
        await runner.cleanup()
        await upstream.runner.cleanup()


def test_budgets_are_applied_and_streams_pass_through():
    async def body(gw, up, url):
        async with ClientSession() as s:
            r = await s.post(url + "/v1/chat/completions", headers={"X-Task": "GSM8K"},
                             json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50})
            answer = await r.json()
            assert r.status == 200 and answer["received"]["thinking_token_budget"] == gw.decision.budgets[0]
            assert answer["received"]["max_tokens"] == min(50, gw.decision.budgets[0] + 512)
            assert (r.headers["X-Jaxalloc-Task"], r.headers["X-Jaxalloc-Budget"]) == ("GSM8K", str(gw.decision.budgets[0]))
            r = await s.post(url + "/v1/completions", json={"prompt": "x", "stream": True,
                                                            "metadata": {"task": "ARC-Challenge"}})
            text = await r.text()
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            assert text == "".join(f"data: {json.dumps({'i': i})}\n\n" for i in range(5)) + "data: [DONE]\n\n"
            assert up.bodies[-1]["thinking_token_budget"] == gw.decision.budgets[1]
            assert r.headers["X-Jaxalloc-Budget"] == str(gw.decision.budgets[1])
            models = await (await s.get(url + "/v1/models")).json()
            assert models["data"][0]["id"] == "stub"
            budgets = await (await s.get(url + "/budgets")).json()
            assert budgets["budgets"] == dict(zip(NAMES, gw.decision.budgets)) and budgets["enforce"] == "cap"
            metrics = await (await s.get(url + "/metrics")).text()
        assert f'jaxalloc_gateway_budget_tokens{{task="GSM8K"}} {float(gw.decision.budgets[0])}' in metrics
        assert 'jaxalloc_gateway_requests_total{code="200",task="GSM8K"} 1.0' in metrics
        assert "jaxalloc_gateway_resolve_seconds_count 1.0" in metrics
        return True

    assert run(_with({}, body))


def test_bad_requests_get_openai_errors():
    async def body(gw, up, url):
        async with ClientSession() as s:
            r = await s.post(url + "/v1/chat/completions", data=b"{not json", headers={"X-Task": "GSM8K"})
            assert r.status == 400 and "malformed JSON" in (await r.json())["error"]["message"]
            r = await s.post(url + "/v1/chat/completions", json={"messages": []}, headers={"X-Task": "AIME"})
            err = (await r.json())["error"]
            assert r.status == 400 and "unknown task 'AIME'" in err["message"] and err["code"] == 400
            r = await s.post(url + "/v1/chat/completions", data=b"x" * 2048, headers={"X-Task": "GSM8K"})
            assert r.status == 413 and "--max-body = 1024" in (await r.json())["error"]["message"]
            r = await s.get(url + "/v1/embeddings")
            assert r.status == 404 and (await r.json())["error"]["type"] == "invalid_request_error"
        return True

    assert run(_with({"max_body": 1024}, body))


def test_upstream_down_is_502_and_slow_is_504():
    async def down():
        gw = Gateway(two_tasks(), f"http://127.0.0.1:{_closed_port()}")
        runner = await gw.serve("127.0.0.1", 0)
        try:
            async with ClientSession() as s:
                r = await s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json={"prompt": "x"},
                                 headers={"X-Task": "GSM8K"})
                return r.status, (await r.json())["error"]
        finally:
            await runner.cleanup()

    status, err = run(down())
    assert status == 502 and err["type"] == "upstream_error" and "127.0.0.1" in err["message"]

    async def slow(gw, up, url):
        async with ClientSession() as s:
            r = await s.post(url + "/v1/completions", json={"prompt": "x"}, headers={"X-Task": "GSM8K"})
            return r.status, (await r.json())["error"]["message"]

    status, message = run(_with({"timeout": 0.3}, slow, upstream=Upstream(hang=True)))
    assert status == 504 and "--timeout = 0.3" in message


def test_a_client_that_leaves_cancels_the_upstream_request():
    async def body(gw, up, url):
        async with ClientSession() as s:
            r = await s.post(url + "/v1/completions", json={"prompt": "x", "stream": True},
                             headers={"X-Task": "GSM8K"})
            await r.content.readline()  # the first event, then hang up
            r.close()
        for _ in range(100):
            if up.cancelled:
                break
            await asyncio.sleep(0.02)
        return up.cancelled

    assert run(_with({}, body, upstream=Upstream(chunks=200))) == 1


class HoldingUpstream(Upstream):
    """Holds every request until `release` is set; `peak`: the most it held at once."""

    def __init__(self):
        super().__init__()
        self.release, self.held, self.peak = asyncio.Event(), 0, 0

    async def completions(self, request):
        await request.read()
        self.held += 1
        self.peak = max(self.peak, self.held)
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        return web.json_response({"choices": [{"text": "ok"}]})


def test_it_holds_600_requests_in_flight():
    """The issue asks for at least 500: 600 requests wait upstream at once, then all complete."""
    n = 600

    async def body(gw, up, url):
        async with ClientSession(connector=TCPConnector(limit=0)) as s:
            async def one(i):
                async with s.post(url + "/v1/completions", json={"prompt": str(i)}, headers={"X-Task": "GSM8K"}) as r:
                    return r.status

            tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
            for _ in range(600):  # up to 60 s for all of them to reach the upstream
                if up.held == n:
                    break
                await asyncio.sleep(0.1)
            up.release.set()
            return up.peak, await asyncio.gather(*tasks)

    up = HoldingUpstream()
    peak, statuses = run(_with({}, body, upstream=up))
    assert peak == n and statuses == [200] * n


# ------------------------------------------------------------------ --enforce exact


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tiny_qwen3 import make_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    make_tokenizer(str(folder))
    return str(folder)


class TokenUpstream(Upstream):
    """/v1/completions on token-id prompts, as vLLM with return_token_ids: a thinking request
    (min_tokens > 0) streams exactly min_tokens ids (id 100, or `short` fewer); an answer streams
    three ids (101) and the end id `eos` with finish_reason "stop"."""

    def __init__(self, eos, short=0):
        super().__init__()
        self.eos, self.short = eos, short

    async def completions(self, request):
        body = await request.json()
        self.bodies.append(body)
        n = body["min_tokens"] - self.short if body["min_tokens"] > 0 else 3
        ids = [100] * n if body["min_tokens"] > 0 else [101] * n + [self.eos]
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i, t in enumerate(ids):
            last = i == len(ids) - 1
            finish = ("length" if body["min_tokens"] > 0 else "stop") if last else None
            choice = {"index": 0, "text": f"<{t}>", "token_ids": [t], "finish_reason": finish}
            await out.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        await out.write(b"data: [DONE]\n\n")
        return out


def test_exact_budgets_in_two_phases(tokenizer_dir):
    from jaxalloc.calibrate.chat import load_tokenizer, prompt_ids, thinking_format

    tok = load_tokenizer(tokenizer_dir)
    fmt = thinking_format(tok, tokenizer_dir)

    async def body(gw, up, url):
        budget = gw.decision.budgets[0]
        assert budget > 3
        async with ClientSession() as s:
            r = await s.post(url + "/v1/chat/completions", headers={"X-Task": "GSM8K"},
                             json={"model": "m", "messages": [{"role": "user", "content": "What is 2 + 2?"}],
                                   "temperature": 0.5, "seed": 7})
            answer = await r.json()
            assert r.status == 200, answer
            usage = answer["usage"]
            assert usage["completion_tokens_details"]["reasoning_tokens"] == budget
            assert usage["completion_tokens"] == budget + 4
            message = answer["choices"][0]["message"]
            assert message["reasoning"] == "<100>" * budget and message["content"] == "<101>" * 3 + f"<{fmt.stop_ids[0]}>"
            think, ans = up.bodies[-2:]
            prompt = prompt_ids(tok, fmt, "What is 2 + 2?")  # the same template, independently
            assert think["prompt"] == prompt and think["max_tokens"] == think["min_tokens"] == budget
            assert think["stop_token_ids"] == [fmt.think_end_id] and think["temperature"] == 0.5 and think["seed"] == 7
            assert ans["prompt"] == prompt + [100] * budget + list(fmt.close_ids) and ans["max_tokens"] == 512
            # a client cap of 3 tokens: two of thinking, one of answer
            r = await s.post(url + "/v1/chat/completions", headers={"X-Task": "GSM8K"},
                             json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True})
            events = [json.loads(line[5:]) for line in (await r.text()).splitlines()
                      if line.startswith("data:") and "[DONE]" not in line]
            deltas = [e["choices"][0]["delta"] for e in events]
            assert [d for d in deltas if "reasoning" in d] == [{"reasoning": "<100>"}] * 2
            assert up.bodies[-1]["max_tokens"] == 1 and events[-1]["choices"][0]["finish_reason"] == "stop"
        return True

    async def short(gw, up, url):
        async with ClientSession() as s:
            r = await s.post(url + "/v1/completions", headers={"X-Task": "GSM8K"}, json={"prompt": "x"})
            return r.status, (await r.json())["error"]["message"]

    from jaxalloc.calibrate.chat import load_tokenizer as _load

    eos = thinking_format(_load(tokenizer_dir), tokenizer_dir).stop_ids[0]
    kw = {"enforce": "exact", "tokenizer_dir": tokenizer_dir}
    assert run(_with(kw, body, upstream=TokenUpstream(eos)))
    status, message = run(_with(kw, short, upstream=TokenUpstream(eos, short=1)))
    assert status == 502 and "min_tokens" in message
    status, message = run(_with(kw, short, upstream=GarbledUpstream()))
    assert status == 502 and "malformed stream chunk '{\"choices\": ['" in message


class GarbledUpstream(Upstream):
    """Streams one chunk that is not JSON."""

    async def completions(self, request):
        await request.read()
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b'data: {"choices": [\n\n')
        return out


def test_sse_lines():
    from jaxalloc.calibrate.openai_backend import DONE, sse_chunk

    assert sse_chunk(b'data: {"choices": []}\n') == {"choices": []}
    assert sse_chunk(b"data: [DONE]\n") == DONE and sse_chunk(b": keep-alive\n") is None and sse_chunk(b"\n") is None
    with pytest.raises(ValueError, match="malformed stream chunk 'nope'"):
        sse_chunk(b"data: nope\n")


@pytest.mark.parametrize("argv, message", [
    (["--listen", "nowhere"], "--listen = 'nowhere'"),
    (["--default-task", "AIME"], "--default-task = 'AIME'"),
    (["--enforce", "exact"], "--enforce = 'exact': give the served model's tokenizer"),
    (["--resolve-every", "0"], "--resolve-every = 0"),
    (["--pin", "GSM8K=4"], "--pin: no budget for ARC-Challenge"),
    (["--pin", "GSM8K=4,AIME=3"], "--pin: unknown task 'AIME'"),
    (["--pin", "GSM8K=-4,ARC-Challenge=1"], "--pin = 'GSM8K=-4,ARC-Challenge=1': expected TASK=N pairs"),
])
def test_cli_bad_input(tmp_path, capsys, argv, message):
    profile = tmp_path / "p.toml"
    profile.write_text('name = "p"\narrival_rate = 0.5\nalpha = 30.0\nmax_tokens = 4096.0\n' + "".join(
        f'\n[[tasks]]\nname = "{n}"\nprob = {p}\nA = 0.7\nb = 0.003\nD = 0.2\nt0 = 0.1\nc = 0.001\n'
        for n, p in zip(NAMES, (0.25, 0.75))))
    assert main(["gateway", str(profile), "--upstream", "http://127.0.0.1:9", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cli_without_the_gateway_extra(monkeypatch, capsys):
    """Without aiohttp: one error line naming the extra to install, exit status 2."""
    import builtins
    import sys

    real = builtins.__import__

    def without_aiohttp(name, *args, **kwargs):
        if name.split(".")[0] == "aiohttp":
            raise ImportError("No module named 'aiohttp'")
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "jaxalloc.gateway.app")
    monkeypatch.setattr(builtins, "__import__", without_aiohttp)
    assert main(["gateway", "--upstream", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'jaxalloc[gateway]'" in err[0] and err[0].startswith("error: ")
