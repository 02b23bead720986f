"""Listener -> Envoy Listener (HTTP connection manager over RDS, or TCP proxy). Pure."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from xds_server.model import Listener
from xds_server.model.listener import ListenerTls
from xds_server.model.names import cluster_name
from xds_server.model.secret import secret_sds_name
from xds_server.resources.resource import Resource, make_resource
from xds_server.resources.types import LISTENER
from xds_server.translate.cluster import ads_source
from xds_server.translate.route import FAULT, LOCAL_RATELIMIT
from xds_server.translate.tracing import apply_tracing

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
TLS_SOCKET = "envoy.transport_sockets.tls"


def _sds(ref: str) -> secret_pb2.SdsSecretConfig:
    ns, _, name = ref.partition("/")
    return secret_pb2.SdsSecretConfig(name=secret_sds_name(ns, name), sds_config=ads_source())


def downstream_tls(tls: ListenerTls) -> tls_pb2.DownstreamTlsContext:
    """TLS termination with the listener's certificates over SDS.

    One filter chain holds every certificate: Envoy picks the one whose SANs match the
    client's SNI at each handshake (the first when none does), so no ``server_names``
    chains and no TLS inspector are needed. The certificates come over SDS by name:
    editing a secret changes only its Secret, never this Listener, so a rotation neither
    drains the listener nor touches a connection already open.
    """
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[_sds(ref) for ref in tls.certificates],
        alpn_protocols=["h2", "http/1.1"],
    )
    ctx = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    if tls.client_ca is not None:
        # (the context holds a copy of ``common``: set the field on its own)
        ctx.common_tls_context.validation_context_sds_secret_config.CopyFrom(_sds(tls.client_ca))
        ctx.require_client_certificate.CopyFrom(wrappers_pb2.BoolValue(value=True))
    return ctx


def pack(msg: Message) -> any_pb2.Any:
    """``msg`` in an ``Any`` (a typed_config)."""
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def http_filters() -> list[hcm_pb2.HttpFilter]:
    """The HTTP filter chain, in order; the router is last.

    The local rate limit and fault filters are always present but do nothing
    until a route enables them (``typed_per_filter_config``), so adding a rate
    limit or a fault never changes the Listener (a Listener change makes Envoy
    drain and rebuild it). Rate limiting runs first: requests over the limit
    are refused before a fault could delay them.
    """
    return [
        hcm_pb2.HttpFilter(
            name=LOCAL_RATELIMIT,
            typed_config=pack(
                local_rate_limit_pb2.LocalRateLimit(stat_prefix="http_local_rate_limit")
            ),
        ),
        hcm_pb2.HttpFilter(name=FAULT, typed_config=pack(fault_pb2.HTTPFault())),
        hcm_pb2.HttpFilter(name=ROUTER, typed_config=pack(router_pb2.Router())),
    ]


def build_listener(listener: Listener) -> listener_pb2.Listener:
    """The Envoy Listener for a registry Listener."""
    out = listener_pb2.Listener(
        name=listener.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=listener.address, port_value=listener.port
            )
        ),
    )
    chain = out.filter_chains.add()
    if listener.tls is not None:
        chain.transport_socket.name = TLS_SOCKET
        chain.transport_socket.typed_config.Pack(downstream_tls(listener.tls))
    if listener.protocol == "tcp":
        assert listener.service is not None
        proxy = tcp_proxy_pb2.TcpProxy(
            stat_prefix=listener.name, cluster=cluster_name(listener.service)
        )
        chain.filters.append(
            listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))
        )
        return out
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=listener.name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=listener.name),
        http_filters=http_filters(),
    )
    if listener.tracing is not None:
        apply_tracing(hcm, listener.tracing, listener.name)
    chain.filters.append(listener_components_pb2.Filter(name=HCM, typed_config=pack(hcm)))
    return out


def listener_resource(listener: Listener) -> Resource:
    refs = {cluster_name(listener.service)} if listener.service else set()
    if listener.tracing is not None:
        refs.add(cluster_name(listener.tracing.service))  # the collector: make before break
    return make_resource(LISTENER, listener.name, build_listener(listener), frozenset(refs))
