"""Proxyless gRPC: an ``api_listener`` Listener and a RouteConfiguration per gRPC service. Pure.

A grpcio client dialing ``xds:///<name>.<ns>`` asks for the Listener named
exactly so, expecting an ``api_listener`` (``docs/xds.md`` point 6). meshd publishes
one for every ``protocol: grpc`` service, under the service's host name (no
registry listener can clash: listener names have no dots). Its route
configuration carries the registry routes that attach to that name (e.g.
``listener: "*"`` with ``hosts: ["<name>.<ns>"]``) and the service's default
route. These resources are only sent to clients that ask for them by name;
Envoy's wildcard subscriptions never include them, so this is where meshd knows
it speaks to a proxyless client.

gRPC clients run less than Envoy, and NACK configuration they cannot run. So a
proxyless client gets what gRPC does run, and what it cannot is reported as an
error of the registry entry that asks for it (a :data:`Notes` entry), never
dropped silently:

* the HTTP filter chain is gRPC's fault filter and the router: route ``fault``
  is applied by gRPC clients as by Envoy;
* a route's ``rate_limit`` (gRPC has no local rate limit), ``cors`` (no browser calls a
  gRPC client's channel) and ``websocket`` (gRPC speaks HTTP/2, no Upgrade) are left out
  of the route it is served, and noted on the route;
* a route's ``jwt`` or ``api_keys`` (gRPC clients run neither filter) would leave the
  route unauthenticated if dropped: a name such a route attaches to is not served to
  proxyless clients at all, and that is noted on the route;
* a cluster whose algorithm gRPC lacks (``maglev``, ``random``, and
  ``least_request``, which grpcio lacks) would be NACKed: a name whose routes
  reach one is not served to proxyless clients at all (they see the listener as
  missing), and that is noted on the service. Envoy proxies keep the algorithm.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_server.model import Route, Service, ServiceRef
from xds_server.model.names import service_host
from xds_server.resources.resource import Resource, make_resource, resource_from_bytes
from xds_server.resources.types import LISTENER, ROUTE
from xds_server.translate.cluster import ads_source
from xds_server.translate.listener import ROUTER, pack
from xds_server.translate.rds_wire import route_config_bytes
from xds_server.translate.route import FAULT

GRPC_ALGORITHMS = frozenset({"round_robin", "ring_hash"})
"""Load balancing every gRPC client runs (grpc-go also has least_request; grpcio has not)."""

AUTH_FIELDS = ("jwt", "api_keys")
"""Route fields gRPC clients cannot enforce, which must not be dropped (authentication)."""

NoteKey = tuple[str, str, str]
"""(registry kind, ``ns/name``, field) of a setting proxyless clients cannot honour."""

Notes = dict[NoteKey, set[str]]
"""Per such setting, the proxyless targets (``<name>.<ns>``) it concerns."""


@functools.lru_cache(maxsize=1 << 14)
def api_listener(name: str) -> Resource:
    """The Listener a proxyless gRPC client of ``name`` (``<svc>.<ns>``) asks for.

    The fault filter is always in the chain and does nothing until a route carries a
    ``fault``, as in Envoy's listeners (:func:`~xds_server.translate.listener.http_filters`).
    """
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=name),
        http_filters=[
            hcm_pb2.HttpFilter(name=FAULT, typed_config=pack(fault_pb2.HTTPFault())),
            hcm_pb2.HttpFilter(name=ROUTER, typed_config=pack(router_pb2.Router())),
        ],
    )
    listener = listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(hcm))
    )
    return make_resource(LISTENER, name, listener)


def _attached(name: str, routes: Iterable[Route]) -> list[Route]:
    return [r for r in routes if r.listener_matches(name) and ({name, "*"} & set(r.hosts))]


def _reached(service: Service, attached: list[Route]) -> dict[ServiceRef, str]:
    """Every service a client of ``service``'s name can be sent to, and the field that
    sends it there (its own default route: ``""``)."""
    out = {service.ref: ""}
    for route in attached:
        for i, d in enumerate(route.destinations):
            if d.weight:
                out.setdefault(d.service, f"destinations[{i}].service")
    return out


def proxyless_resources(
    service: Service,
    routes: Iterable[Route],
    services: Mapping[ServiceRef, Service],
    notes: Notes,
) -> tuple[Resource, Resource] | None:
    """The Listener and RouteConfiguration for ``xds:///<name>.<ns>``, or None when gRPC
    clients could not run them; adds to ``notes`` what they cannot honour."""
    name = service_host(service.ref)
    attached = _attached(name, routes)
    blocked = False
    for route in attached:
        for field in AUTH_FIELDS:
            if getattr(route, field) is not None:
                notes.setdefault(("routes", route.key_name, field), set()).add(name)
                blocked = True
    for ref in _reached(service, attached):
        algorithm = services[ref].load_balancer.algorithm
        if algorithm not in GRPC_ALGORITHMS:
            key = ("services", f"{ref.namespace}/{ref.name}", "load_balancer.algorithm")
            notes.setdefault(key, set()).add(name)
            blocked = True
    if blocked:
        return None
    for route in attached:
        for field, dropped in (
            ("rate_limit", route.rate_limit is not None),
            ("cors", route.cors is not None),
            ("websocket", route.websocket),
        ):
            if dropped:
                notes.setdefault(("routes", route.key_name, field), set()).add(name)
    return api_listener(name), api_route_configuration(service, attached, services)


def api_route_configuration(
    service: Service, routes: Iterable[Route], services: Mapping[ServiceRef, Service]
) -> Resource:
    """Routes for ``xds:///<name>.<ns>``: matching registry routes, then the default."""
    name = service_host(service.ref)
    attached = _attached(name, routes)
    # Only what the attached routes point at (hash policies need it), not the whole registry.
    needed = {service.ref: service}
    for route in attached:
        needed.update({d.service: services[d.service] for d in route.destinations})
    # Only the virtual hosts a client of this name can match, and no config for a filter
    # gRPC does not run (it would NACK the route configuration).
    body, refs = route_config_bytes(name, attached, needed, proxyless=True)
    return resource_from_bytes(ROUTE, name, body, refs)


def note_reason(key: NoteKey, targets: Iterable[str], algorithm: str = "") -> str:
    """The error text of a setting proxyless clients cannot honour."""
    names = ", ".join(f"xds:///{t}" for t in sorted(targets))
    if key[2] == "rate_limit":
        return (
            f"proxyless gRPC clients have no local rate limit: {names} served without it "
            "(Envoy proxies apply it)"
        )
    if key[2] == "cors":
        return (
            f"proxyless gRPC clients run no CORS filter (no browser calls them): {names} "
            "served without it (Envoy proxies apply it)"
        )
    if key[2] == "websocket":
        return (
            f"proxyless gRPC clients speak HTTP/2 only, with no WebSocket upgrade: {names} "
            "served without it (Envoy proxies pass upgrades)"
        )
    if key[2] in AUTH_FIELDS:
        what = "JWT authentication" if key[2] == "jwt" else "API key authentication"
        return (
            f"proxyless gRPC clients cannot enforce {what}: {names} not served to them "
            "(rather than served unauthenticated; Envoy proxies enforce it)"
        )
    return (
        f"{algorithm} is not run by proxyless gRPC clients (they run "
        f"{' and '.join(sorted(GRPC_ALGORITHMS))}): {names} not served to them "
        f"(Envoy proxies use {algorithm})"
    )
