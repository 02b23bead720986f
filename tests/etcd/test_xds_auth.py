"""Authenticated proxies, attacked: join tokens over the admin API, ADS/HDS/LRS streams
bound to their token's identity, node-id ownership, and the fake-checker HDS attack.

A real meshd (``MeshApp`` with ``xds_auth``) on real etcd, with the admin API behind bearer
tokens; the proxies are real gRPC clients (ADS, HDS, LRS) on 127.0.0.1. Each test does what
an attacker would and checks it fails as documented in docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import health_check_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc
from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from tests.support.fixtures_admin import TOKENS, AdminMesh, bearer, entry, rpc_error, seed
from tests.support.paths import REPO_ROOT
from tests.support.wait import eventually
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.api import admin_pb2_grpc
from xds_server.admin.auth import Authenticator, parse_tokens
from xds_server.app import MeshApp, MeshConfig
from xds_server.ingest.registry import Changes, RegistryUpdate
from xds_server.model.identity import gateway
from xds_server.model.join_token import issue, token_key
from xds_server.resources import CLUSTER
from xds_server.token_authority import LOOKUP_BURST, LOOKUPS_PER_S

CHECK = {"path": "/health", "interval_ms": 1000, "healthy_threshold": 1, "unhealthy_threshold": 1}
PORTS = {f"ep-{i}": 9101 + i for i in range(4)}
MESH = [
    entry(pb.KIND_SERVICE, "web", {"port": 8080, "health_check": CHECK}, ns="shop"),
    *(
        entry(
            pb.KIND_ENDPOINT,
            ep,
            {"address": "127.0.0.1", "port": port},
            ns="shop",
            service="web",
        )
        for ep, port in PORTS.items()
    ),
    entry(pb.KIND_SERVICE, "api", {"port": 8081}, ns="shop"),
    entry(pb.KIND_LISTENER, "public", {"port": 10000, "nodes": ["public"]}),
    entry(
        pb.KIND_ROUTE,
        "to-web",
        {"listener": "public", "destinations": [{"service": "web"}]},
        ns="shop",
    ),
]
ADMIN = bearer("edit-all")


class LaggingWatch:
    """A registry whose watch hands on each batch of changes ``lag`` seconds late, as a
    replica's watch does when it is behind (another replica issued the token, or a burst of
    registry writes queues ahead of it); everything else is the real registry's."""

    def __init__(self, inner: EtcdRegistry, lag: float) -> None:
        self.inner = inner
        self.prefix = inner.prefix
        self.lag = lag

    async def updates(self) -> AsyncIterator[RegistryUpdate]:
        async for update in self.inner.updates():
            if isinstance(update, Changes):
                await asyncio.sleep(self.lag)
            yield update

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextlib.asynccontextmanager
async def auth_mesh(
    etcd: EmbeddedEtcd, prefix: str, tokens_lag: float = 0.0
) -> AsyncIterator[AdminMesh]:
    """meshd with ``--xds-auth required`` and an admin API behind bearer tokens; its watch
    of the join tokens ``tokens_lag`` seconds behind etcd (:class:`LaggingWatch`)."""
    registry = EtcdRegistry(etcd.endpoint, prefix=prefix)
    real_tokens = EtcdRegistry(etcd.endpoint, prefix=prefix + "tokens/")
    tokens: Any = LaggingWatch(real_tokens, tokens_lag) if tokens_lag else real_tokens
    app = MeshApp(
        registry,
        MeshConfig(
            xds="127.0.0.1:0",
            metrics=None,
            admin="127.0.0.1:0",
            auth=Authenticator(parse_tokens(TOKENS)),
            report_interval_ms=500,
            xds_auth=True,
        ),
        tokens=tokens,
    )
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.admin_port}")
    try:
        mesh = AdminMesh(etcd, registry, app, channel, admin_pb2_grpc.MeshAdminServiceStub(channel))
        await seed(mesh.stub, MESH, metadata=ADMIN)
        await eventually(
            lambda: (
                len(app.health.services("shop/web")[0].endpoints) == 4
                if app.health.services("shop/web")
                else False
            ),
            "shop/web's endpoints in meshd's health view",
            10,
        )
        yield mesh
    finally:
        await channel.close()
        await app.stop(grace=0.2)
        await real_tokens.close()
        await registry.close()


@pytest.fixture
async def mesh(etcd_shared: EmbeddedEtcd, etcd_prefix: str) -> AsyncIterator[AdminMesh]:
    async with auth_mesh(etcd_shared, etcd_prefix) as m:
        yield m


async def create(mesh: AdminMesh, identity: str, ttl: int = 3600) -> pb.CreateJoinTokenResponse:
    """A new token, usable at once (meshd reads a token its watch has not brought yet)."""
    resp: pb.CreateJoinTokenResponse = await mesh.stub.CreateJoinToken(
        pb.CreateJoinTokenRequest(identity=identity, ttl_seconds=ttl), metadata=ADMIN
    )
    return resp


class Ads:
    """A raw ADS (SotW) stream: the first request names the node. Without ``send``, it
    sends nothing: a stream refused for its token alone is refused before any request is
    read, and a request written as the refusal comes would only race a grpcio aio client
    bug (grpc/grpc#36066: a write failing after the server's status replaces that status
    with ``INTERNAL: Internal error from Core``)."""

    def __init__(
        self, port: int, node_id: str, cluster: str, token: str | None, send: bool = True
    ) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        first.node.id, first.node.cluster = node_id, cluster
        if send:
            self.queue.put_nowait(first)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.StreamAggregatedResources(
            self._requests(), metadata=bearer(token) if token else None
        )

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await self.queue.get()

    async def first(self) -> discovery_pb2.DiscoveryResponse:
        resp = await asyncio.wait_for(self.call.read(), 10)
        assert resp is not grpc.aio.EOF
        assert isinstance(resp, discovery_pb2.DiscoveryResponse)
        return resp

    async def ended(self, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
        """Wait for the stream to end; its status and details."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while True:
                resp = await asyncio.wait_for(self.call.read(), timeout)
                assert resp is not grpc.aio.EOF, "the stream ended with OK"
        return info.value.code(), info.value.details() or ""

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


@contextlib.asynccontextmanager
async def ads(
    mesh: AdminMesh, node_id: str, cluster: str, token: str | None, send: bool = True
) -> AsyncIterator[Ads]:
    stream = Ads(mesh.app.xds_port, node_id, cluster, token, send)
    try:
        yield stream
    finally:
        await stream.close()


# -- join tokens over the admin API ----------------------------------------------------------


async def test_a_token_is_shown_once_and_etcd_keeps_only_its_hash(mesh: AdminMesh) -> None:
    made = await create(mesh, "shop/web", ttl=600)
    assert made.token.startswith(made.info.id + ".") and len(made.token) > 40
    assert made.info.identity == "shop/web"
    assert abs(made.info.expires.seconds - (time.time() + 600)) < 30
    stored = await mesh.registry.get(token_key(mesh.prefix, made.info.id))
    assert stored is not None
    assert made.token.encode() not in stored.value
    assert made.token.split(".")[1].encode() not in stored.value
    doc = json.loads(stored.value)
    assert set(doc) == {"hash", "identity", "expires"} and doc["identity"] == "shop/web"

    listed = await mesh.stub.ListJoinTokens(pb.ListJoinTokensRequest(), metadata=ADMIN)
    assert [(t.id, t.identity) for t in listed.tokens] == [(made.info.id, "shop/web")]
    assert made.token not in str(listed)
    # The registry does not take the token for an entry: no problem is reported for it.
    errors = await mesh.stub.ListErrors(pb.ListErrorsRequest(), metadata=ADMIN)
    assert not [e for e in errors.errors if "tokens/" in e.key]

    await mesh.stub.RevokeJoinToken(pb.RevokeJoinTokenRequest(id=made.info.id), metadata=ADMIN)
    listed = await mesh.stub.ListJoinTokens(pb.ListJoinTokensRequest(), metadata=ADMIN)
    assert list(listed.tokens) == []


async def test_issuing_needs_an_editor_covering_the_identity(mesh: AdminMesh) -> None:
    stub = mesh.stub
    ok = await stub.CreateJoinToken(
        pb.CreateJoinTokenRequest(identity="shop/web"), metadata=bearer("edit-shop")
    )
    assert ok.info.identity == "shop/web"
    for token, identity, words in (
        ("edit-shop", "ops/db", "outside"),
        ("edit-shop", "gateway:public", "['*']"),
        ("view-shop", "shop/web", "viewer"),
    ):
        code, details = await rpc_error(
            stub.CreateJoinToken(
                pb.CreateJoinTokenRequest(identity=identity), metadata=bearer(token)
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and words in details, details
    code, details = await rpc_error(
        stub.CreateJoinToken(pb.CreateJoinTokenRequest(identity="shop/*"), metadata=ADMIN)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "identity" in details
    # A gateway named like a sidecar: once shop/api is registered, the proxy holding the
    # token would be api's sidecar and get its certificate. Refused, even to an admin.
    code, details = await rpc_error(
        stub.CreateJoinToken(pb.CreateJoinTokenRequest(identity="gateway:api.shop"), metadata=ADMIN)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "shop/api" in details, details
    ok = await stub.CreateJoinToken(
        pb.CreateJoinTokenRequest(identity="gateway:edge.prod.example"), metadata=ADMIN
    )
    assert ok.info.identity == "gateway:edge.prod.example"
    code, details = await rpc_error(
        stub.CreateJoinToken(
            pb.CreateJoinTokenRequest(identity="shop/web", ttl_seconds=2), metadata=ADMIN
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ttl_seconds" in details
    code, _ = await rpc_error(stub.CreateJoinToken(pb.CreateJoinTokenRequest(identity="shop/web")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # A token limited to shop neither sees nor revokes a gateway's token.
    gw = await create(mesh, "gateway:public")
    seen = await stub.ListJoinTokens(pb.ListJoinTokensRequest(), metadata=bearer("view-shop"))
    assert [t.identity for t in seen.tokens] == ["shop/web"]
    code, _ = await rpc_error(
        stub.RevokeJoinToken(pb.RevokeJoinTokenRequest(id=gw.info.id), metadata=bearer("edit-shop"))
    )
    assert code == grpc.StatusCode.NOT_FOUND


# -- ADS streams ------------------------------------------------------------------------------


async def test_streams_without_a_valid_token_are_unauthenticated(mesh: AdminMesh) -> None:
    good = await create(mesh, "gateway:public")
    # Expired: a record whose expiry has passed (as the admin API would have written it).
    record, expired = issue("0123456789ab", "x" * 43, gateway("public"), time.time() - 1)
    await mesh.registry.put(token_key(mesh.prefix, record.id), record.encode())
    await eventually(lambda: record.id in mesh.app.join_tokens.tokens, "the expired token", 5)
    wrong_secret = good.token[:-4] + ("AAAA" if not good.token.endswith("AAAA") else "BBBB")
    for token, words in (
        (None, "missing join token"),
        ("not-a-token", "unknown"),
        (wrong_secret, "unknown"),
        (expired, "expired"),
    ):
        async with ads(mesh, "gw-1", "public", token, send=False) as stream:
            code, details = await stream.ended()
            assert code == grpc.StatusCode.UNAUTHENTICATED and words in details, (token, details)
    async with ads(mesh, "gw-1", "public", good.token) as stream:
        resp = await stream.first()
        assert resp.type_url == CLUSTER and resp.resources


async def test_a_token_works_at_once_though_the_watch_has_not_brought_it(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str
) -> None:
    """A proxy started right after its token was issued (an init container, then Envoy)
    connects at once, even to a replica whose watch is a second behind; a token revoked
    meanwhile does not come back that way, and made-up tokens cost etcd a bounded number of
    reads."""
    async with auth_mesh(etcd_shared, etcd_prefix, tokens_lag=1.0) as mesh:
        made = await create(mesh, "gateway:public")
        assert made.info.id not in mesh.app.join_tokens.tokens  # (the watch is behind)
        async with ads(mesh, "gw-1", "public", made.token) as stream:
            resp = await stream.first()
            assert resp.type_url == CLUSTER and resp.resources

        revoked = await create(mesh, "gateway:public")
        await mesh.stub.RevokeJoinToken(
            pb.RevokeJoinTokenRequest(id=revoked.info.id), metadata=ADMIN
        )
        async with ads(mesh, "gw-2", "public", revoked.token, send=False) as stream:
            code, details = await stream.ended()
        assert code == grpc.StatusCode.UNAUTHENTICATED and "unknown" in details

        # An attacker making up tokens: each stream is refused, and meshd reads etcd for at
        # most its burst of lookups plus its rate over the time taken.
        before, started = mesh.app.join_tokens.lookups, time.monotonic()
        for i in range(3 * LOOKUP_BURST):
            async with ads(mesh, f"x-{i}", "public", f"{i:012x}.{'x' * 43}", send=False) as s:
                code, _ = await s.ended()
                assert code == grpc.StatusCode.UNAUTHENTICATED
        reads = mesh.app.join_tokens.lookups - before
        allowed = LOOKUP_BURST + LOOKUPS_PER_S * (time.monotonic() - started)
        assert reads <= allowed, (reads, allowed)
        assert mesh.app.join_tokens.lookups_refused > 0


async def test_a_token_for_another_identity_is_denied_naming_both(mesh: AdminMesh) -> None:
    web = await create(mesh, "shop/web")
    async with ads(mesh, "gw-1", "public", web.token) as stream:
        code, details = await stream.ended()
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "gateway:public" in details and "shop/web" in details
    async with ads(mesh, "web-1", "web.shop", web.token) as stream:
        assert (await stream.first()).type_url == CLUSTER


async def test_revoking_a_token_ends_its_live_stream_within_a_second(mesh: AdminMesh) -> None:
    made = await create(mesh, "gateway:public")
    other = await create(mesh, "gateway:public")
    async with (
        ads(mesh, "gw-1", "public", made.token) as stream,
        ads(mesh, "gw-2", "public", other.token) as bystander,
    ):
        await stream.first()
        await bystander.first()
        started = time.monotonic()
        await mesh.stub.RevokeJoinToken(pb.RevokeJoinTokenRequest(id=made.info.id), metadata=ADMIN)
        code, details = await stream.ended(timeout=5)
        took = time.monotonic() - started
        assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details
        assert took < 1.0, f"the revoked stream ended after {took:.2f} s"
        # The other token's stream is untouched.
        assert mesh.app.join_tokens.owner("gw-2") == "gateway:public"
    async with ads(mesh, "gw-1", "public", made.token) as again:
        code, _ = await again.ended()
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_stolen_node_id_is_refused_and_a_reconnect_replaces(mesh: AdminMesh) -> None:
    victim_token = (await create(mesh, "shop/web")).token
    thief_token = (await create(mesh, "gateway:public")).token
    async with ads(mesh, "web-1", "web.shop", victim_token) as victim:
        await victim.first()
        # The thief's token is valid, its cluster its own: only the node id is stolen.
        async with ads(mesh, "web-1", "public", thief_token) as thief:
            code, details = await thief.ended()
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "web-1" in details and "shop/web" in details
        assert mesh.app.join_tokens.owner("web-1") == "shop/web"
        # The same identity reconnecting (a restarted proxy) takes the node id over.
        async with ads(mesh, "web-1", "web.shop", victim_token) as restarted:
            await restarted.first()
            code, details = await victim.ended()
            assert code == grpc.StatusCode.ABORTED and "newer" in details
            assert mesh.app.join_tokens.owner("web-1") == "shop/web"
    await eventually(lambda: mesh.app.join_tokens.owner("web-1") is None, "web-1 released", 5)


# -- HDS and LRS --------------------------------------------------------------------------------


class Checker:
    """A raw HDS stream: says who it is, then reports what the test tells it."""

    def __init__(
        self, port: int, node_id: str, cluster: str, token: str | None, hello: bool = True
    ) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.queue: asyncio.Queue[hds_pb2.HealthCheckRequestOrEndpointHealthResponse] = (
            asyncio.Queue()
        )
        first = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
        first.health_check_request.node.id = node_id
        first.health_check_request.node.cluster = cluster
        if hello:
            self.queue.put_nowait(first)
        stub = hds_pb2_grpc.HealthDiscoveryServiceStub(self.channel)
        self.call = stub.StreamHealthCheck(
            self._requests(), metadata=bearer(token) if token else None
        )

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            yield await self.queue.get()

    def report(self, healthy: bool, ports: dict[str, int]) -> None:
        """Report every endpoint of shop/web (assigned or not) healthy or not."""
        msg = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
        cluster = msg.endpoint_health_response.cluster_endpoints_health.add(cluster_name="web.shop")
        loc = cluster.locality_endpoints_health.add()
        for port in ports.values():
            eh = loc.endpoints_health.add(
                health_status=health_check_pb2.HEALTHY if healthy else health_check_pb2.UNHEALTHY
            )
            eh.endpoint.address.socket_address.address = "127.0.0.1"
            eh.endpoint.address.socket_address.port_value = port
        self.queue.put_nowait(msg)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


def verdicts(app: MeshApp) -> dict[str, str]:
    (web,) = app.health.services("shop/web")
    return {e.endpoint_id: e.status.value for e in web.endpoints}


async def test_twenty_fake_checkers_change_no_verdict(mesh: AdminMesh) -> None:
    """The attack of issue 21: fake HDS checkers, 10 without a token and 10 with a real
    token of another identity, try to take checker slots (to report every endpoint down
    from them): each is refused, and the verdicts stay the real checker's."""
    app = mesh.app
    real = Checker(app.xds_port, "gw-real", "public", (await create(mesh, "gateway:public")).token)
    spec = await asyncio.wait_for(real.call.read(), 10)
    assert isinstance(spec, hds_pb2.HealthCheckSpecifier) and spec.cluster_health_checks
    real.report(True, PORTS)
    await eventually(
        lambda: set(verdicts(app).values()) == {"HEALTHY"}, "every endpoint healthy", 10
    )
    web_token = (await create(mesh, "shop/web")).token
    # Each fake writes what meshd reads before it refuses, no more: nothing without a token
    # (refused on its metadata), the hello with one (refused on the node it names). A report
    # written as the refusal comes would race a grpcio aio client bug (grpc/grpc#36066: a
    # write failing after the server's status replaces it with INTERNAL); meshd never reads
    # a refused stream's reports.
    fakes = [
        Checker(app.xds_port, f"fake-{i}", "public", None if i < 10 else web_token, i >= 10)
        for i in range(20)
    ]
    try:
        codes = []
        for fake in fakes:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(fake.call.read(), 10)
            codes.append(info.value.code())
        assert (
            codes
            == [grpc.StatusCode.UNAUTHENTICATED] * 10 + [grpc.StatusCode.PERMISSION_DENIED] * 10
        )
        assert set(app.health.assignment()) == {"gw-real"}
        # Keep reporting (as the real checker does) across a few report intervals.
        for _ in range(6):
            real.report(True, PORTS)
            await asyncio.sleep(0.25)
            assert set(verdicts(app).values()) == {"HEALTHY"}, verdicts(app)
    finally:
        for fake in fakes:
            await fake.close()
        await real.close()


async def test_lrs_needs_a_token_of_the_reporting_identity(mesh: AdminMesh) -> None:
    app = mesh.app
    gw_token = (await create(mesh, "gateway:public")).token

    async def open_lrs(node_id: str, cluster: str, token: str | None) -> Any:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}")
        first = lrs_pb2.LoadStatsRequest()
        first.node.id, first.node.cluster = node_id, cluster

        async def requests() -> AsyncIterator[lrs_pb2.LoadStatsRequest]:
            yield first
            await asyncio.Event().wait()

        stub = lrs_pb2_grpc.LoadReportingServiceStub(channel)
        return channel, stub.StreamLoadStats(requests(), metadata=bearer(token) if token else None)

    for node, cluster, token, want in (
        ("lrs-1", "public", None, grpc.StatusCode.UNAUTHENTICATED),
        ("lrs-2", "web.shop", gw_token, grpc.StatusCode.PERMISSION_DENIED),
    ):
        channel, call = await open_lrs(node, cluster, token)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() == want
        await channel.close()
        assert node not in app.topology.sources
    channel, call = await open_lrs("lrs-3", "public", gw_token)
    resp = await asyncio.wait_for(call.read(), 10)
    assert resp.send_all_clusters and app.topology.sources["lrs-3"] == "public"
    call.cancel()
    await channel.close()


# -- meshd's flags ----------------------------------------------------------------------------


@pytest.mark.parametrize("env", [False, True])
async def test_meshd_refuses_xds_auth_off_beyond_loopback(env: bool) -> None:
    args = ["--xds", "0.0.0.0:0", "--admin", "", "--metrics", ""]
    environ = {"MESHD_XDS_AUTH": "off"} if env else {}
    if not env:
        args += ["--xds-auth", "off"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "xds_server.cli.meshd",
        *args,
        cwd=REPO_ROOT,
        env={**os.environ, **environ},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and "--xds-auth off" in lines[0] and "0.0.0.0:0" in lines[0], lines
