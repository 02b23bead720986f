"""Every Prometheus metric meshd exports, in one place.

Each :class:`Metrics` owns its own ``CollectorRegistry`` so that several
control planes can run in one process (tests start and restart meshd in
process); the ``/metrics`` endpoint serves that registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """meshd's metrics, named the Prometheus way (base units, ``_total`` counters)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connected_proxies = Gauge(
            "meshd_connected_proxies",
            "xDS streams currently open, by node cluster and protocol (sotw, delta)",
            ["node_cluster", "protocol"],
            registry=r,
        )
        self.pushes = Counter(
            "meshd_xds_pushes_total",
            "DiscoveryResponses sent, by resource type",
            ["type"],
            registry=r,
        )
        self.push_bytes = Counter(
            "meshd_xds_push_bytes_total",
            "Bytes of resources sent, by resource type",
            ["type"],
            registry=r,
        )
        self.nacks = Counter(
            "meshd_xds_nacks_total",
            "Responses rejected by proxies, by resource type",
            ["type"],
            registry=r,
        )
        self.requests = Counter(
            "meshd_xds_requests_total",
            "DiscoveryRequests received, by type and kind (initial, ack, nack, stale, update)",
            ["type", "kind"],
            registry=r,
        )
        self.push_latency = Histogram(
            "meshd_xds_push_latency_seconds",
            "Time from a registry change reaching meshd to the response being written",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.translate_seconds = Histogram(
            "meshd_translate_seconds",
            "Time to validate, translate and cache one batch of registry updates",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.registry_revision = Gauge(
            "meshd_registry_revision", "etcd revision of the registry state in force", registry=r
        )
        self.rejected_entries = Gauge(
            "meshd_registry_rejected_entries",
            "Registry entries currently rejected, by kind",
            ["kind"],
            registry=r,
        )
        self.registry_errors = Counter(
            "meshd_registry_errors_total", "Errors talking to the registry (etcd)", registry=r
        )
        self.registry_connected = Gauge(
            "meshd_registry_connected", "1 while the registry watch is established", registry=r
        )
        self.resources = Gauge(
            "meshd_resources", "Envoy resources in the cache, by type", ["type"], registry=r
        )
