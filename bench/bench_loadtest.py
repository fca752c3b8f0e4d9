"""Benchmark the load generator of ``jaxalloc loadtest``: does it keep to its schedule?

The generator must not be the bottleneck (issue 16): at 500 requests/s against a trivial
local upstream, the send times must keep to the Poisson schedule within 2 ms at p99.

The upstream is a stub written for this benchmark (``--serve``, started here in a
subprocess so that it does not share the generator's interpreter): an asyncio
OpenAI-compatible server that streams server-sent events as vLLM does (HTTP/1.1
keep-alive, ``Transfer-Encoding: chunked``, one token id per chunk with ``token_ids``,
``data: [DONE]``) and honours ``min_tokens`` as an exact thinking count. Every
``--delay`` seconds one decode step writes the next token of every running stream, as a
continuous-batching server does; it has no queue and no batch cap (every request runs at
once), so the send lag measured is the generator's.

Each query is what ``jaxalloc loadtest`` sends: a thinking request of ``--budget``
tokens, then an answer request (``--answer-tokens`` tokens and an end-of-sequence one),
on the bundled paper profile (six tasks, every budget the same). The tokenizer is the
tiny one of the tests (``tests/tiny_qwen3.py``) unless ``--model DIR`` names another.

Reported: send lag (actual send − scheduled arrival) p50, p99 and max, the requests
that failed, and the generator's CPU time per second of load. The script always exits 0.

Run:  python bench/bench_loadtest.py [--quick] [--rate 500] [--requests 5000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATE, TARGET_P99 = 500.0, 2e-3


# ------------------------------------------------------------------ the stub upstream (runs in a subprocess)


def _chunk(token: int, finish: bytes | None) -> bytes:
    data = (b'data: {"id":"cmpl-1","object":"text_completion","model":"stub","choices":[{"index":0,'
            b'"text":"x","token_ids":[%d],"logprobs":null,"finish_reason":%s}]}\n\n' % (token, finish or b"null"))
    return b"%x\r\n%s\r\n" % (len(data), data)


_DONE = b"%x\r\n%s\r\n0\r\n\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n")


class Stub:
    """The upstream: every `delay` seconds one decode step writes the next token of every running
    stream, as a continuous-batching server does (one timer for all streams, however many)."""

    def __init__(self, delay: float, eos: int):
        self.delay, self.eos = delay, eos
        self.running: list[list] = []  # [writer, token ids left, finish reason, future set when done]
        self.wake = asyncio.Event()

    async def step(self):
        while True:
            if not self.running:
                self.wake.clear()
                await self.wake.wait()
            await asyncio.sleep(self.delay)
            still = []
            for item in self.running:
                writer, ids, finish, done = item
                token = ids.pop(0)
                writer.write(_chunk(token, finish if not ids else None) + (b"" if ids else _DONE))
                if ids:
                    still.append(item)
                elif not done.done():
                    done.set_result(None)
            self.running = still

    async def handle(self, reader, writer):
        """Serve requests on one connection until the client closes it (HTTP/1.1 keep-alive, as uvicorn)."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split()[0]
                length = next((int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length")), 0)
                body = json.loads(await reader.readexactly(length)) if length else {}
                if method == "GET":
                    data = json.dumps({"object": "list", "data": [{"id": "stub"}]}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(data), data))
                    continue
                think = int(body.get("min_tokens") or 0)
                ids = [100] * think if think else [60] * max(0, int(body.get("max_tokens", 1)) - 1) + [self.eos]
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                finish = b'"length"' if think else b'"stop"'
                if self.delay <= 0:
                    writer.write(b"".join(_chunk(t, finish if k == len(ids) - 1 else None) for k, t in enumerate(ids))
                                 + _DONE)
                else:
                    done = asyncio.get_running_loop().create_future()
                    self.running.append([writer, ids, finish, done])
                    self.wake.set()
                    await done
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def serve(port_file: str, delay: float, eos: int) -> None:
    """Run the stub until killed; write its port to `port_file` once it listens."""

    async def main():
        stub = Stub(delay, eos)
        stepper = asyncio.get_running_loop().create_task(stub.step())
        server = await asyncio.start_server(stub.handle, "127.0.0.1", 0, backlog=4096)
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        async with server:
            await server.serve_forever()
        stepper.cancel()

    asyncio.run(main())


# ------------------------------------------------------------------ the benchmark


def _tokenizer(folder: str | None) -> str:
    if folder:
        return folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_qwen3 import make_tokenizer

    folder = tempfile.mkdtemp(prefix="jaxalloc-bench-tok-")
    make_tokenizer(folder)
    return folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (< 30 s): 1000 requests")
    ap.add_argument("--rate", type=float, default=TARGET_RATE, help="requests/s (default 500)")
    ap.add_argument("--requests", type=int, help="requests (default 5000; 1000 with --quick)")
    ap.add_argument("--budget", type=int, default=8, help="thinking tokens per query (default 8)")
    ap.add_argument("--answer-tokens", type=int, default=4, help="answer cap (default 4)")
    ap.add_argument("--delay", type=float, default=1e-3, help="stub: seconds per token (default 0.001)")
    ap.add_argument("--model", help="tokenizer folder (default: the tests' tiny tokenizer, made on the spot)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--eos", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        serve(a.serve, a.delay, a.eos)
        return 0

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import jaxalloc
    from jaxalloc.calibrate.chat import load_tokenizer, thinking_format

    requests = a.requests or (1000 if a.quick else 5000)
    folder = _tokenizer(a.model)
    eos = thinking_format(load_tokenizer(folder), folder).stop_ids[0]
    problem = jaxalloc.paper_profile()
    port_file = Path(tempfile.mkdtemp(prefix="jaxalloc-bench-stub-")) / "port"
    stub = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file), "--delay", str(a.delay),
                             "--eos", str(eos)])
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        wall0 = time.perf_counter()
        result = jaxalloc.loadtest(problem, base_url=url, tokenizer_dir=folder, rates=[a.rate], requests=requests,
                                   budgets=[a.budget] * problem.num_tasks, answer_tokens=a.answer_tokens,
                                   seed=a.seed, timeout=30.0)
        wall = time.perf_counter() - wall0
    finally:
        stub.terminate()
        stub.wait(10)
    lags = np.asarray([r.lag_s for r in result.records if r.lag_s is not None])
    s = result.summary[0]
    span = max(r.scheduled_s for r in result.records)
    out = {
        "rate": a.rate, "requests": requests, "sent": int(lags.size), "ok": s["ok"], "failed": s["failed"],
        "failures": s["failures"], "lag_p50_ms": 1e3 * float(np.percentile(lags, 50)),
        "lag_p99_ms": 1e3 * float(np.percentile(lags, 99)), "lag_max_ms": 1e3 * float(lags.max()),
        "lag_min_ms": 1e3 * float(lags.min()), "schedule_s": span, "wall_s": wall,
        "cpu_s_per_s_of_load": s["generator_cpu_s"] / s["run_s"], "load_average": os.getloadavg()[0], "mean_system_time_s": s["overall"]["mean_s"],
        "budget": a.budget, "answer_tokens": a.answer_tokens, "delay_s": a.delay, "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    ok = out["lag_p99_ms"] <= 1e3 * TARGET_P99
    print(f"jaxalloc loadtest generator: {requests} requests at {a.rate:g}/s (Poisson, seed {a.seed}) against a "
          f"stub upstream ({a.budget} thinking + {a.answer_tokens} answer tokens, {1e3 * a.delay:g} ms per token)")
    print(f"  send lag: p50 {out['lag_p50_ms']:.3f} ms, p99 {out['lag_p99_ms']:.3f} ms, max {out['lag_max_ms']:.3f} ms "
          f"(target p99 <= {1e3 * TARGET_P99:g} ms: {'met' if ok else 'NOT met'})")
    print(f"  {s['ok']} ok, {s['failed']} failed {s['failures'] or ''}, mean system time "
          f"{1e3 * (s['overall']['mean_s'] or float('nan')):.2f} ms; generator CPU "
          f"{out['cpu_s_per_s_of_load']:.2f} s per second of the run ({os.cpu_count()} CPUs, load average "
          f"{out['load_average']:.1f} at the end)")
    if a.quick:
        print("(--quick: 1000 requests; the p99 is indicative only)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
