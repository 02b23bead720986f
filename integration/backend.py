"""A tiny HTTP backend for demos and tests: answers every path with its own name.

Run it as a program::

    python -m integration.backend --port 8081 --name v1 [--host 127.0.0.1]

(``--port 0`` picks a free port; the first stdout line is always ``listening on HOST:PORT``),
or in-process with :class:`Backend` (a thread), which the demo and the tests use.

Paths:

- any path: ``200`` with body ``"<name>\\n"`` and header ``x-backend: <name>``; subject to
  the delay and failure share set on ``/__control``.
- ``GET /__control?health=fail|ok&fail_percent=P&fail_status=S&delay_ms=N``: change
  behaviour (any subset of the parameters); answers the resulting settings as JSON.
  ``fail_percent`` makes exactly P of every 100 traffic requests answer ``fail_status``
  (default ``503``), evenly spread, not random, so tests see the same share every run.
  Switching ``fail_percent`` between 100 and 0 makes a flapping backend.
- ``GET /health``: ``200`` or ``503`` per the health toggle (for Envoy's active checks).
- ``/__echo``: the request (method, path, headers) as JSON.
- ``GET /__stats``: ``{"requests", "in_flight", "max_in_flight", "health_checks"}``.
- ``GET /__requests``: the last traffic requests (up to 1,000) as JSON, each
  ``{"method", "path", "host", "headers"}``: what a mirror or a header match received.
- ``GET /__ws`` with ``Upgrade: websocket``: a WebSocket (RFC 6455) that echoes every text
  and binary message back, answers pings and closes when the client does (what a route
  with ``websocket`` carries through a proxy). Counted as one traffic request.

``requests`` counts traffic only: every request except ``/__control``, ``/__stats`` and
``/health``, so health checking does not skew split measurements.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Backend", "BackendState", "main"]


class BackendState:
    """Behaviour toggles and counters shared by all handler threads (lock-protected)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.fail_percent = 0
        self.fail_status = 503
        self.delay_ms = 0
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.health_checks = 0
        self.log: deque[dict[str, Any]] = deque(maxlen=1000)
        self._lock = threading.Lock()

    def settings(self) -> dict[str, Any]:
        """Current behaviour toggles as a JSON-ready dict."""
        with self._lock:
            return {
                "name": self.name,
                "health": "ok" if self.healthy else "fail",
                "fail_percent": self.fail_percent,
                "fail_status": self.fail_status,
                "delay_ms": self.delay_ms,
            }

    def configure(
        self,
        health: str | None = None,
        fail_percent: int | None = None,
        delay_ms: int | None = None,
        fail_status: int | None = None,
    ) -> dict[str, Any]:
        """Apply the given toggles (``None`` keeps a value); raise ``ValueError`` if bad."""
        if health is not None and health not in ("ok", "fail"):
            raise ValueError(f"health must be 'ok' or 'fail', not {health!r}")
        if fail_percent is not None and not 0 <= fail_percent <= 100:
            raise ValueError(f"fail_percent must be in 0..100, not {fail_percent}")
        if delay_ms is not None and delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, not {delay_ms}")
        if fail_status is not None and not 200 <= fail_status <= 599:
            raise ValueError(f"fail_status must be in 200..599, not {fail_status}")
        with self._lock:
            if health is not None:
                self.healthy = health == "ok"
            if fail_percent is not None:
                self.fail_percent = fail_percent
            if delay_ms is not None:
                self.delay_ms = delay_ms
            if fail_status is not None:
                self.fail_status = fail_status
        return self.settings()

    def stats(self) -> dict[str, int]:
        """Request counters as a JSON-ready dict."""
        with self._lock:
            return {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "health_checks": self.health_checks,
            }

    def requests_log(self) -> list[dict[str, Any]]:
        """The last traffic requests, oldest first."""
        with self._lock:
            return list(self.log)

    @contextmanager
    def traffic(self, record: dict[str, Any] | None = None) -> Iterator[tuple[bool, float]]:
        """Count one traffic request (logging ``record``); yield (should_fail, delay_seconds)."""
        with self._lock:
            if record is not None:
                self.log.append(record)
            n = self.requests
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            # Request n fails when the running quota floor(n * p / 100) steps up: exactly
            # p failures in every 100 consecutive requests, spread evenly.
            p = self.fail_percent
            fail = (n + 1) * p // 100 > n * p // 100
            delay = self.delay_ms / 1000.0
        try:
            yield fail, delay
        finally:
            with self._lock:
                self.in_flight -= 1

    def count_health_check(self) -> bool:
        """Count one ``/health`` request; return whether the backend is healthy."""
        with self._lock:
            self.health_checks += 1
            return self.healthy


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, and no Nagle: with Nagle plus delayed ACK every proxied request costs ~40 ms.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests send thousands of requests."""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        # Drain any request body so the next request on this connection parses cleanly.
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        state = self.server.state
        url = urlsplit(self.path)
        if url.path == "/__control":
            self._control(state, parse_qs(url.query))
        elif url.path == "/__requests":
            self._send(200, json.dumps(state.requests_log()) + "\n", "application/json")
        elif url.path == "/__stats":
            self._send(200, json.dumps(state.stats()) + "\n", "application/json")
        elif url.path == "/health":
            ok = state.count_health_check()
            self._send(200 if ok else 503, "ok\n" if ok else "unhealthy\n")
        elif url.path == "/__ws" and self.headers.get("upgrade", "").lower() == "websocket":
            with state.traffic({"method": self.command, "path": self.path, "headers": {}}):
                pass
            self._websocket()
        else:
            echo = self._echo()
            record = {k: echo[k] for k in ("method", "path", "headers")}
            record["host"] = echo["headers"].get("host", "")
            # In flight until the answer is decided, not until it is sent: a client that
            # has its answer and then asks /__stats must not still see its request counted.
            with state.traffic(record) as (fail, delay):
                if delay:
                    time.sleep(delay)
            if fail:
                self._send(state.fail_status, f"{state.name} failing\n")
            elif url.path == "/__echo":
                self._send(200, json.dumps(self._echo()) + "\n", "application/json")
            else:
                self._send(200, f"{state.name}\n")

    def _websocket(self) -> None:
        """Accept the upgrade, then echo messages until the client closes (RFC 6455)."""
        key = self.headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        with suppress(ConnectionError, EOFError, OSError):
            while True:
                opcode, payload = _read_frame(self.rfile)
                if opcode == 0x8:  # close: answer it, then hang up
                    self.wfile.write(_frame(0x8, payload[:2]))
                    return
                if opcode == 0x9:  # ping
                    self.wfile.write(_frame(0xA, payload))
                elif opcode in (0x1, 0x2):  # text, binary: echoed as they came
                    self.wfile.write(_frame(opcode, payload))
                self.wfile.flush()

    def _control(self, state: BackendState, query: dict[str, list[str]]) -> None:
        def last(key: str) -> str | None:
            return query[key][-1] if key in query else None

        try:
            fail_percent, delay_ms = last("fail_percent"), last("delay_ms")
            fail_status = last("fail_status")
            settings = state.configure(
                health=last("health"),
                fail_percent=int(fail_percent) if fail_percent is not None else None,
                delay_ms=int(delay_ms) if delay_ms is not None else None,
                fail_status=int(fail_status) if fail_status is not None else None,
            )
        except ValueError as exc:
            self._send(400, json.dumps({"error": str(exc)}) + "\n", "application/json")
            return
        self._send(200, json.dumps(settings) + "\n", "application/json")

    def _echo(self) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            key = key.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        return {
            "backend": self.server.state.name,
            "method": self.command,
            "path": self.path,
            "headers": headers,
        }

    def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("x-backend", self.server.state.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _read_exactly(rfile: Any, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) < n:
        raise EOFError("the WebSocket peer hung up")
    return bytes(data)


def _read_frame(rfile: Any) -> tuple[int, bytes]:
    """(opcode, payload) of one whole message: continuation frames are joined."""
    message = b""
    opcode = 0
    while True:
        b0, b1 = _read_exactly(rfile, 2)
        if b0 & 0x0F:
            opcode = b0 & 0x0F
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", _read_exactly(rfile, 2))
        elif length == 127:
            (length,) = struct.unpack("!Q", _read_exactly(rfile, 8))
        mask = _read_exactly(rfile, 4) if b1 & 0x80 else b"\0\0\0\0"
        data = _read_exactly(rfile, length)
        message += bytes(c ^ mask[i % 4] for i, c in enumerate(data))
        if b0 & 0x80:  # FIN
            return opcode, message


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked (server to client) frame with FIN set."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # bursts of new connections from load tests

    def __init__(self, address: tuple[str, int], state: BackendState) -> None:
        self.state = state
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client (Envoy, a test) dropping its connection is routine, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        """Cut open keep-alive connections, or a stopped backend would go on answering."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Backend:
    """The backend served from a daemon thread of the current process.

    ``port=0`` (default) binds a free port; read it back from :attr:`port`. Use as a context
    manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, name: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.state = BackendState(name)
        self._server = _Server((host, port), self.state)
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8081``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> Backend:
        """Start serving on a daemon thread; return self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"backend-{self.name}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and any open client connection."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.close_connections()
        self._server.server_close()

    def control(
        self,
        health: str | None = None,
        fail_percent: int | None = None,
        delay_ms: int | None = None,
        fail_status: int | None = None,
    ) -> dict[str, Any]:
        """Same as ``GET /__control``, without the HTTP round trip."""
        return self.state.configure(
            health=health, fail_percent=fail_percent, delay_ms=delay_ms, fail_status=fail_status
        )

    def requests_log(self) -> list[dict[str, Any]]:
        """Same as ``GET /__requests``."""
        return self.state.requests_log()

    def stats(self) -> dict[str, int]:
        """Same as ``GET /__stats``."""
        return self.state.stats()

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="Tiny HTTP backend that answers its name.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--name", required=True, help="body and x-backend header value")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    backend = Backend(args.name, port=args.port, host=args.host)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backend.start()
    # The parent (see integration.harness.BackendProcess) reads this line to learn the port.
    print(f"listening on {backend.host}:{backend.port}", flush=True)
    while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
