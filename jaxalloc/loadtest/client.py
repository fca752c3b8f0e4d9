"""A small asyncio HTTP/1.1 client for streamed OpenAI-compatible completions.

Only the standard library: a request is one connection (``asyncio.open_connection``),
one ``POST`` of a JSON body, and a response read as server-sent events, whatever its
framing: ``Transfer-Encoding: chunked``, ``Content-Length``, or until the server closes
(HTTP/1.0 servers such as Python's ``http.server``). The connection is opened first
(:meth:`Connection.open`) and the request written later (:meth:`Connection.send`), so
that a load generator can open it ahead of the scheduled arrival and write the request
on time: the send time is the moment the request is handed to the socket.

Token ids are read as :mod:`jaxalloc.calibrate.openai_backend` reads them: a choice's
``token_ids`` (vLLM's ``return_token_ids``) or its ``logprobs.tokens`` written as
``"token_id:123"`` (``return_tokens_as_token_ids``).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from dataclasses import dataclass, field

from ..calibrate.openai_backend import chunk_token_ids


class RequestFailed(Exception):
    """A request that failed; `status` says how (``http_error``, ``connect_error``,
    ``protocol_error``, ``no_token_ids``, ``server_error``)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens: `host`, `port` and the API `prefix` (ending in ``/v1``)."""

    host: str
    port: int
    prefix: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"


def parse_base_url(base_url: str) -> Endpoint:
    """The :class:`Endpoint` of ``http://HOST:PORT[/PATH]``; ``/v1`` is appended unless the path ends in it.

    Raises ``ValueError`` naming `--base-url` for anything else (https is not spoken here).
    """
    parts = urllib.parse.urlsplit(base_url.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port == -1:
        raise ValueError(f"--base-url = {base_url!r}: expected http://HOST:PORT (plain HTTP)")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return Endpoint(parts.hostname, port or 80, path)


@dataclass
class StreamResult:
    """One streamed completion: the ids, why it ended, and loop-clock times (seconds):
    `sent` (request written), `first` (first token; None if none came), `end` (stream over)."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    sent: float = 0.0
    first: float | None = None
    end: float = 0.0


def request_bytes(endpoint: Endpoint, method: str, path: str, body: bytes | None = None,
                  api_key: str | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request to `path` under the endpoint's prefix (keep-alive)."""
    lines = [f"{method} {endpoint.prefix}{path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}",
             "Accept: text/event-stream, application/json"]
    if api_key:
        lines.append(f"Authorization: Bearer {api_key}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


_READ = 1 << 16
_decode = json.JSONDecoder().decode


class Connection:
    """One HTTP/1.1 connection: :meth:`open`, then per exchange :meth:`send` and
    :meth:`stream` (or :meth:`read_all`); after a response read to its end on a
    keep-alive connection, `reusable` is True and the next request may follow on it;
    :meth:`close` at the end.

    The body is read in blocks (``StreamReader.read``) and unframed here, which costs
    far fewer awaits than a ``readline`` per chunk at thousands of chunks a second.
    """

    def __init__(self, endpoint: Endpoint, api_key: str | None = None):
        self.endpoint, self.api_key = endpoint, api_key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reusable = False
        self.answered = False  # a response head came for the last request sent
        self.kept = False  # kept alive from an earlier exchange (the server may have closed it since)
        self._buf = b""

    def alive(self) -> bool:
        """Open, as far as this side knows (no end of stream seen from the server)."""
        return self.writer is not None and not self.writer.is_closing() and not self.reader.at_eof()

    async def open(self) -> None:
        try:
            self.reader, self.writer = await asyncio.open_connection(self.endpoint.host, self.endpoint.port)
        except OSError as err:
            raise RequestFailed("connect_error", f"{self.endpoint.url}: cannot connect "
                                                 f"({err.strerror or err})") from None

    def send(self, method: str, path: str, payload: dict | bytes | None = None) -> float:
        """Write the request (`payload`: a dict to encode as JSON, or the encoded bytes);
        returns the loop time at which it was handed to the socket."""
        body = payload if payload is None or isinstance(payload, bytes) else \
            json.dumps(payload, separators=(",", ":")).encode()
        self.reusable = self.answered = False
        self.writer.write(request_bytes(self.endpoint, method, path, body, self.api_key))
        return asyncio.get_running_loop().time()

    async def _more(self) -> bool:
        data = await self.reader.read(_READ)
        self._buf += data
        return bool(data)

    async def _head(self, path: str) -> tuple[int, dict[str, str], bool]:
        """Status, headers (lower-case names) and whether the connection stays open after the body."""
        try:
            while (end := self._buf.find(b"\r\n\r\n")) < 0:
                if not await self._more():
                    raise RequestFailed("protocol_error", f"{self.endpoint.url}{path}: the server closed the "
                                                          "connection without a complete answer")
            head, self._buf = self._buf[:end].decode("latin-1"), self._buf[end + 4:]
            self.answered = True
        except ConnectionError as err:
            raise RequestFailed("protocol_error", f"{self.endpoint.url}{path}: {type(err).__name__}: {err}") from None
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise RequestFailed("protocol_error", f"{self.endpoint.url}{path}: not an HTTP response "
                                                  f"({status_line[:60]!r})")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = parts[0] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        return int(parts[1]), headers, keep

    async def _body(self, headers: dict[str, str]):
        """The response body, block by block, whatever its framing; sets `_complete`."""
        self._complete = False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                while (eol := self._buf.find(b"\r\n")) < 0:
                    if not await self._more():
                        raise asyncio.IncompleteReadError(self._buf, None)
                size = int(self._buf[:eol].split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:  # the last chunk, then trailer lines up to an empty one
                    start = eol + 2
                    while True:
                        while (end := self._buf.find(b"\r\n", start)) < 0:
                            if not await self._more():
                                return
                        if end == start:
                            self._buf = self._buf[end + 2:]
                            self._complete = True
                            return
                        start = end + 2
                while len(self._buf) < eol + 2 + size + 2:
                    if not await self._more():
                        raise asyncio.IncompleteReadError(self._buf, None)
                data, self._buf = self._buf[eol + 2: eol + 2 + size], self._buf[eol + 2 + size + 2:]
                yield data
        elif "content-length" in headers:
            left = int(headers["content-length"])
            while left > 0:
                if not self._buf and not await self._more():
                    raise asyncio.IncompleteReadError(b"", left)
                data, self._buf = self._buf[:left], self._buf[left:]
                left -= len(data)
                yield data
            self._complete = True
        else:  # until the server closes
            while True:
                if self._buf:
                    data, self._buf = self._buf, b""
                    yield data
                if not await self._more():
                    return

    async def read_all(self, path: str) -> tuple[int, bytes]:
        """Status and whole body of a plain (not streamed) response."""
        status, headers, keep = await self._head(path)
        try:
            body = b"".join([piece async for piece in self._body(headers)])
        except (ConnectionError, ValueError, asyncio.IncompleteReadError) as err:
            raise RequestFailed("protocol_error", f"{self.endpoint.url}{path}: {type(err).__name__}: {err}") from None
        self.reusable = keep and self._complete
        return status, body

    async def stream(self, path: str, result: StreamResult) -> StreamResult:
        """Read a streamed completion into `result` (whose `sent` the caller set)."""
        loop = asyncio.get_running_loop()
        status, headers, keep = await self._head(path)
        if status != 200:
            body = b"".join([p async for p in self._body(headers)])
            detail = " ".join(body.decode("utf-8", errors="replace").split())[:200]
            raise RequestFailed("http_error", f"{self.endpoint.url}{path}: HTTP {status}: {detail}")
        pending = b""
        done = False
        try:
            async for piece in self._body(headers):
                if done:
                    continue  # after [DONE]: read the framing to its end, to keep the connection
                pending += piece
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"data:") and self._event(line[5:].strip(), result, loop, path):
                        result.end = loop.time()
                        done = True
                        if "chunked" not in headers.get("transfer-encoding", "").lower() \
                                and "content-length" not in headers:
                            return result  # read-until-close: nothing more to wait for
                        break
            if not done and pending.startswith(b"data:"):
                self._event(pending[5:].strip(), result, loop, path)
        except (ConnectionError, ValueError, asyncio.IncompleteReadError) as err:
            raise RequestFailed("protocol_error", f"{self.endpoint.url}{path}: {type(err).__name__}: {err}") from None
        if not done:
            result.end = loop.time()
        self.reusable = keep and self._complete and not self._buf
        return result

    def _event(self, payload: bytes, result: StreamResult, loop, path: str) -> bool:
        """Take the payload of one SSE ``data:`` line; True at ``[DONE]``."""
        if payload == b"[DONE]":
            return True
        try:
            chunk = _decode(payload.decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            raise RequestFailed("protocol_error", f"{self.endpoint.url}{path}: malformed stream chunk "
                                                  f"{payload[:80]!r}") from None
        if "error" in chunk:
            raise RequestFailed("server_error", f"{self.endpoint.url}{path}: {chunk['error']}")
        for choice in chunk.get("choices") or []:
            ids = chunk_token_ids(choice)
            if ids is None and choice.get("text"):
                raise RequestFailed("no_token_ids", f"{self.endpoint.url}{path}: the stream has no token ids "
                                                    "(needs return_token_ids or return_tokens_as_token_ids, as "
                                                    "in vLLM)")
            if ids:
                if result.first is None:
                    result.first = loop.time()
                result.token_ids.extend(ids)
            if choice.get("finish_reason"):
                result.finish_reason = choice["finish_reason"]
        return False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.reusable = False


def completion_body(model: str, prompt, *, max_tokens: int, min_tokens: int = 0, stop_token_ids=(),
                    temperature: float = 0.0, seed: int = 0) -> dict:
    """The JSON body of a streamed token-id completion, as
    :meth:`jaxalloc.calibrate.openai_backend.OpenAIBackend.complete` sends it."""
    return {
        "model": model, "prompt": [int(t) for t in prompt], "max_tokens": int(max_tokens),
        "min_tokens": int(min_tokens), "stop_token_ids": [int(t) for t in stop_token_ids],
        "temperature": float(temperature), "seed": int(seed), "stream": True,
        "return_token_ids": True, "logprobs": 0, "return_tokens_as_token_ids": True,
        "skip_special_tokens": False,
    }


async def get_json(endpoint: Endpoint, path: str, *, api_key: str | None = None, timeout: float = 10.0):
    """GET `path` (under the endpoint's prefix) and parse JSON; raises :class:`RequestFailed`."""
    conn = Connection(endpoint, api_key)

    async def exchange():
        await conn.open()
        conn.send("GET", path)
        return await conn.read_all(path)

    try:
        status, body = await asyncio.wait_for(exchange(), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        raise RequestFailed("timeout", f"{endpoint.url}{path}: no answer within {timeout:g} s") from None
    finally:
        conn.close()
    if status != 200:
        detail = " ".join(body.decode("utf-8", errors="replace").split())[:200]
        raise RequestFailed("http_error", f"{endpoint.url}{path}: HTTP {status}: {detail}")
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        raise RequestFailed("protocol_error", f"{endpoint.url}{path}: not JSON ({body[:80]!r})") from None


async def complete(endpoint: Endpoint, body: dict, *, api_key: str | None = None,
                   conn: Connection | None = None) -> StreamResult:
    """One streamed completion; with `conn`, on that already opened connection."""
    own = conn is None
    conn = conn or Connection(endpoint, api_key)
    try:
        if own:
            await conn.open()
        result = StreamResult()
        result.sent = conn.send("POST", "/completions", body)
        return await conn.stream("/completions", result)
    finally:
        conn.close()
