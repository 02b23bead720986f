"""Service endpoints -> ClusterLoadAssignments (one per cluster). Pure."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from xds_server.model import Endpoint, Service
from xds_server.model.endpoint import is_ip
from xds_server.model.names import cluster_name
from xds_server.resources.resource import Resource, resource_from_bytes
from xds_server.resources.types import ENDPOINT
from xds_server.translate import eds_wire

Resolver = Callable[[str], tuple[str, ...]]
"""Maps a DNS name to the addresses it currently resolves to (empty: unresolved)."""


def _no_dns(name: str) -> tuple[str, ...]:
    return ()


Plan = list[tuple[str, list[tuple[str, int, int, int]], int]]
"""Locality groups: (zone, [(address, port, health_status, weight)], total weight)."""


_BY_ID = operator.itemgetter(1)
"""An Endpoint's id (a named tuple's second field): sorts without a Python call per item."""
_BY_ZONE_ID = operator.itemgetter(6, 1)
"""An Endpoint's zone and id, likewise."""


def plan(
    service: Service,
    endpoints: Iterable[Endpoint],
    resolve: Resolver = _no_dns,
    health: Mapping[str, int] | None = None,
    dns_names: dict[str, set[str]] | None = None,
) -> Plan:
    """What a ClusterLoadAssignment holds, in order: zones become localities.

    Draining endpoints are DRAINING; ``health`` maps endpoint ids to an Envoy
    HealthStatus decided by the mesh; names are replaced by their addresses (and noted in
    ``dns_names``, name -> endpoint ids, when given). Groups whose weights sum to 0 (no
    address yet) are left out.
    """
    by_zone: dict[str, list[Endpoint]] = {}
    for ep in sorted(endpoints, key=_BY_ID):
        group = by_zone.get(ep.zone)
        if group is None:
            by_zone[ep.zone] = [ep]
        else:
            group.append(ep)
    out: Plan = []
    default_port = service.port
    unknown, draining = health_check_pb2.UNKNOWN, health_check_pb2.DRAINING
    for zone in sorted(by_zone) if len(by_zone) > 1 else by_zone:
        rows: list[tuple[str, int, int, int]] = []
        total = 0
        for ep in by_zone[zone]:
            port = ep.port if ep.port is not None else default_port
            assert port is not None  # state rejects endpoints with no port to use
            status: int = unknown
            if ep.draining:
                status = draining
            elif health and ep.id in health:
                status = health[ep.id]
            if is_ip(ep.address):
                rows.append((ep.address, port, status, ep.weight))
                total += ep.weight
            else:
                if dns_names is not None:
                    dns_names.setdefault(ep.address, set()).add(ep.id)
                for addr in resolve(ep.address):
                    rows.append((addr, port, status, ep.weight))
                    total += ep.weight
        if total:
            out.append((zone, rows, min(total, 2**32 - 1)))
    return out


def build_cla(name: str, groups: Plan) -> endpoint_pb2.ClusterLoadAssignment:
    """The ClusterLoadAssignment as a message (the reference for :mod:`eds_wire`).

    Every locality group carries a locality (possibly empty) and a weight:
    proxyless gRPC clients NACK groups without a locality and ignore groups of
    weight 0 (``docs/xds.md`` point 6).
    """
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for zone, rows, total in groups:
        group = cla.endpoints.add(locality=base_pb2.Locality(zone=zone))
        group.load_balancing_weight.value = total
        for addr, port, status, weight in rows:
            lb = group.lb_endpoints.add(health_status=status)  # type: ignore[arg-type]
            lb.endpoint.address.socket_address.address = addr
            lb.endpoint.address.socket_address.port_value = port
            lb.load_balancing_weight.value = weight
    return cla


def encode_cla(name: str, groups: Plan, memo: bool = True) -> bytes:
    """The same ClusterLoadAssignment, encoded directly (fast path). ``memo``: through
    :func:`eds_wire.lb_endpoint`'s memo (incremental changes), or not (a bulk translation)."""
    encode = eds_wire.lb_endpoint if memo else eds_wire.encode_lb_endpoint
    return eds_wire.cluster_load_assignment(
        name,
        [
            eds_wire.locality_group(zone, [encode(*row) for row in rows], total)
            for zone, rows, total in groups
        ],
    )


def encode_assignment(
    name: str,
    service: Service,
    endpoints: Iterable[Endpoint],
    resolve: Resolver = _no_dns,
    health: Mapping[str, int] | None = None,
    dns_names: dict[str, set[str]] | None = None,
) -> bytes:
    """``encode_cla(name, plan(service, endpoints, ...), memo=False)`` in one pass, each
    endpoint written from its address and the :func:`eds_wire.pieces` of its port, status
    and weight: a bulk translation (a cold start) encodes every endpoint of the registry."""
    groups: list[bytes] = []
    fields: list[bytes] = []
    total = 0
    default_port = service.port
    unknown, draining_ = health_check_pb2.UNKNOWN, health_check_pb2.DRAINING
    zone = ""
    # The pieces of the last (port, status, weight) seen: endpoints of a service mostly
    # share them.
    shape_port = shape_status = shape_weight = -1
    of = heads = tail = None
    # Sorted by zone, then id: plan's groups (zones in order) and order within them.
    ordered = sorted(endpoints, key=_BY_ZONE_ID)
    if ordered:
        zone = ordered[0].zone
    for _, endpoint_id, address, port, weight, _, ep_zone, draining, _ in ordered:
        if ep_zone != zone:
            if total:
                groups.append(eds_wire.locality_group(zone, fields, min(total, 2**32 - 1)))
            zone, fields, total = ep_zone, [], 0
        if port is None:
            port = default_port
            assert port is not None  # state rejects endpoints with no port to use
        if draining:
            status = draining_
        elif health and endpoint_id in health:
            status = health[endpoint_id]
        else:
            status = unknown
        if port != shape_port or status != shape_status or weight != shape_weight:
            shape_port, shape_status, shape_weight = port, status, weight
            of = eds_wire.pieces(port, status, weight)
            heads, tail = of.heads, of.tail
        assert of is not None and heads is not None and tail is not None
        if is_ip(address):
            a = address.encode()
            head = heads.get(len(a)) or eds_wire.lb_endpoint_head(of, len(a))
            if head is None:
                fields.append(eds_wire.encode_lb_endpoint(address, port, status, weight))
            else:
                fields.append(head + a + tail)
            total += weight
            continue
        if dns_names is not None:
            dns_names.setdefault(address, set()).add(endpoint_id)
        for resolved in resolve(address):
            fields.append(eds_wire.encode_lb_endpoint(resolved, port, status, weight))
            total += weight
    if total:
        groups.append(eds_wire.locality_group(zone, fields, min(total, 2**32 - 1)))
    return eds_wire.cluster_load_assignment(name, groups)


def service_assignments(
    service: Service,
    endpoints: Mapping[str, Endpoint],
    resolve: Resolver = _no_dns,
    health: Mapping[str, int] | None = None,
    *,
    memo: bool = True,
    dns_names: dict[str, set[str]] | None = None,
) -> list[Resource]:
    """Every ClusterLoadAssignment of a service: its own, then one per subset (``memo``:
    see :func:`encode_cla`; ``dns_names`` is filled with the DNS names its endpoints use,
    name -> endpoint ids)."""
    eps = list(endpoints.values())
    name = cluster_name(service.ref)
    if memo:
        body = encode_cla(name, plan(service, eps, resolve, health, dns_names))
    else:
        body = encode_assignment(name, service, eps, resolve, health, dns_names)
    out = [resource_from_bytes(ENDPOINT, name, body)]
    for subset, selector in service.subsets:
        name = cluster_name(service.ref, subset)
        chosen = [e for e in eps if e.matches(selector)]
        if memo:
            body = encode_cla(name, plan(service, chosen, resolve, health))
        else:
            body = encode_assignment(name, service, chosen, resolve, health)
        out.append(resource_from_bytes(ENDPOINT, name, body))
    return out
