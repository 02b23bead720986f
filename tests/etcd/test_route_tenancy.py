"""Finding 1 of issue 22 attacked on a real meshd over real etcd: an ``editor`` token for
``auth`` tries to take ``default``'s traffic (a catch-all on the shared listener, default's
host, a route to a namespace it cannot read), through the admin API and with etcdctl-style
writes that bypass it. Each attempt is refused or rejected, and the RouteConfiguration a
gateway receives keeps sending default's traffic to default's service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.route.v3 import route_pb2

from adapters.etcd import EmbeddedEtcd
from tests.support.fixtures_admin import AdminMesh, bearer, entry, rpc_error, running_admin, seed
from tests.support.xds_client import sotw_client
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Authenticator, parse_tokens
from xds_server.resources import ROUTE

TOKENS = {
    "tokens": [
        {"token": "edit-all", "role": "editor", "namespaces": ["*"]},
        {"token": "edit-auth", "role": "editor", "namespaces": ["auth"]},
    ]
}
ADMIN, AUTH = bearer("edit-all"), bearer("edit-auth")

MESH = [
    entry(pb.KIND_LISTENER, "public", {"port": 10000}),
    entry(pb.KIND_SERVICE, "web", {"port": 8080, "subsets": {"v1": {"v": "1"}}}, ns="default"),
    entry(pb.KIND_SERVICE, "login", {"port": 8080}, ns="auth"),
    entry(pb.KIND_SERVICE, "vault", {"port": 8200}, ns="secret"),
]
SPLIT = {"listener": "public", "destinations": [{"service": "web", "subset": "v1"}]}

HIJACKS: dict[str, dict[str, Any]] = {
    # the gateway's catch-all, until now default/web-split's
    "hijack": {"listener": "public", "destinations": [{"service": "login"}]},
    # default's host on every HTTP listener
    "host": {"listener": "*", "hosts": ["web.default"], "destinations": [{"service": "login"}]},
    # a suffix wildcard that beats web.default:* for any Host with a port
    "wild": {"listener": "*", "hosts": ["*t:10000"], "destinations": [{"service": "login"}]},
    # a namespace auth cannot read, which exports to default only
    "vault": {
        "listener": "public",
        "match": {"prefix": "/vault"},
        "destinations": [{"service": "secret/vault"}],
    },
}


@pytest.fixture
async def mesh(etcd_shared: EmbeddedEtcd, etcd_prefix: str) -> AsyncIterator[AdminMesh]:
    async with running_admin(etcd_shared, etcd_prefix, Authenticator(parse_tokens(TOKENS))) as m:
        await seed(m.stub, MESH, metadata=ADMIN)
        # (written with etcd here: meshd judges it as it would one written through the API)
        await m.put_json("namespaces/secret", {"export_to": ["default"]})
        await m.wait_for(lambda: "secret" in m.app.controller.state.namespaces, "secret")
        await seed(m.stub, [entry(pb.KIND_ROUTE, "web-split", SPLIT, ns="default")], ADMIN)
        yield m


def _vhost(config: route_pb2.RouteConfiguration, host: str) -> Any:
    """The virtual host Envoy picks for ``host``: exact, then the longest suffix wildcard,
    then the longest prefix wildcard, then ``*``."""
    domains = {d: vh for vh in config.virtual_hosts for d in vh.domains}
    if host in domains:
        return domains[host]
    suffixes = [d for d in domains if d.startswith("*") and d != "*" and host.endswith(d[1:])]
    if suffixes:
        return domains[max(suffixes, key=len)]
    prefixes = [d for d in domains if d.endswith("*") and d != "*" and host.startswith(d[:-1])]
    if prefixes:
        return domains[max(prefixes, key=len)]
    return domains.get("*")


def _cluster(config: route_pb2.RouteConfiguration, host: str, path: str) -> str:
    """The cluster a request for ``host`` and ``path`` goes to (no header matches here)."""
    vh = _vhost(config, host)
    assert vh is not None, host
    for route in vh.routes:
        m = route.match
        which = m.WhichOneof("path_specifier")
        if (which == "prefix" and path.startswith(m.prefix)) or (
            which == "path" and path == m.path
        ):
            action = route.route
            if action.WhichOneof("cluster_specifier") == "cluster":
                return str(action.cluster)
            return ",".join(c.name for c in action.weighted_clusters.clusters)
    return "(404)"


def _routing(got: dict[str, Any]) -> dict[tuple[str, str], str]:
    config = route_pb2.RouteConfiguration()
    got[ROUTE].resources[0].Unpack(config)
    return {
        (host, path): _cluster(config, host, path)
        for host in ("web.default", "web.default:10000", "example.com")
        for path in ("/", "/vault")
    }


EXPECTED = {
    ("web.default", "/"): "web.default",
    ("web.default", "/vault"): "web.default",
    ("web.default:10000", "/"): "web.default",
    ("web.default:10000", "/vault"): "web.default",
    ("example.com", "/"): "web.default|v1",
    ("example.com", "/vault"): "web.default|v1",
}


async def _served(mesh: AdminMesh, want: dict[tuple[str, str], str]) -> None:
    """What a gateway is sent for listener public routes as ``want`` says."""
    async with sotw_client(mesh.app.xds_port, "gateway", node_id="gw-1") as got:
        for _ in range(100):
            if ROUTE in got and _routing(got) == want:
                return
            await asyncio.sleep(0.05)
        assert ROUTE in got, "no RDS"
        assert _routing(got) == want


async def test_a_namespace_editor_cannot_hijack_through_the_admin_api(mesh: AdminMesh) -> None:
    await _served(mesh, EXPECTED)
    stub = mesh.stub
    for name in ("hijack", "host", "wild"):
        code, msg = await rpc_error(
            stub.CreateEntry(
                pb.CreateEntryRequest(entry=entry(pb.KIND_ROUTE, name, HIJACKS[name], ns="auth")),
                metadata=AUTH,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, msg)
    code, msg = await rpc_error(
        seed(stub, [entry(pb.KIND_ROUTE, "hijack", HIJACKS["hijack"], ns="auth")], AUTH)
    )
    assert "held by the older route default/web-split" in msg, msg
    code, msg = await rpc_error(
        seed(stub, [entry(pb.KIND_ROUTE, "host", HIJACKS["host"], ns="auth")], AUTH)
    )
    assert "'web.default' is the default host of service default/web" in msg, msg
    code, msg = await rpc_error(
        seed(stub, [entry(pb.KIND_ROUTE, "vault", HIJACKS["vault"], ns="auth")], AUTH)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED, msg
    assert "destination secret/vault" in msg and "'secret'" in msg, msg
    # Splitting default's own route to a service of secret is refused the same way.
    code, msg = await rpc_error(
        stub.SetSplit(
            pb.SetSplitRequest(
                namespace="auth",
                route="nope",
                destinations=[pb.Destination(service="secret/vault", weight=1)],
            ),
            metadata=AUTH,
        )
    )
    assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND), msg
    listed = await stub.ListEntries(pb.ListEntriesRequest(kind=pb.KIND_ROUTE), metadata=ADMIN)
    assert [(e.ref.namespace, e.ref.name) for e in listed.entries] == [("default", "web-split")]
    await _served(mesh, EXPECTED)


async def test_etcd_writes_that_bypass_the_admin_api_are_rejected(mesh: AdminMesh) -> None:
    await _served(mesh, EXPECTED)
    for name, spec in HIJACKS.items():
        await mesh.put_json(f"routes/auth/{name}", spec)
    keys = {name: f"{mesh.prefix}routes/auth/{name}" for name in HIJACKS}
    await mesh.wait_for(
        lambda: all(k in mesh.app.controller.state.problems for k in keys.values()),
        "the four routes rejected",
    )
    errors = await mesh.stub.ListErrors(pb.ListErrorsRequest(namespace="auth"), metadata=AUTH)
    why = {
        e.key.removeprefix(f"{mesh.prefix}routes/auth/"): f"{e.field}: {e.reason}"
        for e in errors.errors
    }
    assert "held by the older route default/web-split" in why["hijack"], why
    assert "default host of service default/web" in why["host"], why
    assert "could match default hosts" in why["wild"], why
    assert "namespace secret does not export to namespace auth" in why["vault"], why
    await _served(mesh, EXPECTED)
    # Its own namespace's paths on the shared listener are what auth may add.
    await mesh.put_json(
        "routes/auth/mine",
        {
            "listener": "public",
            "match": {"prefix": "/auth"},
            "destinations": [{"service": "login"}],
        },
    )
    await mesh.wait_for(
        lambda: f"{mesh.prefix}routes/auth/mine" in mesh.app.controller.state.routes, "auth/mine"
    )
    await _served(mesh, EXPECTED)


async def test_withdrawing_export_to_takes_effect(mesh: AdminMesh) -> None:
    vault = {
        "listener": "public",
        "match": {"prefix": "/vault"},
        "destinations": [{"service": "secret/vault"}],
    }
    await seed(mesh.stub, [entry(pb.KIND_ROUTE, "vault", vault, ns="default")], ADMIN)
    want = {**EXPECTED, ("example.com", "/vault"): "vault.secret"}
    await _served(mesh, want)
    # secret's owner withdraws the export: not held like a service, the route leaves force.
    await mesh.put_json("namespaces/secret", {"export_to": []})
    await _served(mesh, EXPECTED)
    errors = await mesh.stub.ListErrors(pb.ListErrorsRequest(namespace="default"), metadata=ADMIN)
    assert [f"{e.field}: {e.reason}" for e in errors.errors] == [
        "destinations[0].service: namespace secret does not export to namespace default (its "
        "export_to: []), so secret/vault is not reachable from it"
    ]


async def test_listeners_admit_the_namespaces_a_token_for_every_namespace_lists(
    mesh: AdminMesh,
) -> None:
    mine = {
        "listener": "public",
        "match": {"prefix": "/auth"},
        "destinations": [{"service": "login"}],
    }
    await seed(mesh.stub, [entry(pb.KIND_ROUTE, "mine", mine, ns="auth")], AUTH)
    narrowed = entry(pb.KIND_LISTENER, "public", {"port": 10000, "allowed_namespaces": ["auth"]})
    code, msg = await rpc_error(seed(mesh.stub, [narrowed], AUTH))
    assert code == grpc.StatusCode.PERMISSION_DENIED, msg
    # Shutting auth out names its route in force; forced, the route leaves force.
    only = entry(pb.KIND_LISTENER, "public", {"port": 10000, "allowed_namespaces": ["default"]})
    code, msg = await rpc_error(seed(mesh.stub, [only], ADMIN))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "routes/auth/mine" in msg, msg
    await mesh.stub.ApplyEntries(pb.ApplyEntriesRequest(entries=[only], force=True), metadata=ADMIN)
    await mesh.wait_for(
        lambda: f"{mesh.prefix}routes/auth/mine" not in mesh.app.controller.state.routes, "out"
    )
    code, msg = await rpc_error(
        seed(mesh.stub, [entry(pb.KIND_ROUTE, "m2", mine, ns="auth")], AUTH)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "listener public does not admit routes of namespace auth" in msg, msg
    await _served(mesh, EXPECTED)
