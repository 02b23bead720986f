"""What a namespace-limited admin token sees of a gateway's resources (ProxyView): the
rule behind GetProxyConfig and CSDS, one resource kind at a time. The attacks through a
real meshd are in tests/etcd/test_admin_tenancy.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2

from xds_server.admin.auth import Principal
from xds_server.admin.proxy_view import ProxyView
from xds_server.model import Listener, ServiceRef
from xds_server.resources.resource import make_resource
from xds_server.resources.types import CLUSTER, LISTENER, ROUTE, SECRET

SHOP = Principal("viewer", ("shop",))
STATE: Any = SimpleNamespace(
    listeners={
        "public": Listener("public"),
        "pg": Listener("pg", protocol="tcp", service=ServiceRef("secret", "db")),
        "shop-tcp": Listener("shop-tcp", protocol="tcp", service=ServiceRef("shop", "db")),
    },
    registered_services={ServiceRef("shop", "web"): None, ServiceRef("secret", "vault"): None},
)


def _view(who: Principal = SHOP) -> ProxyView:
    return ProxyView(who, STATE)


def _shown(type_url: str, name: str) -> bool:
    res = make_resource(type_url, name, cluster_pb2.Cluster(name=name))
    return _view().resource(res) is not None


def test_clusters_endpoints_and_listeners_of_the_callers_namespaces_only() -> None:
    assert _shown(CLUSTER, "web.shop") and _shown(CLUSTER, "web.shop|v1")
    assert not _shown(CLUSTER, "vault.secret") and not _shown(CLUSTER, "vault.secret|v1")
    assert not _shown(CLUSTER, "inbound|vault.secret") and not _shown(CLUSTER, "xds")
    assert _shown(LISTENER, "public") and _shown(LISTENER, "shop-tcp")
    assert not _shown(LISTENER, "pg")  # a TCP listener of secret's service
    assert _shown(LISTENER, "web.shop") and not _shown(LISTENER, "vault.secret")  # proxyless
    assert _shown(SECRET, "ROOTCA") and not _shown(SECRET, "default")


def test_a_shared_route_configuration_keeps_the_callers_route_entries() -> None:
    config = route_pb2.RouteConfiguration(name="public")
    mixed = config.virtual_hosts.add(name="any", domains=["*"])
    mixed.routes.add(name="shop/front")
    mixed.routes.add(name="secret/admin")
    config.virtual_hosts.add(name="vault", domains=["vault.secret"]).routes.add(
        name="default:vault.secret"
    )
    config.virtual_hosts.add(name="web", domains=["web.shop"]).routes.add(name="default:web.shop")
    res = make_resource(ROUTE, "public", config)
    shown = _view().resource(res)
    assert shown is not None and shown.version == res.version
    cut = route_pb2.RouteConfiguration.FromString(shown.body)
    assert [(v.name, [r.name for r in v.routes]) for v in cut.virtual_hosts] == [
        ("any", ["shop/front"]),
        ("web", ["default:web.shop"]),
    ]
    # A token for every namespace, and a sidecar of the caller's own: whole.
    assert ProxyView(Principal("viewer", ("*",)), STATE).everything


def test_sidecars_are_those_of_registered_services() -> None:
    def conn(cluster: str) -> Any:
        return SimpleNamespace(stream=SimpleNamespace(node_cluster=cluster))

    view = _view()
    assert view.sees(conn("web.shop")) and view.sees_whole(conn("web.shop"))
    assert not view.sees(conn("vault.secret"))
    gateway = conn("gateway")
    assert view.sees(gateway) and not view.sees_whole(gateway)
    # Not (yet) a registered service's: a gateway, seen filtered.
    assert view.sees(conn("ghost.secret")) and not view.sees_whole(conn("ghost.secret"))
    assert not view.node_visible([conn("web.shop"), conn("vault.secret")])
