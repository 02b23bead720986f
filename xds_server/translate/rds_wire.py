"""RouteConfigurations assembled from memoized bytes (listeners' and proxyless gRPC's).

A route change re-translates the route configuration of every listener the route
attaches to, and that configuration holds every route of the listener plus one virtual
host per HTTP service. Building all of them as upb messages again, on every change,
costs per route and per service. Here each route entry and each service's own virtual
host is serialized once (memoized on the frozen model values it is made of) and a change
joins cached bytes; only what changed is built again.

This is the one assembler of RouteConfiguration resources: Envoy listeners' and proxyless
gRPC clients' (``proxyless=True``). The layout follows ``build_route_configuration`` in
``tests/support/route_reference.py``, the message-API reference, and fields are written in
field-number order as protobuf's own deterministic serializer does;
``tests/unit/test_rds_wire.py`` checks with hypothesis that both give identical bytes.

Field numbers (envoy.config.route.v3): RouteConfiguration{name=1, virtual_hosts=2},
VirtualHost{name=1, domains=2, routes=3}.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping

from xds_server.model import Route, Service, ServiceRef, SessionAffinity
from xds_server.model.names import cluster_name, service_host
from xds_server.resources.resource import Resource, resource_from_bytes, string_field
from xds_server.resources.types import ROUTE
from xds_server.translate.edge import EDGE_FILTERS, ApiKeyList, EdgeSecrets, route_keys
from xds_server.translate.route import (
    LOCAL_RATELIMIT,
    Affinities,
    affinities,
    default_route,
    default_route_name,
    ordered_routes,
    route_clusters,
    route_entry,
    service_domains,
)

_MEMO = 1 << 16
"""Entries kept per memo: far more routes and services than a registry holds at once."""


@functools.lru_cache(maxsize=_MEMO)
def _route_field(route: Route, affs: Affinities, keys: ApiKeyList) -> bytes:
    """One route entry as a ``VirtualHost.routes`` field (``keys``: its API keys)."""
    return string_field(3, route_entry(route, affs, keys).SerializeToString(deterministic=True))


@functools.lru_cache(maxsize=_MEMO)
def _proxyless_route_field(route: Route, affs: Affinities, keys: ApiKeyList) -> bytes:
    """One route entry as proxyless gRPC clients take it: without the config of filters
    gRPC does not run (local rate limit, CORS; it would NACK the route configuration) and
    without websocket upgrades (gRPC speaks HTTP/2 only). A route with ``jwt`` or
    ``api_keys`` never gets here: it is not served to proxyless clients
    (:mod:`~xds_server.translate.grpc_api`)."""
    msg = route_entry(route, affs, keys)
    for name in (LOCAL_RATELIMIT, *EDGE_FILTERS):
        msg.typed_per_filter_config.pop(name, None)
    del msg.route.upgrade_configs[:]
    return string_field(3, msg.SerializeToString(deterministic=True))


@functools.lru_cache(maxsize=_MEMO)
def _route_refs(route: Route) -> frozenset[str]:
    return frozenset(route_clusters(route))


_MATCH_ALL = string_field(1, string_field(1, "/"))
"""``Route.match`` (1) = RouteMatch{prefix (1) = "/"}."""


@functools.lru_cache(maxsize=_MEMO)
def _default_route_field(ref: ServiceRef, affinity: SessionAffinity | None) -> bytes:
    """A service's default route as a ``VirtualHost.routes`` field. Without session
    affinity (the common case: a cold start writes one per service) it is written here, at
    about a third of the message API's cost: Route{match=1, route=2 RouteAction{cluster=1},
    name=14}, as :func:`~xds_server.translate.route.default_route` builds it."""
    if affinity is not None:
        msg = default_route(ref, affinity)
        return string_field(3, msg.SerializeToString(deterministic=True))
    action = string_field(2, string_field(1, cluster_name(ref)))
    return string_field(3, _MATCH_ALL + action + string_field(14, default_route_name(ref)))


@functools.lru_cache(maxsize=_MEMO)
def _service_vhost(
    ref: ServiceRef, affinity: SessionAffinity | None, domains: tuple[str, ...]
) -> bytes:
    """A service's own virtual host (its free default-host spellings, its default route),
    as a ``RouteConfiguration.virtual_hosts`` field."""
    parts = [string_field(1, f"service:{service_host(ref)}")]
    parts += [string_field(2, d) for d in domains]
    parts.append(_default_route_field(ref, affinity))
    return string_field(2, b"".join(parts))


def route_config_bytes(
    name: str,
    routes: Iterable[Route],
    services: Mapping[ServiceRef, Service],
    *,
    proxyless: bool = False,
    secrets: EdgeSecrets | None = None,
    hosted: Collection[ServiceRef] | None = None,
) -> tuple[bytes, frozenset[str]]:
    """The serialized RouteConfiguration of listener ``name`` and the clusters it names.

    ``proxyless``: the one of ``xds:///<name>`` for proxyless gRPC clients: only the
    virtual hosts a client of ``name`` can match, and no local rate limit config (the
    clusters named are those of the whole configuration all the same). ``secrets``: the
    registry's, where routes' ``api_keys`` are read. ``hosted``: the services whose default
    hosts it carries (None: every HTTP service's); the routes are carried whole either way,
    and ``services`` is where their destinations are read."""
    found: EdgeSecrets = secrets if secrets is not None else {}
    route_field = _proxyless_route_field if proxyless else _route_field
    by_host: dict[str, list[Route]] = {}
    for route in routes:
        for host in route.hosts:
            by_host.setdefault(host, []).append(route)
    # Every spelling of every HTTP service's default host, and which service owns it.
    owner: dict[str, Service] = {}
    pool = services.values() if hosted is None else (services[r] for r in hosted if r in services)
    http_services = sorted(
        (s for s in pool if s.protocol != "tcp"),
        key=lambda s: (s.ref.namespace, s.ref.name),  # ServiceRef's order, compared in C
    )
    for service in http_services:
        for domain in service_domains(service):
            owner[domain] = service
    out = [string_field(1, name)] if name else []
    refs: set[str] = set()
    taken: set[str] = set(by_host)
    for host in sorted(by_host):
        domains = [string_field(2, host)]
        matched = host == name or host == "*"  # (by a proxyless client of ``name``)
        entries = []
        for route in ordered_routes(by_host[host]):
            keys = route_keys(route, found) if route.api_keys is not None else ()
            entries.append(route_field(route, affinities(route, services), keys))
            refs |= _route_refs(route)
        owned = owner.get(host)
        if owned is not None:
            # A route names the service's host (with or without port): its virtual host
            # takes the other spelling too if free, and ends with the default route.
            for domain in service_domains(owned):
                if domain not in taken:
                    domains.append(string_field(2, domain))
                    taken.add(domain)
                    matched = matched or domain == name
            entries.append(_default_route_field(owned.ref, owned.load_balancer.session_affinity))
            refs.add(cluster_name(owned.ref))
        if matched or not proxyless:
            out.append(string_field(2, b"".join([string_field(1, host), *domains, *entries])))
    for svc in http_services:
        free = tuple(d for d in service_domains(svc) if d not in taken)
        if not free:
            continue
        taken.update(free)
        if not proxyless or name in free:
            out.append(_service_vhost(svc.ref, svc.load_balancer.session_affinity, free))
        refs.add(cluster_name(svc.ref))
    return b"".join(out), frozenset(refs)


def route_configuration(
    name: str,
    routes: Iterable[Route],
    services: Mapping[ServiceRef, Service],
    secrets: EdgeSecrets | None = None,
    hosted: Collection[ServiceRef] | None = None,
) -> Resource:
    """The RouteConfiguration resource of HTTP listener ``name`` (``secrets``: where its
    routes' API keys are read; ``hosted``: whose default hosts it carries, None: all)."""
    body, refs = route_config_bytes(name, routes, services, secrets=secrets, hosted=hosted)
    return resource_from_bytes(ROUTE, name, body, refs)
