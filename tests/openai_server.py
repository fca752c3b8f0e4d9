"""A small OpenAI-compatible server for tests: the Flax engine behind ``/v1/completions``.

It implements the subset that vLLM offers and the measuring client uses:
token-id prompts, ``max_tokens``, ``min_tokens``, ``stop_token_ids``,
``temperature``, ``seed``, ``stream`` (server-sent events, one token per
chunk, ``data: [DONE]`` at the end), ``return_token_ids`` and
``GET /v1/models``. Served on 127.0.0.1 from a thread (stdlib ``http.server``).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CompletionServer:
    """Serve `engine` (a jaxalloc Engine) with end-of-sequence ids `eos_ids`; use as a context manager."""

    def __init__(self, engine, tokenizer, eos_ids, model_name="tiny-qwen3", token_ids_field=True):
        self.engine, self.tokenizer, self.eos_ids, self.model_name = engine, tokenizer, list(eos_ids), model_name
        self.token_ids_field = token_ids_field  # False: ids only as logprobs "token_id:N", as vLLM's other option
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _json(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                if self.path != "/v1/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                prompt = body.get("prompt")
                if not (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
                    return self._json(400, {"error": {"message": "prompt: token ids expected"}})
                max_tokens, min_tokens = int(body.get("max_tokens", 16)), int(body.get("min_tokens") or 0)
                stops = server.eos_ids + list(body.get("stop_token_ids") or [])
                with server.lock:  # one request at a time, as the engine runs batch 1
                    run = server.engine.run(prompt, think=min(min_tokens, max_tokens),
                                            answer=max_tokens - min(min_tokens, max_tokens), suppress_ids=stops,
                                            stop_ids=stops, temperature=float(body.get("temperature", 1.0)),
                                            seed=int(body.get("seed") or 0))
                tokens = [int(t) for t in run.tokens]
                finish = "stop" if run.stopped else "length"
                if not body.get("stream"):
                    return self._json(200, {"object": "text_completion", "model": server.model_name, "choices": [
                        {"index": 0, "text": server.tokenizer.decode(tokens), "token_ids": tokens,
                         "finish_reason": finish}]})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for k, token in enumerate(tokens):
                    choice = {"index": 0, "text": server.tokenizer.decode([token]),
                              "finish_reason": finish if k == len(tokens) - 1 else None}
                    if server.token_ids_field:
                        choice["token_ids"] = [token]
                    else:
                        choice["logprobs"] = {"tokens": [f"token_id:{token}"], "token_logprobs": [0.0]}
                    self.wfile.write(f"data: {json.dumps({'object': 'text_completion', 'choices': [choice]})}\n\n"
                                     .encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
