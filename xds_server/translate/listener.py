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
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server.model import Listener
from xds_server.model.names import cluster_name
from xds_server.resources.resource import Resource, make_resource
from xds_server.resources.types import LISTENER
from xds_server.translate.cluster import ads_source
from xds_server.translate.route import FAULT, LOCAL_RATELIMIT
from xds_server.translate.tracing import apply_tracing

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"


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
