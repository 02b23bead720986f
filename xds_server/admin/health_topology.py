"""Bodies of the admin API's health and topology RPCs: GetHealth, GetTopology,
GetRecommendations, GetServiceMetrics. No I/O: they read
:class:`~xds_server.health.hds.HealthService` and
:class:`~xds_server.topology.lrs.TopologyService` (``app.health`` / ``app.topology``).

Reads need the viewer role. What a caller sees is filtered by its namespaces like
ListEntries filters entries: a service outside them is left out of a listing and refused
(PERMISSION_DENIED) when named. Proxy groups (``gateway``: a node cluster that is no
service) have no namespace and are visible to every valid token, like listeners. An
endpoint's health checkers are node ids: only those of proxies the caller sees are listed
(its own sidecars and gateways, :mod:`~xds_server.admin.proxy_view`).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Principal, require
from xds_server.admin.errors import AdminError, invalid
from xds_server.errors import ValidationError
from xds_server.health.aggregate import Status
from xds_server.health.hds import HealthService
from xds_server.health.monitor import ServiceHealth
from xds_server.model import ServiceRef
from xds_server.model.names import DEFAULT_NAMESPACE, check_label
from xds_server.topology.graph import Graph, Recommendation, ServiceRed
from xds_server.topology.load import EndpointRate
from xds_server.topology.lrs import TopologyService

__all__ = [
    "get_health",
    "get_recommendations",
    "get_service_metrics",
    "get_topology",
    "window_of",
]

STATUS_TO_PB: dict[Status, pb.HealthStatus] = {
    Status.HEALTHY: pb.HEALTH_STATUS_HEALTHY,
    Status.UNHEALTHY: pb.HEALTH_STATUS_UNHEALTHY,
    Status.UNKNOWN: pb.HEALTH_STATUS_UNKNOWN,
    Status.DRAINING: pb.HEALTH_STATUS_DRAINING,
}
ACTION_TO_PB: dict[str, pb.ScalingAction] = {
    "ok": pb.SCALING_ACTION_OK,
    "scale_up": pb.SCALING_ACTION_SCALE_UP,
    "scale_down": pb.SCALING_ACTION_SCALE_DOWN,
}


def _unavailable(what: str) -> AdminError:
    return AdminError(grpc.StatusCode.UNAVAILABLE, f"{what} is not available on this meshd")


def service_filter(service: str, namespace: str) -> ServiceRef | None:
    """The service a GetHealthRequest names (None: all); INVALID_ARGUMENT when malformed."""
    if not service:
        return None
    if service.count("/") > 1:
        raise invalid("", "service", f"{service!r} must be 'name' or 'namespace/name'")
    ns, _, name = service.rpartition("/")
    if ns and namespace and ns != namespace:
        raise invalid("", "namespace", f"{namespace!r} contradicts service {service!r}")
    ref = ServiceRef(ns or namespace or DEFAULT_NAMESPACE, name)
    try:
        check_label(ref.namespace, "service")
        check_label(ref.name, "service")
    except ValidationError as exc:
        raise invalid("", exc.field, exc.reason) from None
    return ref


def get_health(
    health: HealthService | None,
    who: Principal,
    request: pb.GetHealthRequest,
    shows_node: Callable[[str], bool] = lambda node_id: True,
) -> pb.GetHealthResponse:
    """Aggregated health of the services the request selects and the caller may read;
    an endpoint's checkers are only the proxies ``shows_node`` lets the caller see (a
    checker may be another namespace's sidecar)."""
    if health is None:
        raise _unavailable("health aggregation")
    ref = service_filter(request.service, request.namespace)
    if ref is not None:
        where = f"health/{ref}"
        require(who, "read", ref.namespace, where)
        found = health.services(str(ref))
        if not found:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"service {ref}: not found")
    else:
        if request.namespace:
            require(who, "read", request.namespace, f"health/{request.namespace}")
        found = [
            sh
            for sh in health.services()
            if (not request.namespace or _namespace(sh.service) == request.namespace)
            and who.may("read", _namespace(sh.service))
        ]
    out = pb.GetHealthResponse()
    for sh in found:
        out.services.append(service_health(sh, health, shows_node))
    return out


def service_health(
    sh: ServiceHealth,
    health: HealthService,
    shows_node: Callable[[str], bool] = lambda node_id: True,
) -> pb.ServiceHealth:
    """The API form of one service's :class:`ServiceHealth` (checkers: those
    ``shows_node`` admits)."""
    ns, _, name = sh.service.partition("/")
    msg = pb.ServiceHealth(
        namespace=ns,
        name=name,
        healthy=sh.healthy,
        total=sh.total,
        check_mode=sh.mode,
        all_unhealthy=health.monitor.all_unhealthy(ServiceRef(ns, name)),
    )
    for zone in sorted(sh.zones):
        healthy, total = sh.zones[zone]
        msg.zones.append(pb.ZoneHealth(zone=zone, healthy=healthy, total=total))
    for ep in sh.endpoints:
        msg.endpoints.append(
            pb.EndpointHealth(
                id=ep.endpoint_id,
                zone=ep.zone,
                address=ep.address,
                status=STATUS_TO_PB[ep.status],
                checkers=[c for c in ep.checkers if shows_node(c)],
                healthy_reports=ep.healthy_reports,
                unhealthy_reports=ep.unhealthy_reports,
            )
        )
    return msg


def window_of(topology: TopologyService, seconds: int) -> float | None:
    """The window a request asks for (None: the default); INVALID_ARGUMENT beyond what
    meshd keeps (older samples are pruned, so a longer window would silently mean less)."""
    if seconds == 0:
        return None
    horizon = int(topology.tracker.horizon)
    if seconds > horizon:
        raise invalid("", "window_seconds", f"must be at most {horizon}, got {seconds}")
    return float(seconds)


def _namespace(node: str) -> str:
    return node.partition("/")[0]


def get_topology(
    topology: TopologyService | None, who: Principal, request: pb.GetTopologyRequest
) -> pb.GetTopologyResponse:
    """The service graph, less the services outside the caller's namespaces (and their
    edges: an edge is shown only when the caller may see both ends)."""
    if topology is None:
        raise _unavailable("the topology")
    graph = topology.graph(window_of(topology, request.window_seconds))
    return graph_message(graph, _services(topology), who)


def _services(topology: TopologyService) -> set[str]:
    state = topology.state
    return {str(ref) for ref in state.services} if state is not None else set()


def graph_message(graph: Graph, services: set[str], who: Principal) -> pb.GetTopologyResponse:
    """The API form of a :class:`Graph`, filtered for ``who``."""

    def visible(node: str) -> bool:
        # A proxy group has no namespace: "" reads like a listener (every token sees it).
        return who.may("read", _namespace(node) if node in services else "")

    out = pb.GetTopologyResponse(window_seconds=graph.window)
    for node in graph.nodes:
        if visible(node):
            kind = pb.NODE_KIND_SERVICE if node in services else pb.NODE_KIND_PROXY_GROUP
            out.nodes.append(pb.TopologyNode(id=node, kind=kind))
    for e in graph.edges:
        if visible(e.source) and visible(e.destination):
            out.edges.append(
                pb.TopologyEdge(
                    source=e.source,
                    destination=e.destination,
                    rps=e.rps,
                    error_rate=e.error_rate,
                    in_flight=max(0, e.in_flight),
                    allowed=e.allowed,
                    idle=e.idle,
                    endpoints=[endpoint_load(ep) for ep in e.endpoints],
                )
            )
    return out


def endpoint_load(ep: EndpointRate) -> pb.EndpointLoad:
    """The API form of one upstream endpoint's traffic."""
    return pb.EndpointLoad(
        subset=ep.subset,
        endpoint=ep.endpoint,
        rps=ep.rps,
        error_rate=ep.error_rate,
        in_flight=max(0, ep.in_flight),
    )


def get_service_metrics(
    topology: TopologyService | None, who: Principal, request: pb.GetServiceMetricsRequest
) -> pb.GetServiceMetricsResponse:
    """RED per service over the window, selected and filtered like GetHealth: naming a
    service (or namespace) outside the caller's namespaces is PERMISSION_DENIED, an
    unknown service NOT_FOUND, and a listing leaves out what the caller may not read."""
    if topology is None:
        raise _unavailable("the topology")
    ref = service_filter(request.service, request.namespace)
    window = window_of(topology, request.window_seconds)
    if ref is not None:
        require(who, "read", ref.namespace, f"metrics/{ref}")
        if ref not in (topology.state.services if topology.state is not None else {}):
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"service {ref}: not found")
        found = topology.red(str(ref), window)
    else:
        if request.namespace:
            require(who, "read", request.namespace, f"metrics/{request.namespace}")
        found = [
            r
            for r in topology.red(window=window)
            if (not request.namespace or _namespace(r.service) == request.namespace)
            and who.may("read", _namespace(r.service))
        ]
    out = pb.GetServiceMetricsResponse(window_seconds=window or topology.window)
    for r in found:
        out.services.append(service_metrics(r))
    return out


def service_metrics(r: ServiceRed) -> pb.ServiceMetrics:
    """The API form of one service's :class:`ServiceRed`."""
    ns, _, name = r.service.partition("/")
    msg = pb.ServiceMetrics(
        namespace=ns,
        name=name,
        rps=r.rps,
        error_rps=r.error_rps,
        error_rate=r.error_rate,
        in_flight=max(0, r.in_flight),
        endpoints=[endpoint_load(ep) for ep in r.endpoints],
    )
    if r.duration_ms is not None:  # never today (LRS has no latency): left unset, not 0
        msg.duration_ms = r.duration_ms
    return msg


def get_recommendations(
    topology: TopologyService | None, who: Principal, request: pb.GetRecommendationsRequest
) -> pb.GetRecommendationsResponse:
    """Scaling advice for the services with ``scaling`` the caller may read."""
    if topology is None:
        raise _unavailable("the topology")
    window = window_of(topology, request.window_seconds)
    recs = topology.recommend(window)
    out = pb.GetRecommendationsResponse(window_seconds=window or topology.window)
    for rec in recs:
        ns, _, name = rec.service.partition("/")
        if who.may("read", ns):
            out.services.append(
                pb.ServiceRecommendation(namespace=ns, name=name, scaling=scaling(rec))
            )
    return out


def scaling(rec: Recommendation) -> pb.Scaling:
    return pb.Scaling(
        observed_rps=rec.observed_rps,
        target_rps_per_endpoint=rec.target_rps_per_endpoint,
        current_endpoints=rec.current_endpoints,
        recommended_endpoints=rec.recommended_endpoints,
        action=ACTION_TO_PB[rec.action],
    )
