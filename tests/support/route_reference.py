"""The message-API reference of the RouteConfiguration assembly (test-only).

meshd assembles route configurations from memoized bytes
(:mod:`xds_server.translate.rds_wire`); these build the same with protobuf messages, the
way Envoy's types read, and ``test_rds_wire`` checks both give identical bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from xds_server.model import Route, Service, ServiceRef
from xds_server.model.names import cluster_name, service_host
from xds_server.translate.edge import EDGE_FILTERS
from xds_server.translate.route import (
    LOCAL_RATELIMIT,
    affinities,
    default_route,
    ordered_routes,
    route_clusters,
    route_entry,
    service_domains,
)


def build_route(route: Route, services: Mapping[ServiceRef, Service]) -> rc.Route:
    """One Envoy route entry for a registry Route."""
    return route_entry(route, affinities(route, services))


def _default_route(service: Service) -> rc.Route:
    return default_route(service.ref, service.load_balancer.session_affinity)


def build_route_configuration(
    name: str, routes: Iterable[Route], services: Mapping[ServiceRef, Service]
) -> tuple[route_pb2.RouteConfiguration, frozenset[str]]:
    """The RouteConfiguration of listener ``name`` and the clusters it points at."""
    by_host: dict[str, list[Route]] = {}
    for route in routes:
        for host in route.hosts:
            by_host.setdefault(host, []).append(route)
    # Every spelling of every HTTP service's default host, and which service owns it.
    owner: dict[str, Service] = {}
    for service in sorted(services.values(), key=lambda s: s.ref):
        if service.protocol != "tcp":
            for domain in service_domains(service):
                owner[domain] = service
    config = route_pb2.RouteConfiguration(name=name)
    refs: set[str] = set()
    taken: set[str] = set(by_host)
    for host in sorted(by_host):
        vh = rc.VirtualHost(name=host, domains=[host])
        for route in ordered_routes(by_host[host]):
            vh.routes.append(build_route(route, services))
            refs.update(route_clusters(route))
        owned = owner.get(host)
        if owned is not None:
            # A route names the service's host (with or without port): its virtual host
            # takes the other spelling too if free, and ends with the default route.
            for domain in service_domains(owned):
                if domain not in taken:
                    vh.domains.append(domain)
                    taken.add(domain)
            vh.routes.append(_default_route(owned))
            refs.add(cluster_name(owned.ref))
        config.virtual_hosts.append(vh)
    for svc in sorted({id(s): s for s in owner.values()}.values(), key=lambda s: s.ref):
        domains = [d for d in service_domains(svc) if d not in taken]
        if not domains:
            continue
        taken.update(domains)
        vh = rc.VirtualHost(
            name=f"service:{service_host(svc.ref)}", domains=domains, routes=[_default_route(svc)]
        )
        config.virtual_hosts.append(vh)
        refs.add(cluster_name(svc.ref))
    return config, frozenset(refs)


def build_proxyless_route_configuration(
    name: str, routes: Iterable[Route], services: Mapping[ServiceRef, Service]
) -> tuple[route_pb2.RouteConfiguration, frozenset[str]]:
    """The RouteConfiguration of ``xds:///<name>``: the listener form, keeping only the
    virtual hosts a client of ``name`` can match, with no config of the filters gRPC does
    not run (local rate limit, the edge filters) and no websocket upgrade."""
    config, refs = build_route_configuration(name, routes, services)
    keep = [vh for vh in config.virtual_hosts if name in vh.domains or "*" in vh.domains]
    del config.virtual_hosts[:]
    for vh in keep:
        for route in vh.routes:
            for filter_name in (LOCAL_RATELIMIT, *EDGE_FILTERS):
                route.typed_per_filter_config.pop(filter_name, None)
            del route.route.upgrade_configs[:]
        config.virtual_hosts.append(vh)
    return config, refs
