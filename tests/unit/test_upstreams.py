"""Sidecars scoped to their ``upstreams``: validation, the scope rule, route configuration
variants, and change routing (a change to a service wakes only the proxies that hold it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.support.stream_mesh import Mesh
from tests.support.translation import translate_afresh
from tests.unit.test_delta_stream import dreq, names
from xds_server.cache import ConfigCache
from xds_server.errors import ValidationError
from xds_server.ingest.registry import Changes, Event, Reset
from xds_server.ingest.state import RegistryState
from xds_server.model import ServiceRef, parse_key
from xds_server.model.entries import parse_entity
from xds_server.model.service import MAX_UPSTREAMS, Service
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.resources.scope import Selection, variant_key
from xds_server.server.delta_stream import DeltaStream
from xds_server.server.stream import SotwStream
from xds_server.translate import Translator

P = "/mesh/"


def _service(value: object, key: str = "services/shop/front") -> Service:
    entity = parse_entity(parse_key(P + key, P), json.dumps(value).encode())
    assert isinstance(entity, Service)
    return entity


def test_upstreams_normalize_and_default_to_the_service_namespace() -> None:
    svc = _service({"upstreams": ["cart", "ops/db", "pay/*", "pay/card", "cart"]})
    assert svc.upstreams is not None
    assert svc.upstreams.entries == ("ops/db", "pay/*", "shop/cart")
    assert svc.upstreams.covers(ServiceRef("pay", "anything"))
    assert not svc.upstreams.covers(ServiceRef("ops", "other"))
    # Absent: everything, as before; empty: nothing but what routes on its listeners need.
    assert _service({}).upstreams is None
    empty = _service({"upstreams": []}).upstreams
    assert empty is not None and empty.entries == ()
    # The same declaration written differently is one variant: sidecars share it.
    same = _service({"upstreams": ["shop/cart", "pay/*", "ops/db"]}).upstreams
    assert same is not None and same.variant == svc.upstreams.variant


@pytest.mark.parametrize(
    ("value", "field", "says"),
    [
        ("cart", "upstreams", "must be an array"),
        ([7], "upstreams[0]", "must be a string"),
        (["cart", "*"], "upstreams[1]", "only wildcard is 'ns/*'"),
        (["ca*"], "upstreams[0]", "only wildcard is 'ns/*'"),
        (["*/cart"], "upstreams[0]", "only wildcard is 'ns/*'"),
        (["ops/c*"], "upstreams[0]", "only wildcard is 'ns/*'"),
        (["a/b/c"], "upstreams[0]", "must be 'name' or 'namespace/name'"),
        (["Cart"], "upstreams[0]", "DNS-1123"),
        (["ops/"], "upstreams[0]", "DNS-1123"),
        ([f"s{i}" for i in range(MAX_UPSTREAMS + 1)], "upstreams", f"at most {MAX_UPSTREAMS}"),
    ],
)
def test_bad_upstreams_are_refused_naming_the_entry(value: object, field: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        _service({"upstreams": value})
    assert err.value.field == field and says in err.value.reason


# -- the scope rule ------------------------------------------------------------------------

_SIDE = {"inbound_port": 15006, "app_port": 8080}
REGISTRY: dict[str, dict[str, Any]] = {
    "services/shop/front": {"upstreams": ["cart", "pay/*"], "sidecar": _SIDE},
    "services/shop/cart": {"port": 8080},
    "services/shop/stock": {"port": 8080},
    "services/shop/search": {"port": 8080, "subsets": {"v2": {"version": "v2"}}},
    "services/pay/card": {"port": 8080},
    "services/pay/bank": {"port": 8080},
    "services/shop/back": {"sidecar": {"inbound_port": 15007, "app_port": 8081}},
    "endpoints/shop/cart/a": {"address": "10.0.0.1"},
    "endpoints/shop/stock/a": {"address": "10.0.0.2"},
    "endpoints/shop/search/a": {"address": "10.0.0.3", "labels": {"version": "v2"}},
    "listeners/out": {"port": 15001, "nodes": ["*.shop"]},
    "listeners/public": {"port": 10000, "nodes": ["gateway"]},
    # A route on the sidecars' listener to a service none declares: its cluster comes too.
    "routes/shop/find": {
        "listener": "out",
        "hosts": ["find.local"],
        "destinations": [{"service": "search", "subset": "v2"}],
    },
    "routes/shop/web": {"listener": "public", "destinations": [{"service": "stock"}]},
}


def _route_hosts(mesh: Mesh, key: str) -> set[str]:
    res = mesh.cache.get(ROUTE, key)
    assert res is not None
    config = route_pb2.RouteConfiguration.FromString(res.body)
    assert config.name == "out" or config.name == key
    return {d for vh in config.virtual_hosts for d in vh.domains if ":" not in d}


def test_a_sidecar_that_declares_upstreams_holds_them_and_its_routes_needs_only() -> None:
    mesh = Mesh(REGISTRY)
    front = mesh.cache.scope("front.shop")
    clusters = set(front.names(CLUSTER))
    assert clusters == {
        "cart.shop",
        "card.pay",
        "bank.pay",
        "search.shop|v2",  # the route on its listener sends there
        "inbound|front.shop",  # its own local application
    }
    assert set(front.names(ENDPOINT)) == clusters - {"inbound|front.shop"}
    assert set(front.names(LISTENER)) == {"out", "inbound|front.shop"}
    # Its route configuration for "out" is a variant under the listener's name: the
    # declared upstreams' default hosts and the listener's routes, nothing else.
    key = front.alias(ROUTE, "out")
    assert key != "out" and key.startswith("out~")
    assert _route_hosts(mesh, key) == {"cart.shop", "card.pay", "bank.pay", "find.local"}
    assert mesh.cache.get(ROUTE, key).name == "out"  # type: ignore[union-attr]
    # A sidecar of a service without upstreams still gets every service's default host,
    # but no other sidecar's inbound cluster (private: only its own).
    back = mesh.cache.scope("back.shop")
    assert back.alias(ROUTE, "out") == "out"
    assert "stock.shop" in back.names(CLUSTER) and "inbound|back.shop" in back.names(CLUSTER)
    assert "inbound|front.shop" not in back.names(CLUSTER)
    assert back.version(CLUSTER) == back.full(CLUSTER).version
    assert "stock.shop" in _route_hosts(mesh, "out")
    # Gateways as before: every service (none of the sidecars' inbound clusters).
    gateway = set(mesh.cache.scope("gateway").names(CLUSTER))
    assert {"stock.shop", "cart.shop", "bank.pay", "search.shop"} <= gateway
    assert not any(n.startswith("inbound|") for n in gateway)


def test_sidecars_with_the_same_upstreams_share_one_variant() -> None:
    mesh = Mesh(
        {
            **REGISTRY,
            "services/shop/cart2": {"upstreams": ["pay/*", "shop/cart"]},
        }
    )
    a, b = mesh.cache.scope("front.shop"), mesh.cache.scope("cart2.shop")
    assert a.alias(ROUTE, "out") == b.alias(ROUTE, "out")
    variants = [k for k in mesh.cache.resources(ROUTE) if k.startswith("out~")]
    assert len(variants) == 1


def test_the_scope_follows_services_joining_and_leaving_a_namespace_entry() -> None:
    mesh = Mesh(REGISTRY)
    before = mesh.cache.scope("front.shop")
    key = before.alias(ROUTE, "out")
    w = _declared(mesh, "front.shop")
    other = _declared(mesh, "back.shop")
    mesh.change({"services/pay/wallet": {"port": 8080}})
    assert "wallet.pay" in mesh.cache.scope("front.shop").names(CLUSTER)
    assert "wallet.pay" in _route_hosts(mesh, key)
    assert w.scopes_changed and not other.scopes_changed  # (only its scope moved)
    mesh.change({}, deletes=("services/pay/wallet",))
    assert "wallet.pay" not in mesh.cache.scope("front.shop").names(CLUSTER)


def _declared(mesh: Mesh, node_cluster: str) -> Any:
    """A watcher declared as a stream of ``node_cluster`` holding CDS by wildcard."""
    w = mesh.cache.watch()
    mesh.cache.set_interest(w, {CLUSTER: (True, frozenset())}, node_cluster)
    return w


def test_a_change_wakes_only_the_wildcard_streams_whose_scope_holds_it() -> None:
    mesh = Mesh(REGISTRY)
    front, back, gateway = (_declared(mesh, nc) for nc in ("front.shop", "back.shop", "gateway"))
    mesh.change({"services/shop/stock": {"port": 8080, "connect_timeout_ms": 50}})
    assert not front.event.is_set() and not front.pending  # not one of its upstreams
    assert back.event.is_set() and gateway.event.is_set()
    back.take(), gateway.take()
    mesh.change({"services/shop/cart": {"port": 8080, "connect_timeout_ms": 50}})
    assert front.event.is_set() and set(front.pending[CLUSTER]) == {"cart.shop"}
    for w in (front, back, gateway):
        w.take()
    # Another sidecar's inbound cluster: only that service's own streams hear of it.
    mesh.change({"services/shop/back": {"sidecar": {"inbound_port": 15007, "app_port": 9}}})
    assert not front.event.is_set() and not gateway.event.is_set()
    assert back.event.is_set() and "inbound|back.shop" in back.pending[CLUSTER]


# -- streams -------------------------------------------------------------------------------


def _delta_client(mesh: Mesh, node_cluster: str) -> tuple[DeltaStream, Any, dict[str, Any]]:
    s = DeltaStream(mesh.cache, clock=lambda: 1.0)
    w = mesh.cache.watch()
    got: dict[str, Any] = {}

    def ask(req: Any) -> list[Any]:
        out = s.on_request(req)
        mesh.cache.set_interest(w, s.interest(), s.node_cluster)
        return out

    (cds,) = ask(dreq(CLUSTER, node=("n1", node_cluster)))
    ask(dreq(CLUSTER, nonce=cds.nonce))
    (eds,) = ask(dreq(ENDPOINT, tuple(names(cds))))
    ask(dreq(ENDPOINT, nonce=eds.nonce))
    (lds,) = ask(dreq(LISTENER))
    ask(dreq(LISTENER, nonce=lds.nonce))
    (rds,) = ask(dreq(ROUTE, ("out",)))
    ask(dreq(ROUTE, nonce=rds.nonce))
    got.update({CLUSTER: cds, ENDPOINT: eds, LISTENER: lds, ROUTE: rds})
    return s, w, got


def test_a_delta_client_is_sent_nothing_for_a_service_it_does_not_hold() -> None:
    mesh = Mesh(REGISTRY)
    s, w, got = _delta_client(mesh, "front.shop")
    assert set(names(got[CLUSTER])) == {"cart.shop", "card.pay", "bank.pay", "search.shop|v2"} | {
        "inbound|front.shop"
    }
    assert names(got[ROUTE]) == ["out"]
    assert got[ROUTE].resources[0] is mesh.cache.get(ROUTE, s.scope.alias(ROUTE, "out"))  # type: ignore[union-attr]
    for change in (
        {"services/shop/stock": {"port": 8080, "connect_timeout_ms": 7}},
        {"endpoints/shop/stock/a": {"address": "10.0.0.9"}},
        {"services/shop/back": {"sidecar": {"inbound_port": 15007, "app_port": 7}}},
    ):
        mesh.change(change)
        assert not w.event.is_set()
        pending, scopes = w.take()
        assert s.on_change(pending, scopes) == []
    mesh.change({"endpoints/shop/cart/b": {"address": "10.0.0.8"}})
    assert w.event.is_set()
    pending, scopes = w.take()
    (eds,) = s.on_change(pending, scopes)
    assert names(eds) == ["cart.shop"]


def test_a_changed_declaration_sends_the_new_variant_under_the_listener_name() -> None:
    mesh = Mesh(REGISTRY)
    for sotw in (False, True):
        if sotw:
            stream = SotwStream(mesh.cache, clock=lambda: 1.0)
            w = mesh.cache.watch()
            req = _sotw_req
            for t, subs in ((CLUSTER, ()), (LISTENER, ()), (ROUTE, ("out",))):
                (resp,) = stream.on_request(req(t, subs))
                stream.on_request(req(t, subs, nonce=resp.nonce, version=resp.version))
                mesh.cache.set_interest(w, stream.interest(), stream.node_cluster)
            s: SotwStream | DeltaStream = stream
        else:
            s, w, _ = _delta_client(mesh, "front.shop")
        upstreams = ["cart", "stock"] if not sotw else ["stock"]
        mesh.change({"services/shop/front": {"upstreams": upstreams, "sidecar": _SIDE}})
        pending, scopes = w.take()
        assert scopes
        out = s.on_change(pending, scopes)
        routes = [r for r in out if r.type_url == ROUTE]
        assert routes and names(routes[0]) == ["out"]  # type: ignore[arg-type]
        config = route_pb2.RouteConfiguration.FromString(routes[0].resources[0].body)
        hosts = {d for vh in config.virtual_hosts for d in vh.domains if ":" not in d}
        assert hosts == {*(f"{u}.shop" for u in upstreams), "find.local"}
        key = mesh.cache.scope("front.shop").alias(ROUTE, "out")
        assert s.types[ROUTE].subscribed == {key}


def _sotw_req(t: str, subs: tuple[str, ...], *, nonce: str = "", version: str = "") -> Any:
    r = discovery_pb2.DiscoveryRequest(
        type_url=t, resource_names=list(subs), response_nonce=nonce, version_info=version
    )
    r.node.id, r.node.cluster = "n2", "front.shop"
    return r


# -- incremental equals afresh, scopes included ----------------------------------------------

VALUES: dict[str, list[Any]] = {
    "services/shop/front": [
        {"upstreams": ["cart"]},
        {"upstreams": ["pay/*"], "sidecar": _SIDE},
        {"upstreams": []},
        {},
        {"upstreams": ["c*"]},
    ],
    "services/shop/side": [{"upstreams": ["pay/*"]}, {"upstreams": ["cart", "pay/card"]}, {}],
    "services/shop/cart": [{"port": 8080}, {"port": 81, "protocol": "tcp"}, {"port": 82}],
    "services/pay/card": [
        {},
        {"load_balancer": {"algorithm": "maglev", "session_affinity": {"header": "x"}}},
    ],
    "services/pay/bank": [{"port": 9}],
    "routes/shop/r": [
        {"listener": "out", "hosts": ["r.local"], "destinations": [{"service": "pay/card"}]},
        {"listener": "*", "destinations": [{"service": "cart"}]},
        {"listener": "public", "destinations": [{"service": "pay/bank"}]},
    ],
    "listeners/out": [{"port": 15001, "nodes": ["*.shop"]}, {"port": 15001, "nodes": ["f*"]}],
    "listeners/public": [
        {"port": 10000},
        {"port": 10000, "protocol": "tcp", "service": "pay/bank"},
    ],
}
NODE_CLUSTERS = ("front.shop", "side.shop", "cart.shop", "gateway")

ops = st.sampled_from(sorted(VALUES)).flatmap(
    lambda k: st.sampled_from([*VALUES[k], None]).map(lambda v: (k, v))
)


_AFFINITY = VALUES["services/pay/card"][1]


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, min_size=1, max_size=25))
# A covered service deleted while no declaration covered it, then re-created unchanged after
# a new declaration of its namespace: it must join that declaration's variant.
@example(
    [
        ("listeners/out", VALUES["listeners/out"][0]),
        ("services/pay/card", _AFFINITY),
        ("services/shop/front", {"upstreams": ["pay/*"]}),
        ("services/shop/front", {}),
        ("services/pay/card", None),
        ("services/shop/front", VALUES["services/shop/front"][1]),
        ("services/pay/card", _AFFINITY),
    ]
)
def test_scoped_translation_is_incremental(history: list[tuple[str, Any]]) -> None:
    """After every change, the variants served and every node cluster's scope (as the
    cache memoizes it, invalidated only for the node clusters a change names) equal those
    translated afresh."""
    state = RegistryState(P)
    cache = ConfigCache()
    translator = Translator(served=cache.served())
    cache.apply(translator.update(state, state.apply(Reset(1, ()))), 1)
    for rev, (key, value) in enumerate(history, start=2):
        for nc in NODE_CLUSTERS:
            cache.scope(nc)  # memoized: a stale memo would show below
        event = (
            Event("delete", P + key, b"", rev)
            if value is None
            else Event("put", P + key, json.dumps(value).encode(), rev)
        )
        cache.apply(translator.update(state, state.apply(Changes(rev, (event,)))), rev)
        fresh = translate_afresh(state)
        served = {t: {n: r.version for n, r in idx.items()} for t, idx in cache.index.items()}
        assert served == {
            t: {n: r.version for n, r in idx.items()} for t, idx in fresh.served.items()
        }
        for nc in NODE_CLUSTERS:
            assert _meaning(cache.scope(nc).selection) == _meaning(fresh.scopes(nc)), nc


def _meaning(selection: Selection) -> tuple[object, ...]:
    """What a selection selects (an absent type and an empty one select the same)."""
    names = {t: n for t, n in selection.names.items() if n}
    aliases = {t: dict(a) for t, a in selection.aliases.items() if a}
    return (names, selection.every, aliases)


def test_variant_keys_name_listener_and_declaration() -> None:
    mesh = Mesh(REGISTRY)
    front = mesh.state.services[ServiceRef("shop", "front")]
    assert front.upstreams is not None
    assert mesh.cache.scope("front.shop").alias(ROUTE, "out") == variant_key(
        "out", front.upstreams.variant
    )


def test_a_listener_change_re_sends_the_sidecars_variant_over_delta() -> None:
    """Point 2 over Delta: after a Listener changes, its route configuration is pushed
    unasked; for a scoped sidecar, its own variant (under the listener's name)."""
    mesh = Mesh(REGISTRY)
    s, w, _ = _delta_client(mesh, "front.shop")
    mesh.change({"listeners/out": {"port": 15002, "nodes": ["*.shop"]}})
    pending, scopes = w.take()
    out = s.on_change(pending, scopes)
    assert [r.type_url for r in out][:1] == [LISTENER]
    s.on_request(dreq(LISTENER, nonce=out[0].nonce))
    rest = out[1:] or s.on_request(dreq(LISTENER, nonce=out[0].nonce))
    routes = [r for r in [*out, *rest] if r.type_url == ROUTE]
    assert routes and names(routes[0]) == ["out"]
    key = mesh.cache.scope("front.shop").alias(ROUTE, "out")
    assert routes[0].resources[0] is mesh.cache.get(ROUTE, key)


def test_a_listener_change_re_warms_the_sidecars_variant_over_sotw() -> None:
    """Point 2 over SotW: Envoy's ACK-looking RDS request after a Listener change is
    answered with the sidecar's own variant."""
    mesh = Mesh(REGISTRY)
    s = SotwStream(mesh.cache, clock=lambda: 1.0)
    w = mesh.cache.watch()
    held: dict[str, Any] = {}
    for t, subs in ((CLUSTER, ()), (LISTENER, ()), (ROUTE, ("out",))):
        (resp,) = s.on_request(_sotw_req(t, subs))
        s.on_request(_sotw_req(t, subs, nonce=resp.nonce, version=resp.version))
        mesh.cache.set_interest(w, s.interest(), s.node_cluster)
        held[t] = resp
    mesh.change({"listeners/out": {"port": 15002, "nodes": ["*.shop"]}})
    pending, scopes = w.take()
    (lds,) = s.on_change(pending, scopes)
    assert lds.type_url == LISTENER
    s.on_request(_sotw_req(LISTENER, (), nonce=lds.nonce, version=lds.version))
    rds = held[ROUTE]
    (again,) = s.on_request(_sotw_req(ROUTE, ("out",), nonce=rds.nonce, version=rds.version))
    key = mesh.cache.scope("front.shop").alias(ROUTE, "out")
    assert again.resources == (mesh.cache.get(ROUTE, key),)


def test_a_route_to_a_new_backend_brings_its_cluster_to_the_scoped_sidecar() -> None:
    mesh = Mesh(REGISTRY)
    s, w, _ = _delta_client(mesh, "front.shop")
    route = {"listener": "out", "hosts": ["stock.local"], "destinations": [{"service": "stock"}]}
    mesh.change({"routes/shop/stock": route})
    pending, scopes = w.take()
    assert scopes  # (its scope moved: only its node cluster's)
    out = s.on_change(pending, scopes)
    cds = [r for r in out if r.type_url == CLUSTER]
    assert cds and names(cds[0]) == ["stock.shop"] and not cds[0].removed
    s.on_request(dreq(CLUSTER, nonce=cds[0].nonce))
    # Its variant of "out" now carries the route (pushed once the cluster is answered).
    routes = [
        r for r in (*out, *s.on_request(dreq(ENDPOINT, ("stock.shop",)))) if r.type_url == ROUTE
    ]
    if not routes:
        pending, scopes = w.take()
        routes = [r for r in s.on_change(pending, scopes) if r.type_url == ROUTE]
    assert routes and names(routes[0]) == ["out"]
    assert b"stock.local" in routes[0].resources[0].body
