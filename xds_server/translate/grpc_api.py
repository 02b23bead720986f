"""Proxyless gRPC: an ``api_listener`` Listener and a RouteConfiguration per gRPC service. Pure.

A grpcio client dialing ``xds:///<name>.<ns>`` asks for the Listener named
exactly so, expecting an ``api_listener`` (xds.md point 6). meshd publishes
one for every ``protocol: grpc`` service, under the service's host name (no
registry listener can clash: listener names have no dots). Its route
configuration carries the registry routes that attach to that name (e.g.
``listener: "*"`` with ``hosts: ["<name>.<ns>"]``) and the service's default
route. These resources are only sent to clients that ask for them by name;
Envoy's wildcard subscriptions never include them.

gRPC NACKs configuration for filters it does not run, so the HTTP filter chain
is the router alone and per-route rate limits and faults are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2

from xds_server.model import Route, Service, ServiceRef
from xds_server.translate.cluster import ads_source
from xds_server.translate.listener import ROUTER
from xds_server.translate.names import LISTENER, ROUTE, service_host
from xds_server.translate.resource import Resource, make_resource
from xds_server.translate.route import FAULT, LOCAL_RATELIMIT, build_route_configuration


def api_listener(service: Service) -> Resource:
    """The Listener a proxyless gRPC client of ``service`` asks for."""
    name = service_host(service.ref)
    router = any_pb2.Any()
    router.Pack(router_pb2.Router())
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=name),
        http_filters=[hcm_pb2.HttpFilter(name=ROUTER, typed_config=router)],
    )
    packed = any_pb2.Any()
    packed.Pack(hcm)
    listener = listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=packed)
    )
    return make_resource(LISTENER, name, listener)


def api_route_configuration(
    service: Service, routes: Iterable[Route], services: Mapping[ServiceRef, Service]
) -> Resource:
    """Routes for ``xds:///<name>.<ns>``: matching registry routes, then the default."""
    name = service_host(service.ref)
    attached = [r for r in routes if r.listener_matches(name) and ({name, "*"} & set(r.hosts))]
    # Only what the attached routes point at (hash policies need it), not the whole registry.
    needed = {service.ref: service}
    for route in attached:
        needed.update({d.service: services[d.service] for d in route.destinations})
    config, refs = build_route_configuration(name, attached, needed)
    # Keep only the virtual hosts a client of this name can match, without filter configs.
    keep = [vh for vh in config.virtual_hosts if name in vh.domains or "*" in vh.domains]
    del config.virtual_hosts[:]
    for vh in keep:
        for route in vh.routes:
            route.typed_per_filter_config.pop(LOCAL_RATELIMIT, None)
            route.typed_per_filter_config.pop(FAULT, None)
        config.virtual_hosts.append(vh)
    return make_resource(ROUTE, name, config, refs)
