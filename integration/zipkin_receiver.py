"""A small Zipkin collector stand-in: takes spans the way a real Zipkin does, keeps them.

It speaks Zipkin's v2 HTTP API, which Envoy's Zipkin tracer (``HTTP_JSON``) uses:

- ``POST /api/v2/spans``: a JSON array of spans (``traceId``, ``id``, ``name``,
  ``kind``, ``localEndpoint.serviceName``, ``tags``...); answers 202 like Zipkin.
  A body that is not a JSON array of objects is answered 400 with the reason.
- ``GET /api/v2/spans``: the spans received so far, as one JSON array (for people
  and scripts; real Zipkin's GET API is richer).

Run it by hand next to ``make demo``: ``python -m integration.zipkin_receiver --port 9411``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SPANS_PATH = "/api/v2/spans"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # Envoy keeps its collector connection alive
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests and the demo read spans, not access logs

    def do_POST(self) -> None:
        body = self._body()
        if self.path.split("?", 1)[0] != SPANS_PATH:
            self._send(404, {"error": f"no such path {self.path}; spans go to {SPANS_PATH}"})
            return
        try:
            spans = json.loads(body)
        except ValueError as exc:
            self._send(400, {"error": f"body is not JSON: {exc}"})
            return
        if not isinstance(spans, list) or not all(isinstance(s, dict) for s in spans):
            self._send(400, {"error": "body must be a JSON array of span objects"})
            return
        self.server.add(spans)
        self._send(202, None)

    def _body(self) -> bytes:
        # Envoy's Zipkin reporter streams its batch with chunked transfer encoding.
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != SPANS_PATH:
            self._send(404, {"error": f"no such path {self.path}"})
            return
        self._send(200, self.server.spans())

    def _send(self, status: int, doc: object) -> None:
        data = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self._lock = threading.Lock()
        self._spans: list[dict[str, Any]] = []
        self.posts = 0

    def add(self, spans: list[dict[str, Any]]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.posts += 1

    def spans(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._spans)


class ZipkinReceiver:
    """The receiver on ``host:port`` (0: a free port), serving from a daemon thread."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._server = _Server((host, port))
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="zipkin-receiver", daemon=True
        )

    def start(self) -> ZipkinReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ZipkinReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def posts(self) -> int:
        """How many POSTs of spans were accepted."""
        return self._server.posts

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far, in arrival order."""
        return self._server.spans()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9411)
    args = parser.parse_args(argv)
    receiver = ZipkinReceiver(args.port, args.host)
    print(f"zipkin receiver on http://{args.host}:{receiver.port}{SPANS_PATH}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        receiver._server.serve_forever()


if __name__ == "__main__":
    main()
