"""meshd's metrics HTTP server: ``/metrics`` and Prometheus service discovery of proxies.

- ``/metrics``: meshd's own metrics (Prometheus text format).
- ``/sd/envoy``: the connected proxies' Envoy admin addresses in Prometheus
  ``http_sd_config`` JSON, so a scrape config finds every Envoy without listing
  them (``observability/prometheus/prometheus.yml``). A proxy is listed when its
  node metadata carries ``admin_port`` (``meshctl bootstrap`` sets it), and for
  :data:`DISCONNECTED_KEEP_S` after its stream closed (:class:`RecentTargets`).

It runs in a daemon thread (like ``prometheus_client.start_http_server``), so
scrapes never wait for the event loop; what it reads of the streams it copies
first.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

SD_PATH = "/sd/envoy"
ENVOY_METRICS_PATH = "/stats/prometheus"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True, slots=True)
class ProxyTarget:
    """One proxy as Prometheus should scrape it."""

    admin_address: str
    node_id: str
    node_cluster: str
    protocol: str


DISCONNECTED_KEEP_S = 600.0
"""Seconds a proxy stays in ``/sd/envoy`` after its stream to this meshd closed."""


class RecentTargets:
    """The proxies to list for scraping: those connected now, and those seen connected in
    the last ``keep_s`` seconds.

    Prometheus scrapes only what ``/sd/envoy`` lists. Were a proxy dropped as soon as its
    stream closes, an Envoy that lost meshd but keeps serving would stop being scraped at
    the next discovery refresh, and its ``envoy_control_plane_connected_state`` of 0 (what
    MeshProxyDisconnected alerts on) would never be seen for long. An Envoy that is gone
    for good just fails its scrapes until it ages out. Thread-safe (the metrics HTTP thread
    asks); ``clock`` is passed in.
    """

    def __init__(self, clock: Callable[[], float], keep_s: float = DISCONNECTED_KEEP_S) -> None:
        self._clock = clock
        self.keep_s = keep_s
        self._seen: dict[ProxyTarget, float] = {}
        self._lock = threading.Lock()

    def targets(self, connected: Iterable[ProxyTarget]) -> list[ProxyTarget]:
        """``connected`` (noted as seen now), then the others seen within ``keep_s``."""
        now = self._clock()
        current = list(connected)
        with self._lock:
            for target in current:
                self._seen[target] = now
            for target, seen in list(self._seen.items()):
                if now - seen > self.keep_s:
                    del self._seen[target]
            listed = set(current)
            recent = [t for t in self._seen if t not in listed]
        return current + recent


def sd_document(targets: Iterable[ProxyTarget]) -> list[dict[str, Any]]:
    """Prometheus ``http_sd`` JSON: one target group per proxy admin address."""
    groups: dict[str, dict[str, Any]] = {}
    for t in targets:
        groups.setdefault(
            t.admin_address,
            {
                "targets": [t.admin_address],
                "labels": {
                    "__metrics_path__": ENVOY_METRICS_PATH,
                    "node_id": t.node_id,
                    "node_cluster": t.node_cluster,
                    "xds_protocol": t.protocol,
                },
            },
        )
    return [groups[k] for k in sorted(groups)]


class MetricsServer:
    """Serves ``/metrics`` from ``registry`` and ``/sd/envoy`` from ``proxies()``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        proxies: Callable[[], Iterable[ProxyTarget]],
    ) -> None:
        self._metrics_app = make_wsgi_app(registry)
        self._proxies = proxies
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("metrics server not started")
        return int(self._httpd.server_port)

    def start(self, host: str, port: int) -> MetricsServer:
        """Listen on ``host:port`` (0: any free port) and serve in a daemon thread."""

        class Server(ThreadingWSGIServer):
            address_family = _family(host)

        self._httpd = make_server(host, port, self._app, Server, handler_class=_SilentHandler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == SD_PATH:
            try:
                body = json.dumps(sd_document(self._proxies()), indent=1).encode()
            except RuntimeError:  # a stream dict changed under us: answer, Prometheus retries
                body = b"[]"
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return iter([body])
        result: Iterator[bytes] = self._metrics_app(environ, start_response)
        return result


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
