"""Service endpoints -> ClusterLoadAssignments (one per cluster). Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from xds_server.model import Endpoint, Service
from xds_server.translate.names import ENDPOINT, cluster_name
from xds_server.translate.resource import Resource, make_resource

Resolver = Callable[[str], tuple[str, ...]]
"""Maps a DNS name to the addresses it currently resolves to (empty: unresolved)."""


def _no_dns(name: str) -> tuple[str, ...]:
    return ()


def build_cla(
    name: str,
    service: Service,
    endpoints: Iterable[Endpoint],
    resolve: Resolver = _no_dns,
    health: Mapping[str, int] | None = None,
) -> endpoint_pb2.ClusterLoadAssignment:
    """The ClusterLoadAssignment for cluster ``name`` from the endpoints it selects.

    Zones become localities. Every locality group carries a locality and a
    weight: proxyless gRPC clients NACK groups without a locality and ignore
    groups of weight 0 (xds.md point 6). ``health`` maps endpoint ids to an
    Envoy HealthStatus decided by the mesh (HDS aggregation, later).
    """
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    by_zone: dict[str, list[Endpoint]] = {}
    for ep in sorted(endpoints, key=lambda e: e.id):
        by_zone.setdefault(ep.zone, []).append(ep)
    for zone in sorted(by_zone):
        group = cla.endpoints.add()
        group.locality.zone = zone
        group.locality.SetInParent()
        total = 0
        for ep in by_zone[zone]:
            addresses = (ep.address,) if ep.is_ip else resolve(ep.address)
            port = ep.port if ep.port is not None else service.port
            assert port is not None  # state rejects endpoints with no port to use
            for addr in addresses:
                lb = group.lb_endpoints.add()
                lb.endpoint.address.socket_address.CopyFrom(
                    address_pb2.SocketAddress(address=addr, port_value=port)
                )
                lb.load_balancing_weight.value = ep.weight
                if ep.draining:
                    lb.health_status = health_check_pb2.DRAINING
                elif health and ep.id in health:
                    lb.health_status = health[ep.id]  # type: ignore[assignment]
                lb.metadata.CopyFrom(_metadata(ep))
                total += ep.weight
        if total == 0:
            cla.endpoints.pop()
        else:
            group.load_balancing_weight.value = min(total, 2**32 - 1)
    return cla


def _metadata(ep: Endpoint) -> base_pb2.Metadata:
    # The endpoint id in metadata lets /clusters and access logs name the instance.
    md = base_pb2.Metadata()
    md.filter_metadata["apg.mesh"].update({"id": ep.id})
    return md


def service_assignments(
    service: Service,
    endpoints: Mapping[str, Endpoint],
    resolve: Resolver = _no_dns,
    health: Mapping[str, int] | None = None,
) -> list[Resource]:
    """Every ClusterLoadAssignment of a service: its own, then one per subset."""
    eps = list(endpoints.values())
    out = [
        make_resource(
            ENDPOINT,
            cluster_name(service.ref),
            build_cla(cluster_name(service.ref), service, eps, resolve, health),
        )
    ]
    for subset, selector in service.subsets:
        name = cluster_name(service.ref, subset)
        chosen = [e for e in eps if e.matches(selector)]
        out.append(make_resource(ENDPOINT, name, build_cla(name, service, chosen, resolve, health)))
    return out
