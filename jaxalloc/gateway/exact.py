"""``--enforce exact``: each request is the two-phase query of ``calibrate measure``.

The server's ``thinking_token_budget`` is a cap: a model may stop thinking earlier. For an
exact budget ℓ the gateway renders the prompt itself (the served model's chat template, from
``--model TOKENIZER_DIR``, ending in ``<think>\\n``) and sends two ``/v1/completions``
requests upstream, as ``calibrate measure --backend openai`` and ``loadtest`` do:

1. **thinking**: ``max_tokens = min_tokens = ℓ`` with ``</think>`` as a stop token: exactly ℓ
   tokens (skipped for ℓ = 0);
2. **answer**: the prompt, the ℓ thinking tokens and ``"\\n</think>\\n\\n"``, up to the room
   left for the answer.

The client gets the answer in the shape it asked for: a chat completion with the thinking as
``reasoning`` (as vLLM's reasoning parser gives it) and the answer as ``content``, or a text
completion with the whole text; streamed as the two phases stream (reasoning deltas, then
content deltas) or whole, with ``usage.completion_tokens_details.reasoning_tokens = ℓ``. A
client's own ``max_tokens`` caps the total: the thinking then gets min(ℓ, cap − 1) tokens and
the answer the rest. An upstream that returns another number of thinking tokens than asked
(no ``min_tokens`` support) is a 502 naming it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import ClientSession, web

from ..calibrate.chat import load_tokenizer, thinking_format
from ..calibrate.openai_backend import DONE, chunk_token_ids, sse_chunk
from .enforce import RequestError, UpstreamError, client_cap

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
            "repetition_penalty")
"""Sampling fields of the client's request copied into both phases."""


class Exact:
    """The exact two-phase query for one served model (see the module docstring).

    **Arguments:** `tokenizer_dir`: the served model's tokenizer folder (a ModelError if none)."""

    def __init__(self, tokenizer_dir: str):
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.fmt = thinking_format(self.tokenizer, tokenizer_dir)

    def prompt(self, path: str, body: dict[str, Any]) -> list[int]:
        """Prompt token ids ending in ``<think>\\n``: chat ``messages`` through the chat template,
        or a completions ``prompt`` (text, or token ids) as given. :class:`RequestError` 400 if absent."""
        if path.endswith("/chat/completions"):
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise RequestError(400, "messages: a non-empty list of chat messages is needed", param="messages")
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=True)
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                ids = list(prompt)
            else:
                raise RequestError(400, "prompt: one string or one list of token ids is needed", param="prompt")
        if ids[-len(self.fmt.open_ids):] != list(self.fmt.open_ids):
            ids += self.fmt.open_ids
        return ids

    def split(self, budget: int, body: dict[str, Any], answer_tokens: int) -> tuple[int, int]:
        """(thinking tokens, answer room): ℓ and `answer_tokens`, within the client's cap."""
        cap = client_cap(body)
        if cap is None:
            return budget, answer_tokens
        thinking = min(budget, cap - 1)
        return thinking, cap - thinking

    async def phase(self, session: ClientSession, url: str, body: dict[str, Any]) -> AsyncIterator[tuple[str, list[int], str | None]]:
        """One streamed upstream completion: (text, token ids, finish reason) per chunk."""
        async with session.post(url, data=json.dumps(body).encode(),
                                headers={"Content-Type": "application/json"}) as up:
            if up.status != 200:
                raise UpstreamError(f"{url}: HTTP {up.status}: {(await up.text())[:300]}")
            async for raw in up.content:
                try:
                    chunk = sse_chunk(raw)
                except ValueError as err:  # a 502, not the proxy's own 500
                    raise UpstreamError(f"{url}: {err}") from None
                if chunk is None:
                    continue
                if chunk == DONE:
                    break
                if "error" in chunk:
                    raise UpstreamError(f"{url}: {chunk['error']}")
                for choice in chunk.get("choices") or []:
                    ids = chunk_token_ids(choice)
                    if ids is None and choice.get("text"):
                        raise UpstreamError(f"{url}: the stream has no token ids (needs return_token_ids, as vLLM)")
                    yield choice.get("text") or "", ids or [], choice.get("finish_reason")

    def _request(self, body: dict[str, Any], prompt: Sequence[int], *, max_tokens: int, min_tokens: int,
                 stop: Sequence[int]) -> dict[str, Any]:
        out = {k: body[k] for k in SAMPLING if k in body}
        out.update(model=body.get("model"), prompt=list(prompt), max_tokens=int(max_tokens), min_tokens=int(min_tokens),
                   stop_token_ids=list(stop), stream=True, return_token_ids=True, skip_special_tokens=False)
        return out

    async def respond(self, request: web.Request, session: ClientSession, upstream: str, body: dict[str, Any],
                      budget: int, answer_tokens: int, headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Run both phases for `request` and answer it (see the module docstring)."""
        chat = request.path.endswith("/chat/completions")
        prompt = self.prompt(request.path, body)
        thinking_budget, room = self.split(budget, body, answer_tokens)
        url = upstream + "/v1/completions"
        model = body.get("model")
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        stream = bool(body.get("stream"))
        out: web.StreamResponse | None = None
        if stream:
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                              **(headers or {})})
            await out.prepare(request)

        async def emit(piece: dict[str, Any], finish: str | None = None) -> None:
            if out is None or (not piece and finish is None):
                return
            if chat:
                choice = {"index": 0, "delta": piece, "finish_reason": finish}
                doc = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [choice]}
            else:
                doc = {"id": ident, "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": 0, "text": piece.get("text", ""), "finish_reason": finish}]}
            await out.write(f"data: {json.dumps(doc)}\n\n".encode())

        thinking_ids: list[int] = []
        reasoning: list[str] = []
        if thinking_budget > 0:
            first = self._request(body, prompt, max_tokens=thinking_budget, min_tokens=thinking_budget,
                                  stop=[self.fmt.think_end_id])
            async for text, ids, _ in self.phase(session, url, first):
                thinking_ids += ids
                reasoning.append(text)
                await emit({"reasoning": text} if chat else {"text": text})
            if len(thinking_ids) != thinking_budget:
                raise UpstreamError(f"{url}: {len(thinking_ids)} thinking tokens for an exact budget of "
                                    f"{thinking_budget}: does the server support min_tokens (as vLLM)?")
        close = self.tokenizer.decode(list(self.fmt.close_ids), skip_special_tokens=False)
        if not chat:
            await emit({"text": close})
        second = self._request(body, [*prompt, *thinking_ids, *self.fmt.close_ids], max_tokens=room, min_tokens=0,
                               stop=[])
        answer_ids: list[int] = []
        answer: list[str] = []
        finish = "length"
        async for text, ids, reason in self.phase(session, url, second):
            answer_ids += ids
            answer.append(text)
            finish = reason or finish
            await emit({"content": text} if chat else {"text": text})
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(thinking_ids) + len(answer_ids),
                 "total_tokens": len(prompt) + len(thinking_ids) + len(answer_ids),
                 "completion_tokens_details": {"reasoning_tokens": len(thinking_ids)}}
        if out is not None:
            await emit({}, finish)
            await out.write(b"data: [DONE]\n\n")
            await out.write_eof()
            return out
        if chat:
            message = {"role": "assistant", "reasoning": "".join(reasoning), "content": "".join(answer)}
            doc = {"id": ident, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}
        else:
            text = "".join(reasoning) + close + "".join(answer)
            doc = {"id": ident, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": text, "finish_reason": finish}], "usage": usage}
        return web.json_response(doc, headers=headers)
