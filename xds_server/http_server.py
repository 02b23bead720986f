"""A small HTTP/1.1 server on asyncio, with the limits every meshd HTTP port keeps: the
metrics port (:mod:`xds_server.metrics_http`) and the console (:mod:`xds_server.console`).

- Each connection has ``header_timeout`` seconds to send its request line and headers,
  and as long again for a body (``Content-Length`` only, at most ``max_body`` bytes); a
  half-open or silent connection is closed then.
- At most ``max_connections`` are open at once. One more makes the oldest connection that
  has not sent its request yet go (a flood of silent connections cannot keep a person or
  a scraper, who ask at once, out); when every one is being answered, 503.
- One request per connection (``Connection: close``); a response the client does not read
  within ``write_timeout`` seconds is cut. A streamed response (Server-Sent Events) is
  written chunk by chunk under the same write timeout for each.
- Refusals are counted through ``refused(reason)`` (``connections``, ``timeout``,
  ``bad_request``) and logged at most once a minute per reason.

- Until its request is whole, a connection is a socket, a buffer and a deadline on the
  loop, read as data comes: no task, transport or stream each (see :class:`_Connection`).
  A streamed response ends when its client goes away.

No I/O of its own beyond the sockets it is given; the handler decides everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from xds_server.log_limit import LogLimiter

__all__ = [
    "MAX_HEADER_BYTES",
    "HttpServer",
    "Listening",
    "Request",
    "Response",
    "Streamed",
    "listen_socket",
    "response_bytes",
]

MAX_HEADER_BYTES = 16 * 1024
_READ_BYTES = 16 * 1024
_ACCEPT_BATCH = 64
_FULL_PAUSE_S = 0.05
"""Pause between batches of accepts while the server is full (see ``_accept``)."""
_LOG_EVERY_S = 60.0

REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request."""

    method: str
    target: str
    headers: dict[str, str]
    """Header names lower-cased (a repeated header: the last one)."""
    body: bytes = b""
    peer: str = ""
    """``host:port`` of the client."""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)


@dataclass(slots=True)
class Response:
    """A whole response."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Streamed:
    """A response written as ``chunks`` come (``text/event-stream``, no length)."""

    chunks: AsyncIterator[bytes]
    content_type: str = "text/event-stream; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response | Streamed]]


def response_bytes(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: list[tuple[str, str]] | None = None,
    *,
    length: bool = True,
) -> bytes:
    """A response's bytes: status line, headers (``Connection: close``) and body."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", f"Content-Type: {content_type}"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in headers or ()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """(method, target, lower-cased headers) of a request head; None when it is not one."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:
        return None
    request_line, *lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


class Listening:
    """A listening socket being served; :meth:`close` stops accepting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self.sock = sock

    def close(self) -> None:
        """Stop accepting and close the listening socket (open connections stay)."""
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


class _Connection:
    """One accepted socket until its request is read: a buffer and a deadline, no task.

    Silent and half-open connections are what a flood brings, so until a whole request has
    come a connection is only this object, its socket and two loop handles: no transport,
    stream or task each. Objects made for short-lived connections and interleaved with the
    long-lived ones made meanwhile leave the allocator's arenas partly used after the flood;
    the fewer there are, the less the process keeps.
    """

    __slots__ = ("buf", "fd", "head", "length", "server", "sock", "task", "timer")

    def __init__(self, server: HttpServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.head: tuple[str, str, dict[str, str]] | None = None
        self.length = 0
        loop = server.loop
        loop.add_reader(self.fd, self.readable)
        self.timer = loop.call_later(server.header_timeout, self.timed_out)

    def readable(self) -> None:
        try:
            data = self.sock.recv(_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if self.task is not None:  # answering a streamed response: only an end counts
            if not data:
                self.server.loop.remove_reader(self.fd)
                self.task.cancel()
            return
        if not data:  # the client went away before its request was whole
            self.close()
            return
        self.buf += data
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0 and len(self.buf) <= MAX_HEADER_BYTES:
                return  # (more of the head to come)
            if end < 0 or end + 4 > MAX_HEADER_BYTES:
                self.server.refuse("bad_request", f"request headers over {MAX_HEADER_BYTES} bytes")
                self.reply(response_bytes(431, b"request headers too large\n"))
                return
            if not self.read_head(bytes(self.buf[: end + 4])):
                return
            del self.buf[: end + 4]
        if len(self.buf) >= self.length:
            self.answer(bytes(self.buf[: self.length]))

    def read_head(self, head: bytes) -> bool:
        """Take the request head; False when the connection was answered and closed."""
        parsed = parse_head(head)
        if parsed is None:
            self.server.refuse("bad_request", "not an HTTP request")
            self.reply(response_bytes(400, b"bad request\n"))
            return False
        length = parsed[2].get("content-length", "0")
        if not length.isdigit() or "transfer-encoding" in parsed[2]:
            self.reply(response_bytes(400, b"a body needs a Content-Length\n"))
            return False
        if int(length) > self.server.max_body:
            self.server.refuse(
                "bad_request", f"a body of {length} bytes, over {self.server.max_body}"
            )
            self.reply(response_bytes(413, b"request body too large\n"))
            return False
        self.head, self.length = parsed, int(length)
        if self.length:  # as long again for the body
            self.timer.cancel()
            self.timer = self.server.loop.call_later(self.server.header_timeout, self.timed_out)
        return True

    def timed_out(self) -> None:
        what = "request headers" if self.head is None else "request body"
        self.server.refuse("timeout", f"no {what} within {self.server.header_timeout:g} s")
        self.close()

    def reply(self, data: bytes) -> None:
        """Answer a refusal at once, as far as the socket takes it, and close."""
        with contextlib.suppress(OSError):
            self.sock.send(data)
        self.close()

    def answer(self, body: bytes) -> None:
        """The request is whole: stop the deadline and answer it in a task of its own."""
        assert self.head is not None
        self.timer.cancel()
        self.server.loop.remove_reader(self.fd)
        self.server.waiting.pop(self, None)
        method, target, headers = self.head
        try:
            host, port = self.sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except (OSError, ValueError):
            peer = ""
        self.buf = bytearray()
        self.task = self.server.loop.create_task(
            self.server.exchange(self, Request(method, target, headers, body, peer))
        )

    def watch_for_end(self) -> None:
        """While a streamed response is written, notice the client going away."""
        self.server.loop.add_reader(self.fd, self.readable)

    def close(self) -> None:
        """Close the socket and forget the connection (idempotent)."""
        if self.fd < 0:
            return
        self.timer.cancel()
        self.server.loop.remove_reader(self.fd)
        self.server.waiting.pop(self, None)
        self.server.connections.pop(self, None)
        self.fd = -1
        self.sock.close()


class HttpServer:
    """Serves ``handler`` on sockets given to :meth:`serve` (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        *,
        name: str,
        refused: Callable[[str], None] = lambda reason: None,
        header_timeout: float = 5.0,
        write_timeout: float = 30.0,
        max_connections: int = 64,
        max_body: int = 0,
        log: logging.Logger | None = None,
    ) -> None:
        self._handler = handler
        self.name = name
        """What the port is, in log lines ("metrics port", "console")."""
        self._refused = refused
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.max_body = max_body
        self._lines = LogLimiter(
            log or logging.getLogger("meshd.http"), per_key=1, overall=8, window=_LOG_EVERY_S
        )
        self._log = self._lines.log
        self.connections: dict[_Connection, None] = {}  # every open one
        self.waiting: dict[_Connection, None] = {}  # no whole request yet; oldest first
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "serve() first"
        return self._loop

    @property
    def open_connections(self) -> int:
        """Connections open now (read by tests and the log)."""
        return len(self.connections)

    async def serve(self, sock: socket.socket) -> Listening:
        """Start serving the listening socket ``sock`` on the running loop."""
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept, sock)
        return Listening(self._loop, sock)

    async def close_connections(self) -> None:
        """End every open connection (streams included)."""
        tasks = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self, listening: socket.socket) -> None:
        if self._accept_batch(listening):
            # Full, and connections keep coming: a flood. Take the next batch after a pause,
            # so that the flood costs this loop's thread (which shares the interpreter with
            # meshd's xDS loop) a bounded share of its time; the rest wait in the listen
            # backlog, as they would behind a slow server.
            self.loop.remove_reader(listening.fileno())
            self.loop.call_later(_FULL_PAUSE_S, self._resume, listening)

    def _accept_batch(self, listening: socket.socket) -> bool:
        """Accept what is waiting, up to a batch; True when a connection had to make room."""
        evicted = False
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return evicted
            except OSError as e:  # out of descriptors or buffers: pause, as asyncio does
                self._lines.warning("accept", "%s: cannot accept connections: %s", self.name, e)
                self.loop.remove_reader(listening.fileno())
                self.loop.call_later(1.0, self._resume, listening)
                return False
            sock.setblocking(False)
            if len(self.connections) >= self.max_connections:
                evicted = True
                self.refuse("connections", f"over {self.max_connections} open connections")
                oldest = next(iter(self.waiting), None)
                if oldest is None:  # (all are being answered)
                    with contextlib.suppress(OSError):
                        sock.send(response_bytes(503, b"too many connections\n"))
                    sock.close()
                    continue
                oldest.close()
            conn = _Connection(self, sock)
            self.connections[conn] = None
            self.waiting[conn] = None
        return evicted

    def _resume(self, listening: socket.socket) -> None:
        if listening.fileno() >= 0:
            self.loop.add_reader(listening.fileno(), self._accept, listening)

    async def exchange(self, conn: _Connection, request: Request) -> None:
        """Answer ``conn``'s whole ``request`` with the handler's response, then close."""
        try:
            await self._respond(conn, request)
        except asyncio.CancelledError:
            pass  # the client went away from a stream, or the server stops
        except (ConnectionError, TimeoutError):
            pass  # the client went away or did not read in time: nothing more to say
        except Exception:  # a handler failed: say so, keep serving
            self._log.exception("%s: a request failed", self.name)
            with contextlib.suppress(OSError):
                conn.sock.send(response_bytes(500, b"internal error\n"))
        finally:
            conn.close()

    async def _respond(self, conn: _Connection, request: Request) -> None:
        answer = await self._handler(request)
        if isinstance(answer, Response):
            out = response_bytes(answer.status, answer.body, answer.content_type, answer.headers)
            if request.method == "HEAD":
                out = out[: out.index(b"\r\n\r\n") + 4]
            await self._send(conn, out)
            return
        head_bytes = response_bytes(
            200,
            b"",
            answer.content_type,
            [("Cache-Control", "no-store"), *answer.headers],
            length=False,
        )
        conn.watch_for_end()
        await self._send(conn, head_bytes)
        chunks = answer.chunks
        try:
            async for chunk in chunks:
                await self._send(conn, chunk)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _send(self, conn: _Connection, data: bytes) -> None:
        await asyncio.wait_for(self.loop.sock_sendall(conn.sock, data), self.write_timeout)

    def refuse(self, reason: str, why: str) -> None:
        """Count a refusal; log it at most once a minute per reason (the next line says how
        many were held back)."""
        self._refused(reason)
        self._lines.warning(reason, "%s: closed a connection: %s", self.name, why)


def listen_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on ``host:port`` (0: any free port); OSError
    when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
