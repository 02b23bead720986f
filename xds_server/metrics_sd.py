"""Prometheus service discovery of proxies (``/sd/envoy`` on the metrics port).

The connected proxies' Envoy admin addresses in Prometheus ``http_sd_config`` JSON, so a
scrape config finds every Envoy without listing them
(``observability/prometheus/prometheus.yml``). A proxy is listed when its node metadata
carries ``admin_port`` (``meshctl bootstrap`` sets it) and the address it declares is its
own (:func:`sd_listable`), and for :data:`DISCONNECTED_KEEP_S` after its stream closed
(:class:`RecentTargets`).

Whatever a proxy declares is its word, so Prometheus would scrape whatever it names: an
address that is not the proxy's own (a cloud metadata service, another tenant's host)
is never listed, and its labels are bounded like every client-chosen label.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from xds_server.metrics_labels import bounded

__all__ = [
    "DISCONNECTED_KEEP_S",
    "ENVOY_METRICS_PATH",
    "MAX_REMEMBERED",
    "ProxyTarget",
    "RecentTargets",
    "sd_document",
    "sd_listable",
]

ENVOY_METRICS_PATH = "/stats/prometheus"

DISCONNECTED_KEEP_S = 600.0
"""Seconds a proxy stays in ``/sd/envoy`` after its stream to this meshd closed."""

MAX_REMEMBERED = 20_000
"""Disconnected proxies remembered at most (the oldest are forgotten first)."""


@dataclass(frozen=True, slots=True)
class ProxyTarget:
    """One proxy as Prometheus should scrape it."""

    admin_address: str
    node_id: str
    node_cluster: str
    protocol: str


def sd_listable(admin_address: str, peer: str) -> bool:
    """True when ``admin_address`` (``host:port``, ``[v6]:port``), which a proxy declared,
    may be published for scraping: its host is the IP the proxy's stream comes from
    (``peer``, as gRPC names it: ``ipv4:10.0.0.5:41234``), or a loopback address declared
    by a proxy whose stream comes from loopback (an Envoy beside meshd). Anything else (a
    name, another host, a link-local metadata service) is not the proxy's to name."""
    host = _host_ip(admin_address.rpartition(":")[0].strip("[]"))
    source = _peer_ip(peer)
    if host is None or source is None:
        return False
    if host == source:
        return True
    return host.is_loopback and source.is_loopback


def _host_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _peer_ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None  # (a unix socket, an in-process channel: nothing to scrape at)
    return _host_ip(rest.rpartition(":")[0].strip("[]"))


class RecentTargets:
    """The proxies to list for scraping: those connected now, and those seen connected in
    the last ``keep_s`` seconds (at most :data:`MAX_REMEMBERED` of them).

    Prometheus scrapes only what ``/sd/envoy`` lists. Were a proxy dropped as soon as its
    stream closes, an Envoy that lost meshd but keeps serving would stop being scraped at
    the next discovery refresh, and its ``envoy_control_plane_connected_state`` of 0 (what
    MeshProxyDisconnected alerts on) would never be seen for long. An Envoy that is gone
    for good just fails its scrapes until it ages out. Thread-safe (the metrics HTTP thread
    asks); ``clock`` is passed in.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        keep_s: float = DISCONNECTED_KEEP_S,
        max_remembered: int = MAX_REMEMBERED,
    ) -> None:
        self._clock = clock
        self.keep_s = keep_s
        self.max_remembered = max_remembered
        self._seen: dict[ProxyTarget, float] = {}  # oldest sighting first
        self._lock = threading.Lock()

    def targets(self, connected: Iterable[ProxyTarget]) -> list[ProxyTarget]:
        """``connected`` (noted as seen now), then the others seen within ``keep_s``."""
        now = self._clock()
        current = list(connected)
        with self._lock:
            for target in current:
                self._seen.pop(target, None)  # (re-inserted: the newest last)
                self._seen[target] = now
            for target, seen in list(self._seen.items()):
                if now - seen > self.keep_s:
                    del self._seen[target]
            listed = set(current)
            over = len(self._seen) - max(self.max_remembered, len(listed))
            for target in list(self._seen):
                if over <= 0:
                    break
                if target not in listed:
                    del self._seen[target]
                    over -= 1
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
                    "node_id": bounded(t.node_id),
                    "node_cluster": bounded(t.node_cluster),
                    "xds_protocol": t.protocol,
                },
            },
        )
    return [groups[k] for k in sorted(groups)]
