"""Tenancy of the admin API's proxy views, events and leases, attacked from outside: a
token limited to ``shop`` tries to read the proxies and config of namespace ``secret``
(CSDS, GetProxyConfig, GetProxyStatus, Watch) and to keep ``secret``'s lease alive.

Real etcd, real ADS streams (a gateway, a sidecar of each namespace), real gRPC clients
on meshd's admin port. See docs/security.md, "Tenancy".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import json_format

from tests.support.fixtures_admin import AdminMesh, bearer, entry, rpc_error, seed
from tests.support.xds_client import RawAds, sotw_client
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.entries import spec_struct
from xds_server.resources import CLUSTER, LISTENER

VAULT_ADDRESS = "10.9.9.9"
"""The address of secret/vault's endpoint: what the attacker looks for."""

SIDECAR = {"inbound_port": 15006, "app_port": 8080}
MESH = [
    entry(pb.KIND_SERVICE, "web", {"port": 8080, "sidecar": SIDECAR}, ns="shop"),
    entry(pb.KIND_ENDPOINT, "e1", {"address": "127.0.0.1"}, ns="shop", service="web"),
    entry(pb.KIND_SERVICE, "vault", {"port": 8200, "sidecar": SIDECAR}, ns="secret"),
    entry(pb.KIND_ENDPOINT, "v1", {"address": VAULT_ADDRESS}, ns="secret", service="vault"),
    entry(pb.KIND_LISTENER, "public", {"port": 10000, "nodes": ["gateway"]}),
]
SHOP = bearer("view-shop")
ALL = bearer("edit-all")


async def seeded(mesh: AdminMesh) -> None:
    """MESH written and in force in meshd."""
    await seed(mesh.stub, MESH, metadata=ALL)
    state = mesh.app.controller.state
    await mesh.wait_for(lambda: len(state.registered_services) == 2, "services in force")


@contextlib.asynccontextmanager
async def proxies(mesh: AdminMesh) -> AsyncIterator[None]:
    """The mesh seeded, with a gateway (gw-1), shop/web's sidecar (web-1) and
    secret/vault's sidecar (vault-1) connected and holding their config."""
    await seeded(mesh)
    port = mesh.app.xds_port
    async with (
        sotw_client(port, "gateway", "gw-1"),
        sidecar(port, "web.shop", "web-1"),
        sidecar(port, "vault.secret", "vault-1"),
    ):
        yield


@contextlib.asynccontextmanager
async def sidecar(port: int, node_cluster: str, node_id: str) -> AsyncIterator[None]:
    """A sidecar's ADS stream: its clusters and listeners (the inbound ones) received and
    ACKed, open until the block ends."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        ads = RawAds(channel)
        first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        first.node.id, first.node.cluster = node_id, node_cluster
        ads.send(first)
        ads.send(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
        for _ in range(2):
            resp = await asyncio.wait_for(ads.call.read(), 10)
            assert isinstance(resp, discovery_pb2.DiscoveryResponse)
            ads.send(
                discovery_pb2.DiscoveryRequest(
                    type_url=resp.type_url,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                )
            )
        try:
            yield
        finally:
            ads.call.cancel()


def _csds_text(resp: csds_pb2.ClientStatusResponse) -> str:
    return json_format.MessageToJson(resp)


async def test_csds_needs_an_admin_token(admin_mesh_tokens: AdminMesh) -> None:
    mesh = admin_mesh_tokens
    async with proxies(mesh):
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(mesh.channel)
        for metadata in (None, bearer("nope")):
            code, msg = await rpc_error(
                stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), metadata=metadata)
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED, msg
            stream = stub.StreamClientStatus(metadata=metadata)
            await stream.write(csds_pb2.ClientStatusRequest())
            code, msg = await rpc_error(stream.read())
            assert code == grpc.StatusCode.UNAUTHENTICATED, msg
        # A token for every namespace still sees every proxy whole.
        full = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), metadata=ALL)
        assert {c.node.id for c in full.config} == {"gw-1", "web-1", "vault-1"}
        assert VAULT_ADDRESS in _csds_text(full)


async def test_csds_shows_a_namespace_token_its_sidecars_and_its_part_of_gateways(
    admin_mesh_tokens: AdminMesh,
) -> None:
    mesh = admin_mesh_tokens
    async with proxies(mesh):
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(mesh.channel)
        fetched = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), metadata=SHOP)
        stream = stub.StreamClientStatus(metadata=SHOP)
        await stream.write(csds_pb2.ClientStatusRequest())
        streamed = await stream.read()
        stream.cancel()
        for resp in (fetched, streamed):
            assert isinstance(resp, csds_pb2.ClientStatusResponse)
            # secret's sidecar is invisible; the gateway and shop's own sidecar are there.
            assert {c.node.id for c in resp.config} == {"gw-1", "web-1"}
            text = _csds_text(resp)
            assert VAULT_ADDRESS not in text and "vault.secret" not in text
            gw = next(c for c in resp.config if c.node.id == "gw-1")
            names = {g.name for g in gw.generic_xds_configs}
            # shop's cluster and endpoints, the shared listener and its route configuration.
            assert {"web.shop", "public"} <= names, names
            assert "default:web.shop" in text  # shop's route entry in the shared config
        # Asking for it by node id finds nothing either.
        by_id = csds_pb2.ClientStatusRequest(node_matchers=[{"node_id": {"exact": "vault-1"}}])
        assert not (await stub.FetchClientStatus(by_id, metadata=SHOP)).config


async def test_proxy_config_of_a_gateway_holds_only_the_callers_namespaces(
    admin_mesh_tokens: AdminMesh,
) -> None:
    mesh = admin_mesh_tokens
    async with proxies(mesh):
        resp = await mesh.stub.GetProxyConfig(
            pb.GetProxyConfigRequest(node_id="gw-1"), metadata=SHOP
        )
        text = "\n".join(r.json for r in resp.resources)
        # The finding: a viewer of one namespace read the gateway's EDS with vault's address.
        assert VAULT_ADDRESS not in text and "vault.secret" not in text
        assert {r.name for r in resp.resources if r.type == "EDS"} == {"web.shop"}
        assert {r.name for r in resp.resources if r.type == "CDS"} == {"web.shop"}
        assert "default:web.shop" in text
        # The status counts what the caller sees.
        eds = next(t for t in resp.status.types if t.type == "EDS")
        assert eds.resources == 1
        # Every namespace's token sees it all.
        full = await mesh.stub.GetProxyConfig(
            pb.GetProxyConfigRequest(node_id="gw-1", type="EDS"), metadata=ALL
        )
        assert VAULT_ADDRESS in "\n".join(r.json for r in full.resources)


async def test_another_namespaces_sidecar_answers_as_not_connected(
    admin_mesh_tokens: AdminMesh,
) -> None:
    mesh = admin_mesh_tokens
    async with proxies(mesh):
        stub = mesh.stub
        unknown = await rpc_error(
            stub.GetProxyConfig(pb.GetProxyConfigRequest(node_id="nobody"), metadata=SHOP)
        )
        for call in (
            stub.GetProxyConfig(pb.GetProxyConfigRequest(node_id="vault-1"), metadata=SHOP),
            stub.GetProxyStatus(pb.GetProxyStatusRequest(node_id="vault-1"), metadata=SHOP),
        ):
            code, msg = await rpc_error(call)
            assert code == unknown[0] == grpc.StatusCode.NOT_FOUND
            assert msg == unknown[1].replace("nobody", "vault-1")
        listed = await stub.GetProxyStatus(pb.GetProxyStatusRequest(), metadata=SHOP)
        assert {p.node_id for p in listed.proxies} == {"gw-1", "web-1"}
        # shop's own sidecar is shown whole.
        own = await stub.GetProxyConfig(pb.GetProxyConfigRequest(node_id="web-1"), metadata=SHOP)
        assert {r.name for r in own.resources if r.type == "CDS"} == {"inbound|web.shop"}
        everyone = await stub.GetProxyStatus(pb.GetProxyStatusRequest(), metadata=ALL)
        assert {p.node_id for p in everyone.proxies} == {"gw-1", "web-1", "vault-1"}


async def test_watch_sends_no_events_of_another_namespaces_proxies(
    admin_mesh_tokens: AdminMesh,
) -> None:
    mesh = admin_mesh_tokens
    async with proxies(mesh):
        watch = mesh.stub.Watch(pb.WatchRequest(), metadata=SHOP)
        await watch.initial_metadata()
        port = mesh.app.xds_port
        # secret's sidecar connects (connected, pushes), and secret's registry changes.
        async with sidecar(port, "vault.secret", "vault-2"):
            await seed(
                mesh.stub,
                [
                    entry(
                        pb.KIND_ENDPOINT,
                        "v2",
                        {"address": "10.9.9.8"},
                        ns="secret",
                        service="vault",
                    )
                ],
                metadata=ALL,
            )
            # Then a gateway connects and shop changes: the watcher's marker.
            async with sotw_client(port, "gateway", "gw-2"):
                await seed(
                    mesh.stub,
                    [
                        entry(
                            pb.KIND_ENDPOINT,
                            "e2",
                            {"address": "127.0.0.2"},
                            ns="shop",
                            service="web",
                        )
                    ],
                    metadata=ALL,
                )
                seen: list[pb.WatchResponse] = []
                while not any(e.key.endswith("/shop/web/e2") for e in seen):
                    event = await asyncio.wait_for(watch.read(), 10)
                    assert isinstance(event, pb.WatchResponse)
                    seen.append(event)
        watch.cancel()
        nodes = {e.node_id for e in seen if e.node_id}
        assert "vault-2" not in nodes and "vault-1" not in nodes, seen
        assert "gw-2" in nodes  # a gateway's connection and pushes are visible
        assert not any("secret" in e.key or "10.9.9.8" in e.message for e in seen), seen


# -- leases --------------------------------------------------------------------------------


async def _register(mesh: AdminMesh, ns: str, service: str, ep: str) -> int:
    resp = await mesh.stub.RegisterEndpoint(
        pb.RegisterEndpointRequest(
            namespace=ns,
            service=service,
            id=ep,
            ttl_seconds=30,
            spec=spec_struct({"address": "127.0.0.9"}),
        ),
        metadata=ALL,
    )
    assert resp.lease > 0
    return int(resp.lease)


async def test_keepalive_of_another_namespaces_lease_is_not_found(
    admin_mesh_tokens: AdminMesh,
) -> None:
    mesh = admin_mesh_tokens
    await seeded(mesh)
    vault_lease = await _register(mesh, "secret", "vault", "v9")
    shop_lease = await _register(mesh, "shop", "web", "e9")
    edit_shop = bearer("edit-shop")
    # shop's editor keeps its own lease alive, not secret's: that one answers exactly as
    # a lease that does not exist.
    assert (
        await mesh.stub.KeepAlive(pb.KeepAliveRequest(lease=shop_lease), metadata=edit_shop)
    ).ttl_seconds > 0
    code, msg = await rpc_error(
        mesh.stub.KeepAlive(pb.KeepAliveRequest(lease=vault_lease), metadata=edit_shop)
    )
    assert code == grpc.StatusCode.NOT_FOUND, msg
    code_none, msg_none = await rpc_error(
        mesh.stub.KeepAlive(pb.KeepAliveRequest(lease=vault_lease ^ 1), metadata=edit_shop)
    )
    assert (code_none, msg_none.replace(str(vault_lease ^ 1), "N")) == (
        code,
        msg.replace(str(vault_lease), "N"),
    )
    # A lease that holds no endpoint (another program's key in etcd) is nobody's to keep.
    foreign = await mesh.registry.lease_grant(30)
    await mesh.registry.txn(puts={mesh.prefix + "elsewhere/lock": b"x"}, lease=foreign)
    code, _ = await rpc_error(mesh.stub.KeepAlive(pb.KeepAliveRequest(lease=foreign), metadata=ALL))
    assert code == grpc.StatusCode.NOT_FOUND
    # The editor of every namespace keeps secret's alive.
    ok = await mesh.stub.KeepAlive(pb.KeepAliveRequest(lease=vault_lease), metadata=ALL)
    assert ok.ttl_seconds > 0


async def test_lease_handles_are_not_sequential(admin_mesh_tokens: AdminMesh) -> None:
    mesh = admin_mesh_tokens
    await seeded(mesh)
    leases = [await _register(mesh, "shop", "web", f"e{i}") for i in range(4)]
    gaps = [abs(b - a) for a, b in itertools.pairwise(leases)]
    # etcd's own ids count up by one; random 63-bit ids are this close once in 2**30.
    assert min(gaps) > 1 << 32, leases
    # The handle is the etcd lease: the entry holds it and keep-alive takes it.
    got = await mesh.stub.GetEntry(
        pb.GetEntryRequest(
            ref=pb.EntryRef(kind=pb.KIND_ENDPOINT, namespace="shop", service="web", name="e0")
        ),
        metadata=ALL,
    )
    assert got.entry.lease == leases[0]


async def test_a_viewer_keeps_no_lease_alive(admin_mesh_tokens: AdminMesh) -> None:
    mesh = admin_mesh_tokens
    await seeded(mesh)
    lease = await _register(mesh, "shop", "web", "e1x")
    code, _ = await rpc_error(mesh.stub.KeepAlive(pb.KeepAliveRequest(lease=lease), metadata=SHOP))
    assert code == grpc.StatusCode.PERMISSION_DENIED
