"""A small asyncio HTTP/1.1 client for streamed OpenAI-compatible completions.

Only the standard library: a request is one connection (an asyncio protocol), one
``POST`` of a JSON body, and a response read as server-sent events, whatever its
framing: ``Transfer-Encoding: chunked``, ``Content-Length``, or until the server closes
(HTTP/1.0 servers such as Python's ``http.server``), parsed as its bytes arrive. The
connection is opened first (:meth:`Connection.open`) and the request written later
(:meth:`Connection.send`, or at a due time by a :class:`Sender` thread), so that a load
generator can open it ahead of the scheduled arrival and write the request on time: the
send time is the moment the request has been handed to the socket.

Token ids are read as :mod:`jaxalloc.calibrate.openai_backend` reads them: a choice's
``token_ids`` (vLLM's ``return_token_ids``) or its ``logprobs.tokens`` written as
``"token_id:123"`` (``return_tokens_as_token_ids``).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import sys
import threading
import time
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


_decode = json.JSONDecoder().decode
_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _LENGTH, _UNTIL_CLOSE, _OVER = range(7)


class _Protocol(asyncio.Protocol):
    """The connection's end in the event loop: bytes go straight to the exchange reading
    the current response (parsed in ``data_received``, no task wake-up per chunk), or wait
    in `buf` until one is attached."""

    def __init__(self):
        self.transport = None
        self.buf = b""
        self.exchange: _Exchange | None = None
        self.closed = False  # end of stream from the server, or the connection lost

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.exchange is not None:
            self.exchange.feed(data)
        else:
            self.buf += data

    def eof_received(self):
        self.closed = True
        if self.exchange is not None:
            self.exchange.eof(None)
        return False

    def connection_lost(self, exc):
        self.closed = True
        if self.exchange is not None:
            self.exchange.eof(exc)


class _Exchange:
    """Reads one response as it arrives, whatever its framing: ``Transfer-Encoding:
    chunked``, ``Content-Length``, or until the server closes. With a `result` and a
    ``200``, the body is read as server-sent events into it; otherwise it is kept whole.
    `future` gets ``(status, body)`` or the `result`, or a :class:`RequestFailed`."""

    def __init__(self, conn: Connection, path: str, result: StreamResult | None):
        self.conn, self.path, self.result = conn, path, result
        self.loop = asyncio.get_running_loop()
        self.future = self.loop.create_future()
        self.buf = b""
        self.state = _HEAD
        self.status, self.keep, self.left = 0, False, 0
        self.parts: list[bytes] = []
        self.pending = b""  # an incomplete SSE line
        self.sse = False
        self.done = False  # [DONE] seen
        self.complete = False  # the body read to its framed end

    def _fail(self, status: str, message: str) -> None:
        self._detach(b"")
        if not self.future.done():
            self.future.set_exception(RequestFailed(status, f"{self.conn.endpoint.url}{self.path}: {message}"))

    def _detach(self, rest: bytes) -> None:
        proto = self.conn.proto
        if proto is not None and proto.exchange is self:
            proto.exchange = None
            proto.buf = rest + proto.buf
        self.state = _OVER

    def feed(self, data: bytes) -> None:
        try:
            self._feed(data)
        except RequestFailed as err:
            self._detach(b"")
            if not self.future.done():
                self.future.set_exception(err)
        except ValueError as err:
            self._fail("protocol_error", f"{type(err).__name__}: {err}")

    def _feed(self, data: bytes) -> None:
        state = self.state
        if state == _OVER:
            self.conn.proto.buf += data
            return
        buf = self.buf + data if self.buf else data
        if state == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self._head(buf[:end].decode("latin-1"))
            buf = buf[end + 4:]
            state = self.state
            if state == _OVER:  # an empty body
                self.conn.proto.buf += buf
                return
        while True:
            if state == _CHUNK_SIZE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    break
                size = int(buf[:eol].split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:  # the last chunk, then trailer lines up to an empty one
                    buf, state = buf[eol + 2:], _TRAILER
                    continue
                if len(buf) < eol + 4 + size:
                    break
                if buf[eol + 2 + size: eol + 4 + size] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                piece, buf = buf[eol + 2: eol + 2 + size], buf[eol + 4 + size:]
                if self._piece(piece):
                    return
            elif state == _TRAILER:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    break
                buf = buf[eol + 2:]
                if eol == 0:
                    self.complete = True
                    self._finish(buf)
                    return
            elif state == _LENGTH:
                if not buf:
                    break
                piece, buf = buf[:self.left], buf[self.left:]
                self.left -= len(piece)
                if self._piece(piece):
                    return
                if self.left == 0:
                    self.complete = True
                    self._finish(buf)
                    return
            else:  # _UNTIL_CLOSE
                if buf and self._piece(buf):
                    return
                buf = b""
                break
        self.buf, self.state = buf, state

    def _head(self, head: str) -> None:
        self.conn.answered = True
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise RequestFailed("protocol_error", f"{self.conn.endpoint.url}{self.path}: not an HTTP response "
                                                  f"({status_line[:60]!r})")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.status = int(parts[1])
        self.keep = parts[0] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        self.sse = self.result is not None and self.status == 200
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = _CHUNK_SIZE
        elif "content-length" in headers:
            self.left, self.state = int(headers["content-length"]), _LENGTH
            if self.left == 0:
                self.complete = True
                self._finish(b"")
        else:
            self.state = _UNTIL_CLOSE

    def _piece(self, piece: bytes) -> bool:
        """Take a piece of the body; True when the exchange is over (read-until-close after [DONE])."""
        if not self.sse:
            self.parts.append(piece)
            return False
        if self.done:
            return False  # after [DONE]: read the framing to its end, to keep the connection
        pending = self.pending + piece if self.pending else piece
        if b"\n" not in pending:
            self.pending = pending
            return False
        *lines, self.pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:") and self.conn._event(line[5:].strip(), self.result, self.loop, self.path):
                self.result.end = self.loop.time()
                self.done = True
                if self.state == _UNTIL_CLOSE:
                    self._finish(b"")  # read-until-close: nothing more to wait for
                    return True
                break
        return False

    def eof(self, exc: BaseException | None) -> None:
        if self.state == _OVER:
            return
        if self.state == _HEAD:
            self._fail("protocol_error", f"{type(exc).__name__}: {exc}" if exc is not None else
                       "the server closed the connection without a complete answer")
        elif self.state == _UNTIL_CLOSE:
            self._finish(b"")
        else:
            self._fail("protocol_error", f"{type(exc).__name__}: {exc}" if exc is not None else
                       "IncompleteReadError: the server closed the connection in the middle of the body")

    def _finish(self, rest: bytes) -> None:
        self._detach(rest)
        if self.future.done():
            return
        try:
            if self.result is None:
                self.future.set_result((self.status, b"".join(self.parts)))
                return
            if self.status != 200:
                body = b"".join(self.parts)
                detail = " ".join(body.decode("utf-8", errors="replace").split())[:200]
                raise RequestFailed("http_error", f"{self.conn.endpoint.url}{self.path}: HTTP {self.status}: {detail}")
            if not self.done:
                if self.pending.startswith(b"data:"):
                    self.conn._event(self.pending[5:].strip(), self.result, self.loop, self.path)
                self.result.end = self.loop.time()
        except RequestFailed as err:
            self.future.set_exception(err)
            return
        self.future.set_result(self.result)


class Connection:
    """One HTTP/1.1 connection: :meth:`open`, then per exchange :meth:`send` and
    :meth:`stream` (or :meth:`read_all`); after a response read to its end on a
    keep-alive connection, `reusable` is True and the next request may follow on it;
    :meth:`close` at the end.

    Responses are parsed as their bytes arrive, in the protocol's ``data_received``
    (:class:`_Exchange`): the reading coroutine wakes once per response, not once per
    streamed chunk, which keeps the loop's CPU per token small at thousands of chunks a
    second.
    """

    def __init__(self, endpoint: Endpoint, api_key: str | None = None):
        self.endpoint, self.api_key = endpoint, api_key
        self.transport: asyncio.Transport | None = None
        self.proto: _Protocol | None = None
        self.reusable = False
        self.answered = False  # a response head came for the last request sent
        self.kept = False  # kept alive from an earlier exchange (the server may have closed it since)

    def alive(self) -> bool:
        """Open, as far as this side knows (no end of stream seen from the server)."""
        return self.transport is not None and not self.transport.is_closing() and not self.proto.closed

    async def open(self) -> None:
        try:
            self.transport, self.proto = await asyncio.get_running_loop().create_connection(
                _Protocol, self.endpoint.host, self.endpoint.port)
        except OSError as err:
            raise RequestFailed("connect_error", f"{self.endpoint.url}: cannot connect "
                                                 f"({err.strerror or err})") from None

    def prepare(self, method: str, path: str, payload: dict | bytes | None = None) -> bytes:
        """The bytes of a request about to be written (`payload`: a dict to encode as JSON,
        or the encoded bytes); the connection now waits for its answer."""
        body = payload if payload is None or isinstance(payload, bytes) else \
            json.dumps(payload, separators=(",", ":")).encode()
        self.reusable = self.answered = False
        return request_bytes(self.endpoint, method, path, body, self.api_key)

    def send(self, method: str, path: str, payload: dict | bytes | None = None) -> float:
        """Write the request now; returns the loop time at which it was handed to the socket."""
        self.transport.write(self.prepare(method, path, payload))
        return asyncio.get_running_loop().time()

    async def _exchange(self, path: str, result: StreamResult | None):
        if self.proto is None:
            raise RequestFailed("protocol_error", f"{self.endpoint.url}{path}: the connection is closed")
        ex = _Exchange(self, path, result)
        proto = self.proto
        proto.exchange = ex
        if proto.buf:
            data, proto.buf = proto.buf, b""
            ex.feed(data)
        if proto.closed:
            ex.eof(None)
        try:
            out = await ex.future
        finally:
            ex._detach(b"")
        self.reusable = ex.keep and ex.complete and not (self.proto is not None and self.proto.buf)
        return out

    async def read_all(self, path: str) -> tuple[int, bytes]:
        """Status and whole body of a plain (not streamed) response."""
        return await self._exchange(path, None)

    async def stream(self, path: str, result: StreamResult) -> StreamResult:
        """Read a streamed completion into `result` (whose `sent` the caller set)."""
        return await self._exchange(path, result)

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
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.reusable = False


class Sender:
    """Writes requests at their due times from a thread of its own, so that a busy event
    loop (reading streams, parsing JSON) does not delay them.

    :meth:`send` hands the thread an open connection, the request and its due time (loop
    clock, ``time.monotonic``); the thread sleeps until then, writes the request to a
    duplicate of the connection's socket (so that a socket the loop closes meanwhile is
    never confused with a new one on the same descriptor) and reports the send time back
    to the loop, which reads the answer as usual. While it runs the interpreter's switch
    interval is lowered (:data:`SWITCH_S`), so that the thread gets the GIL promptly from
    a busy loop; :meth:`stop` restores it.
    """

    SWITCH_S = 2e-4
    EARLY_S = 5e-4

    def __init__(self):
        self._cond = threading.Condition()
        self._jobs: list = []  # heap of [due, seq, fd, data, loop, future, writer]
        self._seq = 0
        self._stopped = False
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, self.SWITCH_S))
        self._thread = threading.Thread(target=self._work, name="jaxalloc-loadtest-sender", daemon=True)
        self._thread.start()

    async def send(self, conn: Connection, when: float, method: str, path: str,
                   payload: dict | bytes | None = None) -> float:
        """Write the request on `conn` at `when` (loop clock); returns when it was handed to the socket."""
        data = conn.prepare(method, path, payload)
        loop = asyncio.get_running_loop()
        sock = conn.transport.get_extra_info("socket")
        if sock is None or when <= loop.time():
            conn.transport.write(data)
            return loop.time()
        future = loop.create_future()
        job = [when, 0, os.dup(sock.fileno()), data, loop, future, conn.transport]
        with self._cond:
            if self._stopped:
                os.close(job[2])
                conn.transport.write(data)
                return loop.time()
            self._seq += 1
            job[1] = self._seq
            heapq.heappush(self._jobs, job)
            if self._jobs[0] is job:
                self._cond.notify()
        try:
            return await future
        except BaseException:
            with self._cond:
                job[3] = None  # not sent (or sent already): the thread leaves it
            raise

    def _work(self) -> None:
        jobs, cond = self._jobs, self._cond
        while True:
            with cond:
                while True:
                    if self._stopped:
                        return
                    if jobs:
                        wait = jobs[0][0] - time.monotonic() - self.EARLY_S
                        if wait <= 0:
                            job = heapq.heappop(jobs)
                            break
                        cond.wait(wait)
                    else:
                        cond.wait()
                _, _, fd, data, loop, future, writer = job
                job[3] = None  # taken: a cancellation from now on comes too late (harmless, on the duplicate)
            if data is None:  # cancelled
                os.close(fd)
                continue
            due = job[0]
            while time.monotonic() < due:  # awake EARLY_S ahead, on a core: the OS's wake-up lag is spent already
                pass
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                n = 0
            except OSError as err:
                n, data = -1, err
            sent = time.monotonic()
            os.close(fd)
            try:
                if n < 0:
                    loop.call_soon_threadsafe(_settle, future, None, data)
                else:
                    if n < len(data):  # the socket's buffer was full: the loop writes the rest
                        loop.call_soon_threadsafe(writer.write, data[n:])
                    loop.call_soon_threadsafe(_settle, future, sent, None)
            except RuntimeError:  # the loop is closed
                pass

    def stop(self) -> None:
        """End the thread (requests still waiting are not sent) and restore the switch interval."""
        with self._cond:
            self._stopped = True
            for job in self._jobs:
                os.close(job[2])
            self._jobs.clear()
            self._cond.notify()
        self._thread.join()
        sys.setswitchinterval(self._switch)


def _settle(future: asyncio.Future, value, error) -> None:
    if not future.done():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


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
