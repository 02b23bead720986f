"""meshd's metrics HTTP server: ``/metrics`` and ``/sd/envoy`` (see :mod:`metrics_sd`).

- ``GET /metrics``: meshd's own metrics (Prometheus text, OpenMetrics when asked; gzip
  when accepted; ``?name[]=`` selects families), every label value bounded by the
  registry's :class:`~xds_server.metrics_labels.LabelGuard`.
- ``GET /sd/envoy``: the proxies to scrape, Prometheus ``http_sd`` JSON.
- Anything else: 404 (an unknown path), 405 (a method other than GET/HEAD), 400 (not
  HTTP), 431 (headers over :data:`MAX_HEADER_BYTES`).

It runs on an asyncio loop of its own, in one daemon thread, so a scrape never waits for
meshd's xDS loop and never holds it: open connections cost a coroutine each, not a
thread. Each connection has :attr:`MetricsServer.header_timeout` seconds to send its
request headers (a half-open or silent connection is closed then); at most
:attr:`MetricsServer.max_connections` are open at once (more are answered 503 and
closed); one request per connection (``Connection: close``). Pages are rendered in a
small worker pool (:attr:`MetricsServer.max_renders` at a time): a big registry's page
takes a good part of a second of CPU, and the loop must keep timing connections out
meanwhile; concurrent scrapes wait their turn rather than each building a page at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import _bake_output
from prometheus_client.registry import Collector

from xds_server.metrics_labels import LabelGuard
from xds_server.metrics_sd import ProxyTarget, sd_document

__all__ = [
    "HEADER_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "METRICS_PATH",
    "SD_PATH",
    "GuardedRegistry",
    "MetricsServer",
]

log = logging.getLogger("meshd.metrics")

METRICS_PATH = "/metrics"
SD_PATH = "/sd/envoy"
HEADER_TIMEOUT_S = 5.0
"""Seconds a connection has to send its request line and headers."""
WRITE_TIMEOUT_S = 30.0
"""Seconds a response may take to be read by the client before the connection is cut."""
MAX_CONNECTIONS = 64
"""Connections open at once (Prometheus uses one or two per server)."""
MAX_RENDERS = 2
"""Pages rendered at once; further scrapes wait for one of them."""
MAX_HEADER_BYTES = 16 * 1024
_LOG_EVERY_S = 60.0


class GuardedRegistry(Collector):
    """``registry`` as ``/metrics`` renders it: every family through ``guard`` (also when
    a scrape names the families it wants)."""

    def __init__(self, registry: Any, guard: LabelGuard) -> None:
        self._registry = registry
        self._guard = guard

    def collect(self) -> Iterator[Any]:
        return self._guard.metrics(self._registry.collect())

    def restricted_registry(self, names: Iterable[str]) -> GuardedRegistry:
        """Only the families named (prometheus_client's ``name[]`` query)."""
        return GuardedRegistry(self._registry.restricted_registry(names), self._guard)


class MetricsServer:
    """Serves ``/metrics`` from ``registry`` and ``/sd/envoy`` from ``proxies()``.

    ``refused(reason)`` is told of each connection closed for a limit (``connections``,
    ``timeout``, ``bad_request``); ``guard`` bounds the rendered label values.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        proxies: Callable[[], Iterable[ProxyTarget]],
        *,
        guard: LabelGuard | None = None,
        refused: Callable[[str], None] = lambda reason: None,
        header_timeout: float = HEADER_TIMEOUT_S,
        write_timeout: float = WRITE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        max_renders: int = MAX_RENDERS,
    ) -> None:
        self._registry: Any = registry if guard is None else GuardedRegistry(registry, guard)
        self._proxies = proxies
        self._refused = refused
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.max_renders = max_renders
        self.open_connections = 0
        """Connections open now (read by tests and the log)."""
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._stopped: asyncio.Event | None = None
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (last logged, unlogged)
        self._waiting: dict[asyncio.Task[None], None] = {}  # no request yet; oldest first

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("metrics server not started")
        return int(self._sock.getsockname()[1])

    def start(self, host: str, port: int) -> MetricsServer:
        """Listen on ``host:port`` (0: any free port; raises OSError when it cannot) and
        serve from a daemon thread."""
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
        self._sock = sock
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.max_renders, thread_name_prefix="metrics-render"
        )
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready), name="metrics-http", daemon=True
        )
        self._thread.start()
        ready.wait()
        return self

    def stop(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None:
            with contextlib.suppress(RuntimeError):  # (its loop already closed)
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ----------------------------------------------------------------- the loop's thread

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(sock, ready))
        finally:
            loop.close()

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=sock, limit=MAX_HEADER_BYTES)
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self.max_connections:
            # The oldest connection that has not sent its request yet makes room: a flood of
            # silent connections cannot keep a scraper, which asks at once, out.
            self._refuse("connections", f"over {self.max_connections} open connections")
            waiting = next(iter(self._waiting), None)
            if waiting is None:  # (all are being answered)
                writer.write(_response(503, b"too many connections\n"))
                writer.close()
                return
            self._waiting.pop(waiting)
            waiting.cancel()
        self.open_connections += 1
        task = asyncio.current_task()
        try:
            assert task is not None
            self._waiting[task] = None
            await self._exchange(reader, writer)
        except asyncio.CancelledError:
            if self._stopped is not None and self._stopped.is_set():
                raise
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        except TimeoutError:
            pass  # a response the client did not read in time
        except Exception:  # a collector failed: say so, keep serving
            log.exception("metrics port: a request failed")
            with contextlib.suppress(Exception):
                writer.write(_response(500, b"internal error\n"))
        finally:
            self._waiting.pop(task, None)  # type: ignore[arg-type]
            self.open_connections -= 1
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
        except TimeoutError:
            self._refuse("timeout", f"no request headers within {self.header_timeout:g} s")
            return
        except asyncio.LimitOverrunError:
            self._refuse("bad_request", f"request headers over {MAX_HEADER_BYTES} bytes")
            await self._send(writer, _response(431, b"request headers too large\n"))
            return
        self._waiting.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        request = _parse(head)
        if request is None:
            self._refuse("bad_request", "not an HTTP request")
            await self._send(writer, _response(400, b"bad request\n"))
            return
        method, target, headers = request
        if method not in ("GET", "HEAD"):
            await self._send(writer, _response(405, b"method not allowed\n", allow="GET, HEAD"))
            return
        url = urlsplit(target)
        loop = asyncio.get_running_loop()
        if url.path == METRICS_PATH:
            params = parse_qs(url.query)
            status, kind, extra, body = await loop.run_in_executor(
                self._pool, self._render_metrics, headers, params
            )
        elif url.path == SD_PATH:
            status, kind, extra, body = await loop.run_in_executor(self._pool, self._render_sd)
        else:
            status, kind, extra, body = 404, "text/plain", [], _not_found(url.path)
        out = _response(status, body, kind, extra=extra)
        if method == "HEAD":
            out = out[: out.index(b"\r\n\r\n") + 4]
        await self._send(writer, out)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.write_timeout)

    def _refuse(self, reason: str, why: str) -> None:
        """Count a refusal; log it at most once a minute per reason (with how many went
        unlogged meanwhile)."""
        self._refused(reason)
        now = time.monotonic()
        last, unlogged = self._logged.get(reason, (-_LOG_EVERY_S, 0))
        if now - last < _LOG_EVERY_S:
            self._logged[reason] = (last, unlogged + 1)
            return
        self._logged[reason] = (now, 0)
        more = f" (and {unlogged} more since the last such line)" if unlogged else ""
        log.warning("metrics port: closed a connection: %s%s", why, more)

    # ----------------------------------------------------------------- worker threads

    def _render_metrics(
        self, headers: dict[str, str], params: dict[str, list[str]]
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        _, out_headers, body = _bake_output(  # type: ignore[no-untyped-call]
            self._registry,
            headers.get("accept", ""),
            headers.get("accept-encoding", ""),
            params,
            False,
        )
        kind = dict(out_headers)["Content-Type"]
        extra = [(k, v) for k, v in out_headers if k != "Content-Type"]
        return 200, kind, extra, body

    def _render_sd(self) -> tuple[int, str, list[tuple[str, str]], bytes]:
        try:
            body = json.dumps(sd_document(self._proxies()), indent=1).encode()
        except RuntimeError:  # a stream dict changed under us: answer, Prometheus retries
            body = b"[]"
        return 200, "application/json", [], body


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _response(
    status: int,
    body: bytes,
    kind: str = "text/plain; charset=utf-8",
    *,
    extra: list[tuple[str, str]] | None = None,
    allow: str | None = None,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {kind}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in extra or ()]
    if allow:
        lines.append(f"Allow: {allow}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse(head: bytes) -> tuple[str, str, dict[str, str]] | None:
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


def _not_found(path: str) -> bytes:
    return f"not found: {path[:100]!r}; this port serves {METRICS_PATH} and {SD_PATH}\n".encode()
