"""mTLS between services, as translated: the ``mtls`` and ``sidecar`` service fields, the
namespace entry's default, sidecar inbound listeners per mode, and outbound clusters that
originate mTLS and accept only the callee's SPIFFE id."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.ingest.state import RegistryState
from xds_server.model.view import ChangeSet
from xds_server.resources.types import CLUSTER, LISTENER, ROUTE
from xds_server.translate import Translator

PREFIX = "/mesh/"


def _reset(entries: dict[str, Any]) -> tuple[RegistryState, ChangeSet]:
    state = RegistryState(PREFIX)
    rows = tuple(
        Entry(PREFIX + key, json.dumps(value).encode(), rev)
        for rev, (key, value) in enumerate(entries.items(), start=1)
    )
    return state, state.apply(Reset(len(rows) + 1, rows))


def _put(state: RegistryState, key: str, value: Any) -> ChangeSet:
    rev = state.revision + 1
    event = Event("put", PREFIX + key, json.dumps(value).encode(), rev)
    return state.apply(Changes(rev, (event,)))


def _cluster(translator: Translator, name: str) -> cluster_pb2.Cluster:
    msg = cluster_pb2.Cluster()
    assert translator.served[CLUSTER][name].any.Unpack(msg)
    return msg


def _listener(translator: Translator, name: str) -> listener_pb2.Listener:
    msg = listener_pb2.Listener()
    assert translator.served[LISTENER][name].any.Unpack(msg)
    return msg


def _routes(translator: Translator, name: str) -> route_pb2.RouteConfiguration:
    msg = route_pb2.RouteConfiguration()
    assert translator.served[ROUTE][name].any.Unpack(msg)
    return msg


def _upstream(cluster: cluster_pb2.Cluster) -> tls_pb2.UpstreamTlsContext | None:
    if not cluster.HasField("transport_socket"):
        return None
    ctx = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(ctx)
    return ctx


def _san(ctx: tls_pb2.UpstreamTlsContext) -> list[tuple[int, str]]:
    checks = ctx.common_tls_context.combined_validation_context.default_validation_context
    return [(m.san_type, m.matcher.exact) for m in checks.match_typed_subject_alt_names]


SIDECAR = {"inbound_port": 15006, "app_port": 8080}


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("services/shop/web", {"mtls": "on"}, "mtls"),
        ("services/shop/web", {"mtls": True}, "mtls"),
        ("services/shop/web", {"sidecar": {"app_port": 8080}}, "sidecar.inbound_port"),
        ("services/shop/web", {"sidecar": {"inbound_port": 15006}}, "sidecar.app_port"),
        (
            "services/shop/web",
            {"sidecar": {"inbound_port": 0, "app_port": 1}},
            "sidecar.inbound_port",
        ),
        (
            "services/shop/web",
            {"sidecar": {"inbound_port": 8080, "app_port": 8080}},
            "sidecar.app_port",
        ),
        ("services/shop/web", {"sidecar": {**SIDECAR, "port": 1}}, "sidecar.port"),
        ("namespaces/shop", {"mtls": "STRICT"}, "mtls"),
        ("namespaces/shop", {"default_policy": "maybe"}, "default_policy"),
        ("namespaces/shop", {"mtsl": "strict"}, "mtsl"),
    ],
)
def test_bad_fields_are_rejected_naming_the_field(key: str, value: Any, field: str) -> None:
    state, _ = _reset({key: value})
    problem = state.problems[PREFIX + key]
    assert problem.field == field, problem


def test_a_namespace_key_has_one_segment() -> None:
    state, _ = _reset({"namespaces/shop/extra": {}})
    assert "namespaces/<ns>" in state.problems[PREFIX + "namespaces/shop/extra"].reason


def test_a_bad_namespace_entry_keeps_the_last_good_one() -> None:
    state, _ = _reset({"namespaces/shop": {"mtls": "strict"}})
    _put(state, "namespaces/shop", {"mtls": "bogus"})
    assert state.namespaces["shop"].mtls == "strict"
    assert state.problems[PREFIX + "namespaces/shop"].last_good_kept


# -- outbound ------------------------------------------------------------------------------


def test_without_the_new_fields_clusters_are_plaintext() -> None:
    state, changes = _reset({"services/shop/web": {"port": 80}})
    translator = Translator()
    translator.update(state, changes)
    assert _upstream(_cluster(translator, "web.shop")) is None
    assert "inbound|web.shop" not in translator.served[LISTENER]


def test_an_mtls_service_is_called_over_mtls_checking_its_exact_spiffe_id() -> None:
    state, changes = _reset(
        {
            "services/shop/web": {"port": 80, "mtls": "permissive", "subsets": {"v1": {"v": "1"}}},
        }
    )
    translator = Translator(trust_domain="example.org")
    translator.update(state, changes)
    for name in ("web.shop", "web.shop|v1"):
        ctx = _upstream(_cluster(translator, name))
        assert ctx is not None, name
        # Exactly one check, an exact URI SAN: no prefix, no other identity of the mesh.
        assert _san(ctx) == [
            (common_pb2.SubjectAltNameMatcher.URI, "spiffe://example.org/ns/shop/svc/web")
        ]
        common = ctx.common_tls_context
        assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
        sds = common.combined_validation_context.validation_context_sds_secret_config
        assert sds.name == "ROOTCA" and sds.sds_config.HasField("ads")
        assert not common.tls_certificates  # no key material inline: SDS only


def test_the_namespace_entry_sets_the_default_and_a_service_overrides_it() -> None:
    state, changes = _reset(
        {
            "namespaces/shop": {"mtls": "strict"},
            "services/shop/web": {"port": 80},
            "services/shop/old": {"port": 80, "mtls": "off"},
            "services/other/web": {"port": 80},
        }
    )
    translator = Translator()
    translator.update(state, changes)
    assert _upstream(_cluster(translator, "web.shop")) is not None
    assert _upstream(_cluster(translator, "old.shop")) is None
    assert _upstream(_cluster(translator, "web.other")) is None

    # Turning the namespace off rebuilds its services' clusters (only theirs).
    delta = translator.update(state, _put(state, "namespaces/shop", {"mtls": "off"}))
    assert set(delta.changed[CLUSTER]) == {"web.shop"}
    assert _upstream(_cluster(translator, "web.shop")) is None


# -- inbound -------------------------------------------------------------------------------


def _chains(listener: listener_pb2.Listener) -> dict[str, listener_pb2.FilterChain]:
    return {chain.name: chain for chain in listener.filter_chains}


def _downstream(chain: listener_pb2.FilterChain) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(ctx)
    return ctx


def _hcm(chain: listener_pb2.FilterChain) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    assert chain.filters[0].typed_config.Unpack(hcm)
    return hcm


@pytest.mark.parametrize(
    ("mode", "chains", "inspector"),
    [
        ("strict", {"mtls"}, False),
        ("permissive", {"mtls", "plaintext"}, True),
        ("off", {"plaintext"}, False),
    ],
)
def test_sidecar_inbound_listener_per_mode(mode: str, chains: set[str], inspector: bool) -> None:
    state, changes = _reset(
        {"services/shop/web": {"port": 15006, "mtls": mode, "sidecar": SIDECAR}}
    )
    translator = Translator()
    translator.update(state, changes)
    listener = _listener(translator, "inbound|web.shop")
    assert listener.address.socket_address.port_value == 15006
    found = _chains(listener)
    assert set(found) == chains
    has_inspector = [f.name for f in listener.listener_filters] == [
        "envoy.filters.listener.tls_inspector"
    ]
    assert has_inspector == inspector
    if "mtls" in found:
        ctx = _downstream(found["mtls"])
        assert ctx.require_client_certificate.value
        common = ctx.common_tls_context
        assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
        assert common.combined_validation_context.validation_context_sds_secret_config.name == (
            "ROOTCA"
        )
    if mode == "permissive":
        assert found["mtls"].filter_chain_match.transport_protocol == "tls"
        assert found["plaintext"].filter_chain_match.transport_protocol == "raw_buffer"
    for chain in found.values():
        hcm = _hcm(chain)
        # The caller's identity reaches the application from the verified certificate only.
        assert hcm.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
        assert hcm.set_current_client_cert_details.uri
        assert hcm.http_filters[-1].name == "envoy.filters.http.router"
        assert hcm.rds.route_config_name == "inbound|web.shop"
    route = _routes(translator, "inbound|web.shop").virtual_hosts[0].routes[0].route
    assert route.cluster == "inbound|web.shop"
    local = _cluster(translator, "inbound|web.shop")
    address = local.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "127.0.0.1",
        8080,
    )


def test_inbound_listeners_go_to_the_services_own_sidecars_only() -> None:
    state, changes = _reset(
        {
            "services/shop/web": {"port": 15006, "mtls": "strict", "sidecar": SIDECAR},
            "services/shop/api": {"port": 15006, "mtls": "strict", "sidecar": SIDECAR},
            "listeners/public": {"port": 10000},
        }
    )
    translator = Translator()
    delta = translator.update(state, changes)
    assert delta.scopes is not None
    web = delta.scopes("web.shop")
    assert web.names[LISTENER] == {"public", "inbound|web.shop"}
    assert "inbound|web.shop" in web.names[CLUSTER]
    assert "inbound|web.shop" in web.names[ROUTE]
    assert "inbound|api.shop" not in web.names[LISTENER]
    assert "inbound|web.shop" not in delta.scopes("gateway").names[LISTENER]

    # Taking the sidecar away drops its listener and changes the rule again.
    delta = translator.update(state, _put(state, "services/shop/web", {"port": 15006}))
    assert delta.changed[LISTENER] == {"inbound|web.shop": None}
    assert delta.changed[ROUTE] == {"inbound|web.shop": None}
    assert delta.scopes is not None
    assert "inbound|web.shop" not in delta.scopes("web.shop").names[LISTENER]


def test_a_tcp_sidecar_proxies_bytes_over_mtls() -> None:
    state, changes = _reset(
        {
            "services/data/pg": {
                "protocol": "tcp",
                "port": 15432,
                "mtls": "strict",
                "sidecar": {"inbound_port": 15432, "app_port": 5432},
            }
        }
    )
    translator = Translator()
    translator.update(state, changes)
    chain = _chains(_listener(translator, "inbound|pg.data"))["mtls"]
    assert chain.filters[0].name == "envoy.filters.network.tcp_proxy"
    assert _downstream(chain).require_client_certificate.value
    assert "inbound|pg.data" not in translator.served[ROUTE]  # (bytes: no routes)


@pytest.mark.parametrize(("protocol", "upgrades"), [("http", ["websocket"]), ("grpc", [])])
def test_sidecar_inbound_route_lets_websocket_upgrades_through(
    protocol: str, upgrades: list[str]
) -> None:
    """A gateway route with ``websocket`` reaches a sidecar's service: the inbound route
    must let the upgrade through too (Envoy answers 403 to an upgrade a route does not
    allow). HTTP/1.1 services only: the local cluster of http2/grpc speaks HTTP/2."""
    state, changes = _reset(
        {"services/shop/web": {"port": 15006, "protocol": protocol, "sidecar": SIDECAR}}
    )
    translator = Translator()
    translator.update(state, changes)
    route = _routes(translator, "inbound|web.shop").virtual_hosts[0].routes[0].route
    assert [u.upgrade_type for u in route.upgrade_configs] == upgrades
