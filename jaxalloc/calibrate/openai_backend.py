"""Measure a running OpenAI-compatible server (vLLM, SGLang) under an exact thinking budget.

Two streamed ``/v1/completions`` requests per query, prompts as token ids:

1. **thinking** (skipped for ℓ = 0): ``prompt`` = the chat prompt ending in
   ``<think>\\n``, ``max_tokens = min_tokens = ℓ`` and ``</think>`` in
   ``stop_token_ids``. ``min_tokens`` (a vLLM extension) keeps end-of-sequence
   and stop ids from being sampled before ℓ tokens, so exactly ℓ come back.
2. **answer**: ``prompt`` = chat prompt + the ℓ thinking ids + ``"\\n</think>\\n\\n"``,
   ``max_tokens`` = the answer cap, ending at end-of-sequence.

Token ids come back through ``return_token_ids`` (vLLM ≥ 0.10.2) or, failing
that, ``logprobs`` with ``return_tokens_as_token_ids`` (``"token_id:123"``);
text is never re-tokenised. For each request the client records the time to
first token, the gaps between streamed chunks and the end-to-end latency; the
query's service time is the sum of both requests' end-to-end latencies, its
prefill time the first request's time to first token.

Only the standard library is used (``urllib``); no OpenAI client is needed.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the Flax extra is needed only by generate(); complete() runs on the standard library
    from .chat import ThinkingFormat
    from .generate import Generation


class ServerError(RuntimeError):
    """The server failed a request or answered something this client cannot use."""


class Stream:
    """One streamed completion: `token_ids`, `finish_reason`, `ttft_s`, `itl_s`, `e2e_s`.

    Also, on the :func:`time.perf_counter` clock (comparable across threads):
    `started`, when the request was sent, and `arrivals`, one ``(time, tokens)``
    pair per chunk that carried token ids: its arrival time and the cumulative
    number of tokens received with it (a chunk may carry several).
    """

    def __init__(self):
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.ttft_s: float | None = None
        self.itl_s: list[float] = []
        self.e2e_s: float = 0.0
        self.started: float = 0.0
        self.arrivals: list[tuple[float, int]] = []

    def timing(self) -> dict:
        return {"ttft_s": self.ttft_s, "e2e_s": self.e2e_s, "itl_s": self.itl_s}


DONE = "[DONE]"


def sse_chunk(raw: bytes) -> dict | str | None:
    """One line of a server-sent event stream: its JSON chunk, :data:`DONE` at the stream's end,
    or None for a line that carries no data. Raises ValueError naming a malformed chunk."""
    line = raw.decode("utf-8", errors="replace").strip()
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == DONE:
        return DONE
    try:
        return json.loads(payload)
    except json.JSONDecodeError:
        raise ValueError(f"malformed stream chunk {payload[:100]!r}") from None


def chunk_token_ids(choice: dict) -> list[int] | None:
    """Token ids of one streamed choice (``token_ids``, or ``logprobs`` tokens written
    ``"token_id:N"``), or None when it carries none."""
    if choice.get("token_ids") is not None:
        return [int(t) for t in choice["token_ids"]]
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if tokens is not None:
        try:
            return [int(str(t).split("token_id:", 1)[1]) for t in tokens]
        except (IndexError, ValueError):
            return None
    return None


def completion_body(model: str, prompt, *, max_tokens: int, min_tokens: int = 0, stop_token_ids=(),
                    temperature: float = 0.0, seed: int | None = 0) -> dict[str, Any]:
    """The JSON body of a streamed token-id completion, as :meth:`OpenAIBackend.complete` and
    ``jaxalloc loadtest`` send it (`seed` None: no per-request seed, the server's own sampling)."""
    return {
        "model": model, "prompt": [int(t) for t in prompt], "max_tokens": int(max_tokens),
        "min_tokens": int(min_tokens), "stop_token_ids": [int(t) for t in stop_token_ids],
        "temperature": float(temperature), **({} if seed is None else {"seed": int(seed)}), "stream": True,
        "return_token_ids": True, "logprobs": 0, "return_tokens_as_token_ids": True,
        "skip_special_tokens": False,
    }


class OpenAIBackend:
    """Budget-forced generation on an OpenAI-compatible completions server.

    **Arguments:** `base_url` (e.g. ``http://127.0.0.1:8000``, with or without
    ``/v1``); `fmt`: the served model's :class:`~jaxalloc.calibrate.chat.ThinkingFormat`
    (from its tokenizer); `model`: the served model name (default: the first
    of ``/v1/models``); `api_key`: sent as a bearer token if given;
    `timeout`: seconds per request.
    """

    name = "openai"

    def __init__(self, base_url: str, fmt: ThinkingFormat | None, model: str | None = None, *,
                 api_key: str | None = None, timeout: float = 600.0):
        url = base_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--base-url = {base_url!r}: expected http://HOST:PORT")
        self.url = url if url.endswith("/v1") else url + "/v1"
        self.fmt = fmt
        self.api_key = api_key
        self.timeout = timeout
        self.model = model if model is not None else self._first_model()

    def _request(self, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                         method="GET" if body is None else "POST")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            detail = " ".join(err.read().decode(errors="replace").split())[:300]
            raise ServerError(f"{self.url}{path}: HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            raise ServerError(f"{self.url}{path}: cannot connect ({getattr(err, 'reason', err)})") from None

    def _first_model(self) -> str:
        with self._request("/models") as response:
            models = json.load(response).get("data") or []
        if not models:
            raise ServerError(f"{self.url}/models: the server lists no model")
        return str(models[0]["id"])

    def complete(self, prompt: Sequence[int], *, max_tokens: int, min_tokens: int = 0,
                 stop_token_ids: Sequence[int] = (), temperature: float = 0.0, seed: int | None = 0) -> Stream:
        """One streamed completion of a token-id `prompt`.

        **Arguments:** `prompt`; `max_tokens`; `min_tokens`; `stop_token_ids`;
        `temperature`; `seed` (None: no per-request seed, see :data:`jaxalloc.loadtest.run.REQUEST_SEEDS`).

        **Returns:** the :class:`Stream` with generated ids and timings. Raises
        :class:`ServerError` on an HTTP error, a malformed stream, or chunks
        without token ids.
        """
        body = completion_body(self.model, prompt, max_tokens=max_tokens, min_tokens=min_tokens,
                               stop_token_ids=stop_token_ids, temperature=temperature, seed=seed)
        out = Stream()
        start = out.started = time.perf_counter()
        last = None
        with self._request("/completions", body) as response:
            for raw in response:
                try:
                    chunk = sse_chunk(raw)
                except ValueError as err:
                    raise ServerError(f"{self.url}/completions: {err}") from None
                if chunk is None:
                    continue
                if chunk == DONE:
                    break
                if "error" in chunk:
                    raise ServerError(f"{self.url}/completions: {chunk['error']}")
                for choice in chunk.get("choices") or []:
                    ids = chunk_token_ids(choice)
                    if ids is None and choice.get("text"):
                        raise ServerError(f"{self.url}/completions: the stream has no token ids "
                                          "(needs return_token_ids or return_tokens_as_token_ids, as in vLLM)")
                    if ids:
                        now = time.perf_counter()
                        if out.ttft_s is None:
                            out.ttft_s = now - start
                        else:
                            out.itl_s.append(now - last)
                        last = now
                        out.token_ids.extend(ids)
                        out.arrivals.append((now, len(out.token_ids)))
                    if choice.get("finish_reason"):
                        out.finish_reason = choice["finish_reason"]
        out.e2e_s = time.perf_counter() - start
        if out.ttft_s is None:
            out.ttft_s = out.e2e_s
        return out

    def generate(self, prompt: Sequence[int], budget: int, answer_tokens: int, *, temperature: float = 0.0,
                 seed: int = 0) -> Generation:
        """Exactly `budget` thinking tokens, then the answer (up to `answer_tokens`).

        **Arguments:** as :func:`jaxalloc.calibrate.generate.generate`.

        **Returns:** the :class:`~jaxalloc.calibrate.generate.Generation`, with
        per-request timings in `requests`. Raises :class:`ServerError` when the
        server returns another number of thinking tokens than `budget`.
        """
        from .generate import Generation

        fmt, streams, thinking = self.fmt, [], []
        if budget > 0:
            think = self.complete(prompt, max_tokens=budget, min_tokens=budget, stop_token_ids=[fmt.think_end_id],
                                  temperature=temperature, seed=seed)
            thinking = think.token_ids
            if len(thinking) != budget or set(thinking) & set(fmt.suppressed_ids):
                raise ServerError(f"thinking phase: the server returned {len(thinking)} tokens for budget {budget} "
                                  "(or an end token among them): does it support min_tokens?")
            streams.append(think)
        answer = self.complete(list(prompt) + thinking + list(fmt.close_ids), max_tokens=answer_tokens,
                               temperature=temperature, seed=seed + 1)
        streams.append(answer)
        ids, stops = answer.token_ids, set(fmt.stop_ids)
        stopped = answer.finish_reason == "stop"
        answer_ids = [t for t in ids if t not in stops] if stopped else list(ids)
        # the stop token was sampled even where the server leaves it out of the ids: counted, as locally
        answer_count = len(ids) + (1 if stopped and (not ids or ids[-1] not in stops) else 0)
        service = sum(s.e2e_s for s in streams)
        prefill = streams[0].ttft_s
        return Generation(thinking, answer_ids, len(thinking), answer_count, stopped, len(prompt), prefill,
                          service - prefill, service, tuple(s.timing() for s in streams))
