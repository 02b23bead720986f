"""meshd's metrics HTTP server: ``/metrics`` and ``/sd/envoy`` (see :mod:`metrics_sd`).

- ``GET /metrics``: meshd's own metrics (Prometheus text, OpenMetrics when asked; gzip
  when accepted; ``?name[]=`` selects families), every label value bounded by the
  registry's :class:`~xds_server.metrics_labels.LabelGuard`.
- ``GET /sd/envoy``: the proxies to scrape, Prometheus ``http_sd`` JSON.
- Anything else: 404 (an unknown path), 405 (a method other than GET/HEAD), 400 (not
  HTTP), 431 (headers too large), 413 (a body).

It runs on an asyncio loop of its own, in one daemon thread, so a scrape never waits for
meshd's xDS loop and never holds it: open connections cost a coroutine each, not a
thread. The connection limits (header timeout, connections open at once, one request per
connection) are those of :class:`~xds_server.http_server.HttpServer`. Pages are rendered in a
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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import _bake_output
from prometheus_client.registry import Collector

from xds_server.http_server import HttpServer, Request, Response, listen_socket
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
        self.max_renders = max_renders
        self._http = HttpServer(
            self._handle,
            name="metrics port",
            refused=refused,
            header_timeout=header_timeout,
            write_timeout=write_timeout,
            max_connections=max_connections,
            log=log,
        )
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def open_connections(self) -> int:
        """Connections open now (read by tests and the log)."""
        return self._http.open_connections

    @property
    def header_timeout(self) -> float:
        return self._http.header_timeout

    @property
    def max_connections(self) -> int:
        return self._http.max_connections

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("metrics server not started")
        return int(self._sock.getsockname()[1])

    def start(self, host: str, port: int) -> MetricsServer:
        """Listen on ``host:port`` (0: any free port; raises OSError when it cannot) and
        serve from a daemon thread."""
        sock = listen_socket(host, port)
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
        server = await self._http.serve(sock)
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.close()
            await self._http.close_connections()

    async def _handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD")])
        loop = asyncio.get_running_loop()
        path = request.path
        if path == METRICS_PATH:
            return await loop.run_in_executor(
                self._pool, self._render_metrics, request.headers, request.query
            )
        if path == SD_PATH:
            return await loop.run_in_executor(self._pool, self._render_sd)
        return Response(404, _not_found(path))

    # ----------------------------------------------------------------- worker threads

    def _render_metrics(self, headers: dict[str, str], params: dict[str, list[str]]) -> Response:
        _, out_headers, body = _bake_output(  # type: ignore[no-untyped-call]
            self._registry,
            headers.get("accept", ""),
            headers.get("accept-encoding", ""),
            params,
            False,
        )
        kind = dict(out_headers)["Content-Type"]
        extra = [(k, v) for k, v in out_headers if k != "Content-Type"]
        return Response(200, body, kind, extra)

    def _render_sd(self) -> Response:
        try:
            body = json.dumps(sd_document(self._proxies()), indent=1).encode()
        except RuntimeError:  # a stream dict changed under us: answer, Prometheus retries
            body = b"[]"
        return Response(200, body, "application/json")


def _not_found(path: str) -> bytes:
    return f"not found: {path[:100]!r}; this port serves {METRICS_PATH} and {SD_PATH}\n".encode()
