"""Node scopes: the cache applies a scope rule it is given (names per type, or every
resource of a type); the mesh's rule, from the listeners, lives in translation."""

from __future__ import annotations

from xds_server.cache import ConfigCache
from xds_server.model import Listener, ServiceRef
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.resources.resource import resource_from_bytes
from xds_server.resources.scope import Selection
from xds_server.translate.scoping import mesh_scopes
from xds_server.translate.translator import Delta


def _cache_with(*clusters: str) -> ConfigCache:
    cache = ConfigCache()
    delta = Delta()
    for name in clusters:
        delta.changed[CLUSTER][name] = resource_from_bytes(CLUSTER, name, name.encode())
    cache.apply(delta, 1)
    return cache


def test_the_cache_applies_the_rule_it_is_given() -> None:
    cache = _cache_with("a", "b")
    assert cache.scope("any").names(CLUSTER) == frozenset()  # before any rule: nothing

    def rule(node_cluster: str) -> Selection:
        if node_cluster.startswith("edge"):
            return Selection({LISTENER: frozenset({"public"})}, every=frozenset({CLUSTER}))
        return Selection({CLUSTER: frozenset({"b"})})

    cache.apply(Delta(scopes=rule), 2)
    edge = cache.scope("edge-1")
    assert set(edge.names(CLUSTER)) == {"a", "b"} and edge.names(LISTENER) == {"public"}
    assert edge.names(ROUTE) == frozenset()
    assert edge.xor(CLUSTER) == cache.xor_of(CLUSTER, ("a", "b"))
    assert cache.scope("edge-2") is edge  # the same selection: one shared scope
    inner = cache.scope("inner")
    assert inner.names(CLUSTER) == {"b"} and inner.full(CLUSTER).names == {"b"}


def test_the_mesh_rule_follows_the_listeners() -> None:
    web = ServiceRef("default", "web")
    rule = mesh_scopes(
        {
            "public": Listener("public", nodes=("gateway",)),
            "db": Listener("db", protocol="tcp", nodes=("app-*",), service=web),
        }
    )
    gateway = rule("gateway")
    assert gateway.names[LISTENER] == {"public"} and gateway.names[ROUTE] == {"public"}
    assert gateway.every == {CLUSTER, ENDPOINT}  # an HTTP listener routes every service
    app = rule("app-1")
    assert app.names[LISTENER] == {"db"} and app.names[ROUTE] == frozenset()
    assert app.names[CLUSTER] == app.names[ENDPOINT] == {"web.default"}
    assert app.every == frozenset()
    assert rule("other").names[LISTENER] == frozenset()
    assert rule("gateway").key() == gateway.key() != app.key()
