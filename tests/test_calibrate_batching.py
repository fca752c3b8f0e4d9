"""`jaxalloc calibrate batching` against an in-process emulator of a continuous-batching server.

The emulator (:class:`BatchingEmulator`) streams ``/v1/completions`` as vLLM does
(``data: {json}`` chunks with ``choices[0].token_ids``, then ``data: [DONE]``) from one
global stepping loop: at most B streams active, each step emits one token to every
active stream and lasts τ1(1 + β(m − 1)) for m active. Steps are timed against a
running deadline (not a sleep per step), so sleep overshoot does not accumulate: the
law holds exactly on average, and what the client sees differs from it only by the
jitter of chunk arrival times (thread scheduling on shared cores).

**Tolerance on β.** Each stream's step time is Δtime/Δtokens over 48 steps
(tokens 8–56 of 64) of 2–3.4 ms, ≥ 96 ms, with endpoint jitter ≲ 1 ms: ≲ 1% per
stream, less for the median over streams and three rounds (which also drops one
round spoiled by a starved machine). The slope τ1β = 0.2 ms per
extra request is read off τ(1) = 2 ms to τ(8) = 3.4 ms, so a 1% error at each end
moves β by about √2 · 0.03 ms / 7 / 2 ms ≈ 0.003. Asserting |β̂ − 0.1| ≤ 0.02 leaves a
factor of about 6 for a loaded machine; the interval must also cover 0.1.
"""

from __future__ import annotations

import json
import queue
import socket
import struct
import threading
import time
import zlib
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from jaxalloc.calibrate.batching import (
    Round,
    fit_batching,
    measure_batching,
    running_at_once,
    server_text,
    step_time,
)
from jaxalloc.calibrate.data import CalibrationError
from jaxalloc.calibrate.openai_backend import OpenAIBackend
from jaxalloc.cli import main

TAU1, BETA, B = 0.002, 0.1, 8
EXAMPLE = Path(__file__).resolve().parents[1] / "calibration" / "example_measurements.csv"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 resets connections when 16 clients connect at once

    def handle_error(self, request, client_address):  # a client that hung up mid-stream: not news
        pass


class BatchingEmulator:
    """A vLLM-like streaming server whose decode steps follow τ1(1 + β(m − 1)), at most `max_batch` active."""

    def __init__(self, step_s=TAU1, slowdown=BETA, max_batch=B, token_ids=True, model="emu"):
        self.step_s, self.slowdown, self.max_batch, self.token_ids = step_s, slowdown, max_batch, token_ids
        self.cond = threading.Condition()
        self.waiting: deque = deque()
        self.stop = False
        emu = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _json(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._json(200, {"object": "list", "data": [{"id": model, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                n = int(body["max_tokens"])
                tokens: queue.Queue = queue.Queue()
                with emu.cond:
                    emu.waiting.append([n, tokens])
                    emu.cond.notify()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for k in range(n):
                    tokens.get()
                    choice = {"index": 0, "text": "x", "finish_reason": "length" if k == n - 1 else None}
                    if emu.token_ids:
                        choice["token_ids"] = [100 + k % 50]
                    self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True),
                        threading.Thread(target=self._loop, daemon=True)]

    def _loop(self):
        active, deadline = [], None
        while True:
            with self.cond:
                while not self.stop and not active and not self.waiting:
                    self.cond.wait()
                    deadline = None
                if self.stop:
                    return
                while self.waiting and len(active) < self.max_batch:
                    active.append(self.waiting.popleft())
            now = time.perf_counter()
            deadline = (now if deadline is None else deadline) + self.step_s * (1 + self.slowdown * (len(active) - 1))
            time.sleep(max(0.0, deadline - now))
            for req in active:
                req[0] -= 1
                req[1].put(None)
            active = [req for req in active if req[0] > 0]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        with self.cond:
            self.stop = True
            self.cond.notify()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def emulator():
    with BatchingEmulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def rounds(emulator):
    backend = OpenAIBackend(emulator.url, None)
    return measure_batching(backend, (1, 2, 3, 4, 6, 8, 12), tokens=64, prompt_tokens=16, skip=8, repeats=3)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------- the pieces


def test_step_time_uses_the_steady_state_and_multi_token_chunks():
    # chunks of 1, then 3 tokens; a slow prefill and a slow end that the window leaves out
    arrivals = [(0.5, 1), (0.51, 2), (0.52, 5), (0.53, 8), (0.54, 11), (0.55, 14), (0.9, 15)]
    assert step_time(arrivals, tokens=15, skip=2) == pytest.approx((0.55 - 0.51) / 12)
    with pytest.raises(CalibrationError, match="--skip = 7"):
        step_time(arrivals, tokens=15, skip=7)


def test_running_at_once_counts_at_midpoints():
    assert running_at_once([(0, 10), (0.1, 10.2), (0.2, 9.9)]) == 3
    # two waves of two that touch at the edges (jitter): never three at once
    assert running_at_once([(0, 1), (0, 1.01), (1.0, 2), (1.005, 2)]) == 2


def _synthetic(levels, beta, noise, rng, repeats=1, tau1=0.002, cap=None):
    cap = cap or max(levels)
    return [Round(m, r, (tau1 * (1 + beta * (min(m, cap) - 1)) * np.exp(noise * rng.standard_normal()),),
                  min(m, cap), 64, 0.0) for r in range(repeats) for m in levels]


def test_fit_is_exact_without_noise_and_its_interval_covers():
    fit = fit_batching(_synthetic((1, 2, 4, 8), 0.064, 0.0, np.random.default_rng(0)))
    assert fit.beta == pytest.approx(0.064, rel=1e-9) and fit.step1_s == pytest.approx(0.002, rel=1e-9)
    assert fit.max_batch == 8 and fit.max_batch_source == "lower bound"
    # 3% multiplicative noise, 4 levels: the 95% delta-method interval covers β = 0.064 about 95% of the time
    rng = np.random.default_rng(1)
    fits = [fit_batching(_synthetic((1, 2, 4, 8, 16), 0.064, 0.03, rng)) for _ in range(400)]
    covered = np.mean([f.ci_beta[0] <= 0.064 <= f.ci_beta[1] for f in fits])
    assert 0.90 <= covered <= 0.99, covered


def test_fit_needs_three_levels_up_to_b():
    rs = _synthetic((1, 2, 4, 8), 0.1, 0.01, np.random.default_rng(2))
    with pytest.raises(CalibrationError, match="need at least 3"):
        fit_batching(rs, max_batch=2)
    # the vLLM-on-CPU points of ../shared/notes (m = 1..64): β ≈ 0.064, a finite interval
    vllm = [Round(m, 0, (s / 1e3,), m, 256, 0.0) for m, s in
            zip((1, 2, 4, 8, 16, 32, 64), (1.76, 1.73, 1.86, 2.56, 3.38, 5.53, 8.90))]
    fit = fit_batching(vllm)
    assert fit.beta == pytest.approx(0.0712, abs=5e-4) and np.all(np.isfinite(fit.ci_beta)) and fit.ci_beta[0] < fit.beta


# ---------------------------------------------------------------- against the emulator


def test_emulator_fit_recovers_beta_and_b(rounds):
    fit = fit_batching(rounds)
    assert fit.max_batch == B and fit.max_batch_source == "observed"
    assert fit.running == (1, 2, 3, 4, 6, 8, 8)
    assert fit.fitted_levels == (1, 2, 3, 4, 6, 8) and fit.df == 4
    assert abs(fit.beta - BETA) <= 0.02, fit
    # the emulator keeps its law to about 0.1% a level (sleep granularity, a starved loop catching up), a bias
    # that the scatter of six levels need not show: the interval may miss β by that much (0.003 ≈ 1% at m = 8)
    assert fit.ci_beta[0] - 0.003 <= BETA <= fit.ci_beta[1] + 0.003 and np.all(np.isfinite(fit.ci_beta)), fit
    assert fit.step1_s == pytest.approx(TAU1, rel=0.05)
    # beyond B the server runs waves of at most B (here 8, then 4): no step slower than at B
    assert fit.step_s[-1] <= 1.05 * TAU1 * (1 + BETA * (B - 1))


def test_max_batch_overrides_and_the_table_loads(rounds, tmp_path):
    from jaxalloc import load_profile

    fit = fit_batching(rounds, max_batch=4)
    assert fit.max_batch == 4 and fit.max_batch_source == "given" and fit.observed_batch == B
    assert fit.fitted_levels == (1, 2, 3, 4) and abs(fit.beta - BETA) <= 0.04
    low = fit_batching([r for r in rounds if r.concurrency <= 6])
    assert low.max_batch == 6 and low.max_batch_source == "lower bound"
    paper = (Path(__file__).resolve().parents[1] / "jaxalloc" / "profiles" / "paper.toml").read_text()
    path = tmp_path / "p.toml"
    path.write_text(paper + "\n" + server_text(fit, "emulator"))
    server = load_profile(path).server
    assert server.kind == "batching" and float(server.max_batch) == 4
    assert float(server.batch_slowdown) == pytest.approx(fit.beta, rel=1e-12)


def test_cli_writes_server_table_json_plot_and_fit_uses_it(emulator, tmp_path, capsys):
    import tomllib

    from jaxalloc import load_profile
    from jaxalloc.servers import server_from_dict

    out, fig = tmp_path / "server.toml", tmp_path / "steps.png"
    assert main(["calibrate", "batching", "--base-url", emulator.url, "--concurrency", "1,2,4,8,12",
                 "--tokens", "48", "--skip", "8", "--prompt-tokens", "8", "--out", str(out),
                 "--plot", str(fig), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # one round a level: accuracy is checked above, on three
    assert report["max_batch"] == B and report["max_batch_source"] == "observed"
    lo, hi = report["ci_batch_slowdown"]
    assert lo <= report["batch_slowdown"] <= hi and np.isfinite([lo, hi]).all()
    assert [lv["running"] for lv in report["levels"]] == [1, 2, 4, 8, 8]
    table = tomllib.loads(out.read_text())["server"]
    assert table == {"kind": "batching", "max_batch": B, "batch_slowdown": pytest.approx(report["batch_slowdown"])}
    assert server_from_dict(table, ()).kind == "batching"
    width, height = _png(fig)
    assert width > 400 and height > 300

    profile = tmp_path / "profile.toml"
    assert main(["calibrate", "fit", str(EXAMPLE), "--server", str(out), "--out", str(profile)]) == 0
    assert f"server: batching, max_batch = {B}" in capsys.readouterr().out
    server = load_profile(profile).server
    assert server.kind == "batching" and float(server.max_batch) == B
    assert float(server.batch_slowdown) == pytest.approx(table["batch_slowdown"], rel=1e-12)


def test_cli_max_batch_flag_and_text_output(emulator, tmp_path, capsys):
    out = tmp_path / "s.toml"
    assert main(["calibrate", "batching", "--base-url", emulator.url, "--concurrency", "1,2,3,4,6",
                 "--tokens", "40", "--skip", "8", "--max-batch", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max_batch B 4 (given by --max-batch" in text and "m > B: not fitted" in text
    assert "max_batch = 4" in out.read_text()


def _one_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], err
    return err[0]


def test_bad_input_is_one_error_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    out = tmp_path / "s.toml"
    assert main(["calibrate", "batching", "--base-url", url, "--out", str(out)]) == 2
    _one_error(capsys, "cannot connect")
    assert main(["calibrate", "batching", "--base-url", url, "--served-model", "m", "--tokens", "48", "--skip", "8"]) == 2
    _one_error(capsys, "cannot connect")
    with BatchingEmulator(token_ids=False) as emu:
        assert main(["calibrate", "batching", "--base-url", emu.url, "--tokens", "48", "--skip", "8",
                     "--out", str(out)]) == 2
    _one_error(capsys, "no token ids")
    assert not out.exists()
    for argv, words in (
        (["--concurrency", "1,2"], ("--concurrency", "at least 3")),
        (["--concurrency", "1,0,4"], ("--concurrency", "0 is not >= 1")),
        (["--max-batch", "2"], ("--max-batch 2",)),
        (["--tokens", "30"], ("--tokens = 30",)),
        (["--level", "1.5"], ("--level = 1.5",)),
    ):
        assert main(["calibrate", "batching", "--base-url", url, *argv]) == 2
        _one_error(capsys, *words)
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nkind = \"batching\"\nmax_batch = 0\n")
    assert main(["calibrate", "fit", str(EXAMPLE), "--server", str(bad)]) == 2
    _one_error(capsys, "--server", "server.max_batch = 0")
    assert main(["calibrate", "fit", str(EXAMPLE), "--server", str(tmp_path / "none.toml")]) == 2
    _one_error(capsys, "--server: cannot read")
