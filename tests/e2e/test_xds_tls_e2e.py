"""xDS and the admin API over TLS, with join tokens, through the real tools.

meshd (``xds_tls`` and ``xds_auth`` on, admin API behind bearer tokens, on real etcd) writes
its trust bundle to ``ca.pem``; the real ``meshctl`` issues a join token over the TLS admin
API (``--ca``) and writes an Envoy bootstrap with ``--token --ca``; a real Envoy started
from it gets its config over TLS and serves traffic. A plaintext or unverified client fails.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import free_port, http_get
from tests.support.fixtures_admin import TOKENS, bearer, entry
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.meshctl import meshctl
from tests.support.wait import eventually
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.api import admin_pb2_grpc
from xds_server.admin.auth import Authenticator, parse_tokens
from xds_server.app import MeshApp, MeshConfig
from xds_server.resources import CLUSTER


@pytest.fixture
async def tls_mesh(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> AsyncIterator[MeshApp]:
    registry = EtcdRegistry(etcd_shared.endpoint, prefix=etcd_prefix)
    tokens = EtcdRegistry(etcd_shared.endpoint, prefix=etcd_prefix + "tokens/")
    app = MeshApp(
        registry,
        MeshConfig(
            xds="127.0.0.1:0",
            metrics=None,
            admin="127.0.0.1:0",
            auth=Authenticator(parse_tokens(TOKENS)),
            data_dir=str(tmp_path / "meshd"),
            xds_tls=True,
            xds_auth=True,
        ),
        tokens=tokens,
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0.2)
        await tokens.close()
        await registry.close()


async def test_envoy_bootstrapped_with_token_and_ca_gets_config_over_tls(
    tls_mesh: MeshApp,
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    backend_factory: BackendFactory,
) -> None:
    app = tls_mesh
    ca = tmp_path / "meshd" / "ca.pem"
    assert b"BEGIN CERTIFICATE" in ca.read_bytes()
    admin = f"127.0.0.1:{app.admin_port}"
    backend = backend_factory("web-1")
    listen = free_port()
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    async with grpc.aio.secure_channel(admin, creds) as channel:
        stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
        await stub.ApplyEntries(
            pb.ApplyEntriesRequest(
                entries=[
                    entry(pb.KIND_SERVICE, "web", {"port": 8080}, ns="shop"),
                    entry(
                        pb.KIND_ENDPOINT,
                        "web-1",
                        {"address": "127.0.0.1", "port": backend.port},
                        ns="shop",
                        service="web",
                    ),
                    entry(pb.KIND_LISTENER, "public", {"address": "127.0.0.1", "port": listen}),
                    entry(
                        pb.KIND_ROUTE,
                        "front",
                        {"listener": "public", "destinations": [{"service": "web"}]},
                        ns="shop",
                    ),
                ]
            ),
            metadata=bearer("edit-all"),
        )

    # Without --ca, meshctl cannot talk to the TLS admin API; with it, it can.
    code, _, err = await meshctl("token", "list", "--admin", admin, "--token", "edit-all")
    assert code == 2, err
    code, out, err = await meshctl(
        "token", "create", "gateway:public", "--ttl", "1h", "-o", "json",
        "--admin", admin, "--token", "edit-all", "--ca", str(ca),
    )  # fmt: skip
    assert code == 0, err
    made = json.loads(out)
    assert set(made) == {"id", "token", "identity", "expires"}
    assert made["identity"] == "gateway:public"
    code, out, err = await meshctl(
        "token", "list", "--admin", admin, "--token", "edit-all", "--ca", str(ca)
    )
    assert code == 0 and made["id"] in out and made["token"] not in out, (out, err)

    code, out, err = await meshctl(
        "bootstrap", "--node-id", "gw-1", "--node-cluster", "public",
        "--xds", f"127.0.0.1:{app.xds_port}", "--admin-port", "0",
        "--token", made["token"], "--ca", str(ca), "-o", "json",
    )  # fmt: skip
    assert code == 0, err
    boot = json.loads(out)
    envoy = await asyncio.to_thread(envoy_factory, boot, timeout=20)
    await eventually(
        lambda: http_get(f"http://127.0.0.1:{listen}/")[0],
        "a 200 through the Envoy configured over TLS",
        20,
        until=lambda status: status == 200,
        blocking=True,
    )
    # The stream is TLS: Envoy counts the handshake on meshd's cluster.
    stats = await asyncio.to_thread(envoy.stats, "xds_cluster")
    assert stats.get("cluster.xds_cluster.ssl.handshake", 0) >= 1, stats
    assert app.join_tokens.owner("gw-1") == "gateway:public"


async def test_plaintext_and_untrusting_clients_are_refused(
    tls_mesh: MeshApp, tmp_path: Path
) -> None:
    app = tls_mesh
    first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    first.node.id, first.node.cluster = "gw-1", "public"

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        yield first
        await asyncio.Event().wait()

    async def attempt(channel: grpc.aio.Channel) -> grpc.StatusCode:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources(requests())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        return info.value.code()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}") as plain:
        assert await attempt(plain) == grpc.StatusCode.UNAVAILABLE
    # TLS, but trusting another CA (the system's): meshd's certificate does not verify.
    untrusting = grpc.ssl_channel_credentials()
    async with grpc.aio.secure_channel(f"127.0.0.1:{app.xds_port}", untrusting) as other:
        assert await attempt(other) == grpc.StatusCode.UNAVAILABLE
    # Trusting the bundle, TLS works and the token is still required.
    ca = (tmp_path / "meshd" / "ca.pem").read_bytes()
    trusted = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(f"127.0.0.1:{app.xds_port}", trusted) as channel:
        assert await attempt(channel) == grpc.StatusCode.UNAUTHENTICATED
