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
    "Request",
    "Response",
    "Streamed",
    "listen_socket",
    "response_bytes",
]

MAX_HEADER_BYTES = 16 * 1024
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
        self.open_connections = 0
        """Connections open now (read by tests and the log)."""
        self._lines = LogLimiter(
            log or logging.getLogger("meshd.http"), per_key=1, overall=8, window=_LOG_EVERY_S
        )
        self._log = self._lines.log
        self._waiting: dict[asyncio.Task[None], None] = {}  # no request yet; oldest first
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, sock: socket.socket) -> asyncio.Server:
        """Start serving the listening socket ``sock`` on the running loop."""
        return await asyncio.start_server(self._connection, sock=sock, limit=MAX_HEADER_BYTES)

    async def close_connections(self) -> None:
        """End every open connection (streams included)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self.max_connections:
            self.refuse("connections", f"over {self.max_connections} open connections")
            waiting = next(iter(self._waiting), None)
            if waiting is None:  # (all are being answered)
                writer.write(response_bytes(503, b"too many connections\n"))
                writer.close()
                return
            self._waiting.pop(waiting)
            waiting.cancel()
        self.open_connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            self._waiting[task] = None
            await self._exchange(reader, writer)
        except asyncio.CancelledError:
            pass  # evicted for a newer connection, or the server stops
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        except TimeoutError:
            pass  # a response the client did not read in time
        except Exception:  # a handler failed: say so, keep serving
            self._log.exception("%s: a request failed", self.name)
            with contextlib.suppress(Exception):
                writer.write(response_bytes(500, b"internal error\n"))
        finally:
            self._waiting.pop(task, None)
            self._tasks.discard(task)
            self.open_connections -= 1
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
        except TimeoutError:
            self.refuse("timeout", f"no request headers within {self.header_timeout:g} s")
            return
        except asyncio.LimitOverrunError:
            self.refuse("bad_request", f"request headers over {MAX_HEADER_BYTES} bytes")
            await self._send(writer, response_bytes(431, b"request headers too large\n"))
            return
        parsed = parse_head(head)
        if parsed is None:
            self.refuse("bad_request", "not an HTTP request")
            await self._send(writer, response_bytes(400, b"bad request\n"))
            return
        method, target, headers = parsed
        body = b""
        length = headers.get("content-length", "0")
        if not length.isdigit() or "transfer-encoding" in headers:
            await self._send(writer, response_bytes(400, b"a body needs a Content-Length\n"))
            return
        if int(length) > self.max_body:
            self.refuse("bad_request", f"a body of {length} bytes, over {self.max_body}")
            await self._send(writer, response_bytes(413, b"request body too large\n"))
            return
        if int(length):
            try:
                body = await asyncio.wait_for(reader.readexactly(int(length)), self.header_timeout)
            except TimeoutError:
                self.refuse("timeout", f"no request body within {self.header_timeout:g} s")
                return
        self._waiting.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        answer = await self._handler(Request(method, target, headers, body, where))
        if isinstance(answer, Response):
            out = response_bytes(answer.status, answer.body, answer.content_type, answer.headers)
            if method == "HEAD":
                out = out[: out.index(b"\r\n\r\n") + 4]
            await self._send(writer, out)
            return
        head_bytes = response_bytes(
            200,
            b"",
            answer.content_type,
            [("Cache-Control", "no-store"), *answer.headers],
            length=False,
        )
        await self._send(writer, head_bytes)
        chunks = answer.chunks
        try:
            async for chunk in chunks:
                await self._send(writer, chunk)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.write_timeout)

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
