"""One view of the whole mesh from any meshd replica (issue 25): proxy status and proxy
config gathered from every replica on the etcd, with the caller's token; a replica that
does not answer is named; a replica that stops cleanly leaves the view at once.

Real etcd, two in-process meshd replicas with their admin APIs, real ADS streams, real
gRPC clients and the real meshctl on the admin ports.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from adapters.etcd import EmbeddedEtcd
from tests.etcd.test_admin_tenancy import MESH, sidecar
from tests.support.fixtures_admin import TOKENS, AdminMesh, bearer, rpc_error, running_admin, seed
from tests.support.meshctl import meshctl
from tests.support.wait import eventually
from tests.support.xds_client import sotw_client
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.api import admin_pb2_grpc
from xds_server.admin.auth import Authenticator, parse_tokens

ALL = bearer("edit-all")
SHOP = bearer("view-shop")


@contextlib.asynccontextmanager
async def two_replicas(
    etcd: EmbeddedEtcd, prefix: str, tokens: bool = False
) -> AsyncIterator[tuple[AdminMesh, AdminMesh]]:
    """Replicas ``a`` and ``b`` on one etcd prefix, each knowing the other."""

    def auth() -> Authenticator:
        return Authenticator(parse_tokens(TOKENS) if tokens else None)

    async with (
        running_admin(etcd, prefix, auth(), replica_id="a") as a,
        running_admin(etcd, prefix, auth(), replica_id="b") as b,
    ):
        for mesh, other in ((a, "b"), (b, "a")):
            await eventually(
                lambda m=mesh, o=other: o in m.app.replicas.peers,  # type: ignore[misc]
                f"{mesh.app.config.replica_id} to know {other}",
                10,
                interval=0.05,
            )
        yield a, b


async def seeded(a: AdminMesh, b: AdminMesh) -> None:
    """The tenancy tests' mesh written through ``a``, in force on both."""
    await seed(a.stub, MESH)
    for mesh in (a, b):
        state = mesh.app.controller.state
        await mesh.wait_for(lambda s=state: len(s.registered_services) == 2, "in force")


def replicas_of(resp: pb.GetProxyStatusResponse) -> dict[str, str]:
    return {p.node_id: p.replica for p in resp.proxies}


async def test_proxy_status_and_config_from_either_replica_cover_both(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str
) -> None:
    async with two_replicas(etcd_shared, etcd_prefix) as (a, b):
        await seeded(a, b)
        async with (
            sotw_client(a.app.xds_port, "gateway", "gw-a"),
            sotw_client(b.app.xds_port, "gateway", "gw-b"),
        ):
            want = {"gw-a": "a", "gw-b": "b"}
            for mesh in (a, b):
                resp = await eventually(
                    lambda m=mesh: m.stub.GetProxyStatus(pb.GetProxyStatusRequest()),  # type: ignore[misc]
                    "both proxies",
                    5,
                    until=lambda r: replicas_of(r) == want,
                )
                assert [(r.id, r.answered) for r in resp.replicas] == [
                    (mesh.app.config.replica_id, True),
                    ("b" if mesh is a else "a", True),
                ]
                # The other replica's proxy, with its versions, as that replica sees it.
                other = "gw-b" if mesh is a else "gw-a"
                (p,) = [p for p in resp.proxies if p.node_id == other]
                assert {t.type: t.state for t in p.types if t.type != "SDS"} == {
                    t: pb.SYNC_STATE_SYNCED for t in ("CDS", "EDS", "LDS", "RDS")
                }
                one = await mesh.stub.GetProxyStatus(pb.GetProxyStatusRequest(node_id=other))
                assert replicas_of(one) == {other: want[other]}
                config = await mesh.stub.GetProxyConfig(pb.GetProxyConfigRequest(node_id=other))
                assert config.status.replica == want[other]
                assert {r.name for r in config.resources if r.type == "LDS"} == {"public"}
            code, _ = await rpc_error(a.stub.GetProxyStatus(pb.GetProxyStatusRequest(node_id="x")))
            assert code == grpc.StatusCode.NOT_FOUND

            # What people see: meshctl against either replica, with the REPLICA column.
            for mesh in (a, b):
                code, out, err = await meshctl("proxy-status", "--admin", mesh.address)
                assert code == 0, err
                header, *rows = [line.split() for line in out.splitlines()]
                assert header[:4] == ["NODE_ID", "NODE_CLUSTER", "REPLICA", "PROTOCOL"]
                assert {(r[0], r[2]) for r in rows} == {("gw-a", "a"), ("gw-b", "b")}
                assert err == ""

            # A replica asked by another answers for itself alone (no loop between them).
            local = await a.stub.GetProxyStatus(
                pb.GetProxyStatusRequest(), metadata=(("x-mesh-replica-local", "1"),)
            )
            assert replicas_of(local) == {"gw-a": "a"} and not local.replicas


async def test_a_namespace_token_sees_no_more_of_the_other_replica(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str
) -> None:
    async with two_replicas(etcd_shared, etcd_prefix, tokens=True) as (a, b):
        await seed(a.stub, MESH, metadata=ALL)
        state = b.app.controller.state
        await b.wait_for(lambda: len(state.registered_services) == 2, "in force on b")
        port = b.app.xds_port
        async with (
            sotw_client(a.app.xds_port, "gateway", "gw-a"),
            sidecar(port, "web.shop", "web-1"),
            sidecar(port, "vault.secret", "vault-1"),
        ):
            everything = await eventually(
                lambda: a.stub.GetProxyStatus(pb.GetProxyStatusRequest(), metadata=ALL),
                "the three proxies",
                5,
                until=lambda r: len(r.proxies) == 3,
            )
            assert replicas_of(everything) == {"gw-a": "a", "web-1": "b", "vault-1": "b"}
            shop = await a.stub.GetProxyStatus(pb.GetProxyStatusRequest(), metadata=SHOP)
            assert replicas_of(shop) == {"gw-a": "a", "web-1": "b"}
            for call in (
                a.stub.GetProxyStatus(pb.GetProxyStatusRequest(node_id="vault-1"), metadata=SHOP),
                a.stub.GetProxyConfig(pb.GetProxyConfigRequest(node_id="vault-1"), metadata=SHOP),
            ):
                code, msg = await rpc_error(call)
                assert code == grpc.StatusCode.NOT_FOUND, msg
            web = await a.stub.GetProxyConfig(
                pb.GetProxyConfigRequest(node_id="web-1"), metadata=SHOP
            )
            assert web.status.replica == "b"
            # Without a token the other replica is not asked for anything either.
            code, _ = await rpc_error(a.stub.GetProxyStatus(pb.GetProxyStatusRequest()))
            assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_replica_that_does_not_answer_is_named_and_one_that_stops_leaves(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshd.replicas")
    async with two_replicas(etcd_shared, etcd_prefix) as (a, b):
        await seeded(a, b)
        async with (
            sotw_client(a.app.xds_port, "gateway", "gw-a"),
            sotw_client(b.app.xds_port, "gateway", "gw-b"),
        ):
            await eventually(
                lambda: a.stub.GetProxyStatus(pb.GetProxyStatusRequest()),
                "both proxies",
                5,
                until=lambda r: len(r.proxies) == 2,
            )
            # b's admin API goes away while its record stays in etcd (as when its host
            # is cut off): a still answers, with its own proxies, and says whose are missing.
            server = b.app._admin_server
            assert server is not None
            await server.stop(0)
            resp = await a.stub.GetProxyStatus(pb.GetProxyStatusRequest())
            assert replicas_of(resp) == {"gw-a": "a"}
            (missing,) = [r for r in resp.replicas if not r.answered]
            assert missing.id == "b" and missing.address == f"127.0.0.1:{b.app.admin_port}"
            assert "UNAVAILABLE" in missing.error
            code, out, err = await meshctl("proxy-status", "-o", "json", "--admin", a.address)
            assert code == 0, err
            assert "replica b (127.0.0.1:" in err and "its proxies are missing" in err
            doc = json.loads(out)
            assert [p["node_id"] for p in doc["proxies"]] == ["gw-a"]
            assert [(r["id"], r["answered"]) for r in doc["replicas"]] == [
                ("a", True),
                ("b", False),
            ]
            # A replica that stops gives its lease back: the others forget it at once.
            await b.app.stop(grace=0.2)
            await eventually(
                lambda: "b" not in a.app.replicas.peers, "a to forget b", 5, interval=0.05
            )
            resp = await a.stub.GetProxyStatus(pb.GetProxyStatusRequest())
            assert [(r.id, r.answered) for r in resp.replicas] == [("a", True)]
    assert any("replica b left" in r.getMessage() for r in caplog.records)


async def test_replicas_with_tls_ask_each_other_over_tls(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str
) -> None:
    """--xds-tls on: the admin APIs speak TLS only; a replica dials the others trusting the
    mesh CA and checking the name their certificates hold (the address is an IP)."""
    auth = Authenticator(None)
    async with (
        running_admin(etcd_shared, etcd_prefix, auth, replica_id="a", xds_tls=True) as a,
        running_admin(etcd_shared, etcd_prefix, auth, replica_id="b", xds_tls=True) as b,
    ):
        assert a.app.ca is not None
        await eventually(lambda: "b" in a.app.replicas.peers, "a to know b", 10, interval=0.05)
        record = a.app.replicas.peers["b"]
        assert (record.tls, record.tls_name) == (True, "localhost")
        credentials = grpc.ssl_channel_credentials(root_certificates=a.app.ca.bundle_pem)
        async with grpc.aio.secure_channel(a.address, credentials) as channel:
            stub = admin_pb2_grpc.MeshAdminServiceStub(channel)  # type: ignore[no-untyped-call]
            resp = await stub.GetProxyStatus(pb.GetProxyStatusRequest())
        assert [(r.id, r.answered, r.error) for r in resp.replicas] == [
            ("a", True, ""),
            ("b", True, ""),
        ]
        # Plaintext to a TLS admin API is refused: b's answer did come over TLS.
        code, _ = await rpc_error(b.stub.GetProxyStatus(pb.GetProxyStatusRequest(), timeout=2))
        assert code == grpc.StatusCode.UNAVAILABLE
