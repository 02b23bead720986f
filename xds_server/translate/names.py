"""Envoy resource names and type URLs (stable, documented in the README)."""

from __future__ import annotations

from xds_server.model import ServiceRef

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

TYPE_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
"""Push order over ADS: clusters, endpoints, listeners, routes (make before break)."""

SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"}


def cluster_name(ref: ServiceRef, subset: str = "") -> str:
    """``<name>.<ns>`` per service, ``<name>.<ns>|<subset>`` per subset."""
    base = f"{ref.name}.{ref.namespace}"
    return f"{base}|{subset}" if subset else base


def service_host(ref: ServiceRef) -> str:
    """The Host every HTTP listener routes to a service by default."""
    return f"{ref.name}.{ref.namespace}"
