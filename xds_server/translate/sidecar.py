"""A service's sidecar inbound side: the Listener on ``sidecar.inbound_port`` and the local
Cluster (``127.0.0.1:app_port``) it forwards to. Pure.

Both are named :func:`~xds_server.model.names.inbound_name` and go only to the service's
own sidecars (node cluster ``<name>.<ns>``: :mod:`xds_server.translate.scoping`).

The service's mTLS mode decides the listener's filter chains:

* ``strict``: one chain, TLS with a required client certificate. A plaintext client fails the
  handshake (Envoy closes the connection).
* ``permissive``: Envoy's ``tls_inspector`` listener filter reads the first bytes of each
  connection and sets its transport protocol (``tls`` or ``raw_buffer``); two chains matched
  on it take the mTLS and the plaintext connections.
* ``off``: one plaintext chain.

An HTTP service's inbound listener takes its routes over RDS, from the RouteConfiguration
of the same name (:func:`inbound_routes`): that is where the authorization policies are
(:mod:`xds_server.translate.authz`), so a policy edit never replaces the listener. Its one
route lets WebSocket upgrades through for ``http`` services (:func:`inbound_routes`).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server.model import Service
from xds_server.model.names import inbound_name
from xds_server.model.namespace import MtlsMode
from xds_server.model.view import RegistryView
from xds_server.resources.resource import Resource, make_resource
from xds_server.resources.types import CLUSTER, LISTENER, ROUTE
from xds_server.translate.authz import inbound_filters, per_route_rbac
from xds_server.translate.cluster import ads_source
from xds_server.translate.listener import HCM, ROUTER, TCP_PROXY, pack
from xds_server.translate.mtls import downstream_socket

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
LOCAL_ADDRESS = "127.0.0.1"
"""Where a sidecar finds its application: the same host (or pod network namespace)."""
INBOUND_ADDRESS = "0.0.0.0"
"""What an inbound listener binds: callers reach the sidecar from other hosts."""


def _http_manager(service: Service) -> Message:
    """Every request to the local application, after authorization; the caller's verified
    identity is passed on in ``x-forwarded-client-cert`` (``By``/``URI``), replacing any
    such header the caller sent (SANITIZE_SET), so the application can trust it."""
    name = inbound_name(service.ref)
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=name),
        http_filters=[
            *inbound_filters(),
            hcm_pb2.HttpFilter(name=ROUTER, typed_config=_router()),
        ],
        forward_client_cert_details=hcm_pb2.HttpConnectionManager.SANITIZE_SET,
        set_current_client_cert_details=hcm_pb2.HttpConnectionManager.SetCurrentClientCertDetails(
            uri=True
        ),
    )


def inbound_routes(
    service: Service, state: RegistryView, trust_domain: str
) -> route_pb2.RouteConfiguration:
    """The route configuration of an HTTP service's inbound listener: everything to the
    local application, with the authorization policies in force on the service."""
    name = inbound_name(service.ref)
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(cluster=name),
    )
    # gRPC streams and long polls: the application decides how long a request may take.
    route.route.timeout.SetInParent()
    if service.protocol == "http":
        # WebSocket upgrades pass always: whether one reaches the service is decided where
        # the caller's request is routed (a route's ``websocket``), and whether it is
        # accepted by the application (101 or not). The local cluster speaks HTTP/1.1, as
        # an upgrade needs; http2/grpc services' would need extended CONNECT instead.
        route.route.upgrade_configs.append(
            route_components_pb2.RouteAction.UpgradeConfig(upgrade_type="websocket")
        )
    host = route_components_pb2.VirtualHost(name=name, domains=["*"], routes=[route])
    for filter_name, override in per_route_rbac(service, state, trust_domain).items():
        host.typed_per_filter_config[filter_name].CopyFrom(override)
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])


def _router() -> any_pb2.Any:
    return pack(router_pb2.Router())


def _filter(service: Service) -> listener_components_pb2.Filter:
    if service.protocol == "tcp":
        proxy = tcp_proxy_pb2.TcpProxy(
            stat_prefix=inbound_name(service.ref), cluster=inbound_name(service.ref)
        )
        return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))
    manager = _http_manager(service)
    return listener_components_pb2.Filter(name=HCM, typed_config=pack(manager))


def inbound_listener(service: Service, mode: MtlsMode) -> listener_pb2.Listener:
    """The inbound Listener of ``service``'s sidecars (``service.sidecar`` must be set)."""
    assert service.sidecar is not None
    out = listener_pb2.Listener(
        name=inbound_name(service.ref),
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=INBOUND_ADDRESS, port_value=service.sidecar.inbound_port
            )
        ),
    )
    network = _filter(service)
    if mode == "permissive":
        out.listener_filters.append(
            listener_components_pb2.ListenerFilter(
                name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
            )
        )
    if mode in ("strict", "permissive"):
        chain = out.filter_chains.add(filters=[network], transport_socket=downstream_socket())
        chain.name = "mtls"
        if mode == "permissive":
            chain.filter_chain_match.transport_protocol = "tls"
    if mode in ("permissive", "off"):
        chain = out.filter_chains.add(filters=[network])
        chain.name = "plaintext"
        if mode == "permissive":
            chain.filter_chain_match.transport_protocol = "raw_buffer"
    return out


def local_cluster(service: Service) -> cluster_pb2.Cluster:
    """The application behind the sidecar, on ``127.0.0.1:app_port``."""
    assert service.sidecar is not None
    name = inbound_name(service.ref)
    address = address_pb2.Address(
        socket_address=address_pb2.SocketAddress(
            address=LOCAL_ADDRESS, port_value=service.sidecar.app_port
        )
    )
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=address)
                        )
                    ]
                )
            ],
        ),
    )
    if service.protocol in ("http2", "grpc"):
        opts = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        c.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(opts))
    return c


def sidecar_resources(
    service: Service, mode: MtlsMode, state: RegistryView, trust_domain: str
) -> tuple[Resource, Resource, Resource | None]:
    """(inbound Listener, local Cluster, inbound RouteConfiguration or None for ``tcp``) of
    a service with ``sidecar`` set."""
    name = inbound_name(service.ref)
    listener = inbound_listener(service, mode)
    routes = None
    if service.protocol != "tcp":
        config = inbound_routes(service, state, trust_domain)
        routes = make_resource(ROUTE, name, config, frozenset({name}))
    return (
        make_resource(LISTENER, name, listener, frozenset({name})),
        make_resource(CLUSTER, name, local_cluster(service)),
        routes,
    )
