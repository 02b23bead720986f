"""The xDS resource types meshd serves: type URLs, their push order, short names."""

from __future__ import annotations

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

TYPE_ORDER: tuple[str, ...] = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
"""Push order over ADS: secrets, clusters, endpoints, listeners, routes (make before
break; Envoy warms a cluster or listener until the secrets it names over SDS arrive, so
they go first)."""

SHORT = {SECRET: "SDS", CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"}

XDS_CLUSTER = "xds_cluster"
"""Name of the bootstrap's static cluster that carries the ADS stream to meshd (proxies
report load on it too; it is no service's)."""
