"""Benchmark ``jaxalloc gateway``: the latency it adds per request, and its re-solve time.

Target (issue 17): at 50 and 500 requests/s against a trivial local upstream, the gateway adds
at most 5 ms at p99 to a request's latency, against calling the upstream directly. The re-solve
must take at most 5 ms.

Three processes, so that none shares another's interpreter: the **upstream** (``--serve``, an
aiohttp stub that answers a chat completion at once: a small JSON body, or a stream of 8
server-sent events), the **gateway** (``jaxalloc gateway`` on the bundled paper profile, cap
enforcement, ``--default-task GSM8K``), and the **load** here (an aiohttp client, Poisson
arrivals, open loop). At each rate the same schedule runs straight to the upstream and
through the gateway, in turn, `--repeats` times; the added latency is the gateway run's
percentile minus the direct run's (each latency: send to the end of the answer). Medians over
the repeats are reported, with the re-solve time from ``/budgets`` and ``/metrics``.

Run:  python bench/bench_gateway.py [--quick] [--rates 50,500] [--requests 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

TARGET_ADDED_P99, TARGET_RESOLVE = 5e-3, 5e-3
ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "stub", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}]}).encode()


def serve(port: int) -> None:
    """The trivial upstream (runs in its own process)."""
    from aiohttp import web

    async def completions(request):
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=ANSWER, content_type="application/json")
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(8):
            await out.write(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')
        await out.write(b"data: [DONE]\n\n")
        return out

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "stub"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(url: str, timeout: float = 180.0) -> None:
    from aiohttp import ClientSession

    deadline = time.monotonic() + timeout
    async with ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: not ready after {timeout:g} s")
            await asyncio.sleep(0.2)


async def load(url: str, rate: float, n: int, seed: int, stream: bool) -> np.ndarray:
    """Latencies (s) of `n` Poisson arrivals at `rate` to `url`; NaN for a failed request."""
    from aiohttp import ClientSession, TCPConnector

    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1 / rate, n))
    out = np.full(n, np.nan)
    body = json.dumps({"model": "stub", "messages": [{"role": "user", "content": "2+2?"}], "stream": stream,
                       "metadata": {"task": "GSM8K"}}).encode()
    headers = {"Content-Type": "application/json"}
    async with ClientSession(connector=TCPConnector(limit=0)) as s:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + times[i] - loop.time()))
            sent = time.perf_counter()
            try:
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        out[i] = time.perf_counter() - sent
            except OSError:
                pass

        await asyncio.gather(*(one(i) for i in range(n)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    ap.add_argument("--rates", default="50,500", help="arrival rates, requests/s")
    ap.add_argument("--requests", type=int, help="requests per run (default 3000; 600 with --quick)")
    ap.add_argument("--repeats", type=int, help="runs per rate and route (default 3; 1 with --quick)")
    ap.add_argument("--stream", action="store_true", help="streamed answers (8 events) instead of whole ones")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    n = args.requests or (600 if args.quick else 3000)
    repeats = args.repeats or (1 if args.quick else 3)
    rates = [float(r) for r in args.rates.split(",")]
    up_port, gw_port = free_port(), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--serve", str(up_port)], env=env)]
    procs.append(subprocess.Popen([sys.executable, "-c", "from jaxalloc.cli import entry; entry()", "gateway", "--upstream",
                                   f"http://127.0.0.1:{up_port}", "--listen", f"127.0.0.1:{gw_port}",
                                   "--default-task", "GSM8K", "--resolve-every", "1"], env=env,
                                  stderr=subprocess.DEVNULL))
    rows = []
    try:
        direct, gateway = f"http://127.0.0.1:{up_port}/v1/chat/completions", f"http://127.0.0.1:{gw_port}"
        asyncio.run(wait_ready(direct.replace("/chat/completions", "/models")))
        asyncio.run(wait_ready(gateway + "/budgets"))
        for rate in rates:
            added = {"p50": [], "p99": []}
            failed = 0
            for r in range(repeats):
                a = asyncio.run(load(direct, rate, n, seed=r, stream=args.stream))
                b = asyncio.run(load(gateway + "/v1/chat/completions", rate, n, seed=r, stream=args.stream))
                failed += int(np.isnan(a).sum() + np.isnan(b).sum())
                for q in (50, 99):
                    added[f"p{q}"].append(float(np.nanpercentile(b, q) - np.nanpercentile(a, q)))
                print(f"rate {rate:g}/s run {r}: direct p50 {1e3 * np.nanpercentile(a, 50):.2f} ms, p99 "
                      f"{1e3 * np.nanpercentile(a, 99):.2f} ms; gateway p50 {1e3 * np.nanpercentile(b, 50):.2f} ms, "
                      f"p99 {1e3 * np.nanpercentile(b, 99):.2f} ms", flush=True)
            rows.append({"rate": rate, "requests": n, "repeats": repeats, "failed": failed,
                         "added_p50_ms": 1e3 * statistics.median(added["p50"]),
                         "added_p99_ms": 1e3 * statistics.median(added["p99"])})
        budgets = asyncio.run(_get_json(gateway + "/budgets"))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    print(f"\njaxalloc gateway overhead ({'streamed' if args.stream else 'whole'} answers, medians of {repeats} runs "
          f"of {n} requests; target: added p99 <= {1e3 * TARGET_ADDED_P99:g} ms)")
    for row in rows:
        verdict = "met" if row["added_p99_ms"] <= 1e3 * TARGET_ADDED_P99 else "MISSED"
        print(f"  {row['rate']:>6g}/s  added p50 {row['added_p50_ms']:6.2f} ms  p99 {row['added_p99_ms']:6.2f} ms  "
              f"failed {row['failed']}  ({verdict})")
    print(f"  last re-solve in the gateway, under that load: {budgets['resolve_ms']:.3f} ms")
    resolve = resolve_times(50 if args.quick else 200)
    for kind, seconds in resolve.items():
        verdict = "met" if seconds <= TARGET_RESOLVE else "MISSED"
        print(f"  re-solve, paper profile, {kind} server: median {1e3 * seconds:.3f} ms "
              f"(target <= {1e3 * TARGET_RESOLVE:g} ms: {verdict})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "resolve_ms": budgets["resolve_ms"],
                       "resolve_median_ms": {k: 1e3 * v for k, v in resolve.items()}}, f, indent=1)


def resolve_times(repeats: int = 200) -> dict[str, float]:
    """Median seconds of one re-solve (:meth:`Policy.update`, compiled) on the paper's profile
    with its single FIFO server, with a batching server (B = 64) and with a priority server,
    at loads drawn around the profile's λ."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from jaxalloc.gateway.estimate import Load
    from jaxalloc.gateway.policy import Policy
    from jaxalloc.model import paper_profile
    from jaxalloc.servers import make_server

    base = paper_profile()
    names = tuple(str(n) for n in base.names)
    servers = {"fifo": None, "batching": make_server("batching", names, max_batch=64, batch_slowdown=0.05),
               "priority": make_server("priority", names)}
    rng = np.random.default_rng(0)
    out = {}
    for kind, server in servers.items():
        problem = base if server is None else base.replace(server=server)
        policy = Policy(problem)
        prob = tuple(float(p) for p in np.asarray(base.prob))
        times = []
        for _ in range(repeats):
            rate = float(base.arrival_rate) * rng.uniform(0.5, 1.5)
            times.append(policy.update(Load(rate, prob, 100, 60.0, 0.1, "window")).seconds)
        out[kind] = statistics.median(times)
    return out


async def _get_json(url: str) -> dict:
    from aiohttp import ClientSession

    async with ClientSession() as s, s.get(url) as r:
        return await r.json()


if __name__ == "__main__":
    main()
