"""Admin API tokens, roles and namespace scopes; health and reflection stay open."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.fixtures_admin import AdminMesh, bearer, entry, rpc_error, seed
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import load_tokens, parse_tokens
from xds_server.admin.server import check_exposure, is_loopback
from xds_server.errors import ValidationError

SHOP_SVC = entry(pb.KIND_SERVICE, "web", {"port": 80}, ns="shop")
OTHER_SVC = entry(pb.KIND_SERVICE, "web", {"port": 80}, ns="billing")


async def test_missing_or_wrong_token_is_unauthenticated(admin_mesh_tokens: AdminMesh) -> None:
    stub = admin_mesh_tokens.stub
    req = pb.ListEntriesRequest(kind=pb.KIND_SERVICE)
    for metadata in [None, bearer("nope"), (("authorization", "Basic edit-all"),)]:
        code, msg = await rpc_error(stub.ListEntries(req, metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED, msg
    code, _ = await rpc_error(stub.GetProxyStatus(pb.GetProxyStatusRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    watch = stub.Watch(pb.WatchRequest())
    code, _ = await rpc_error(watch.read())
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_roles_and_namespaces(admin_mesh_tokens: AdminMesh) -> None:
    stub = admin_mesh_tokens.stub
    # An editor for every namespace writes anywhere, listeners included.
    await seed(
        stub,
        [OTHER_SVC, entry(pb.KIND_LISTENER, "public", {"port": 10000})],
        metadata=bearer("edit-all"),
    )
    # A namespaced editor writes in its namespaces (globs) only.
    await seed(stub, [SHOP_SVC], metadata=bearer("edit-shop"))
    await seed(
        stub, [entry(pb.KIND_SERVICE, "a", {"port": 1}, ns="shop-eu")], metadata=bearer("edit-shop")
    )
    code, msg = await rpc_error(seed(stub, [OTHER_SVC], metadata=bearer("edit-shop")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'billing'" in msg
    code, msg = await rpc_error(
        seed(stub, [entry(pb.KIND_LISTENER, "l2", {"port": 1})], metadata=bearer("edit-shop"))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "listeners" in msg
    # A viewer reads its namespace and cannot write at all.
    code, msg = await rpc_error(seed(stub, [SHOP_SVC], metadata=bearer("view-shop")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "viewer" in msg
    ref = pb.EntryRef(kind=pb.KIND_SERVICE, namespace="shop", name="web")
    code, _ = await rpc_error(
        stub.DeleteEntry(pb.DeleteEntryRequest(ref=ref), metadata=bearer("view-shop"))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    got = await stub.GetEntry(pb.GetEntryRequest(ref=ref), metadata=bearer("view-shop"))
    assert got.entry.revision > 0
    code, _ = await rpc_error(
        stub.GetEntry(
            pb.GetEntryRequest(
                ref=pb.EntryRef(kind=pb.KIND_SERVICE, namespace="billing", name="web")
            ),
            metadata=bearer("view-shop"),
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    listed = await stub.ListEntries(
        pb.ListEntriesRequest(kind=pb.KIND_SERVICE), metadata=bearer("view-shop")
    )
    assert [(e.ref.namespace, e.ref.name) for e in listed.entries] == [("shop", "web")]
    listeners = await stub.ListEntries(
        pb.ListEntriesRequest(kind=pb.KIND_LISTENER), metadata=bearer("view-shop")
    )
    assert [e.ref.name for e in listeners.entries] == ["public"]
    code, _ = await rpc_error(
        stub.KeepAlive(pb.KeepAliveRequest(lease=1), metadata=bearer("view-shop"))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    status = await stub.GetProxyStatus(pb.GetProxyStatusRequest(), metadata=bearer("view-shop"))
    assert list(status.proxies) == []


async def test_health_and_reflection_need_no_token(admin_mesh_tokens: AdminMesh) -> None:
    channel = admin_mesh_tokens.channel
    resp = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="apg.mesh.admin.v1.MeshAdminService")
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for r in call:
        names = {s.name for s in r.list_services_response.service}
    assert {
        "apg.mesh.admin.v1.MeshAdminService",
        "envoy.service.status.v3.ClientStatusDiscoveryService",
        "grpc.health.v1.Health",
    } <= names


def test_open_admin_api_only_on_loopback() -> None:
    from xds_server.admin.auth import Authenticator

    open_api = Authenticator(None)
    for addr in ("127.0.0.1:18001", "[::1]:18001", "localhost:18001", "127.0.0.2:1"):
        assert is_loopback(addr)
        check_exposure(addr, open_api)
    for addr in ("0.0.0.0:18001", "10.1.2.3:18001", "[::]:18001", "mesh.example:18001"):
        assert not is_loopback(addr)
        with pytest.raises(ValueError, match="needs --tokens"):
            check_exposure(addr, open_api)
        check_exposure(
            addr, Authenticator(parse_tokens({"tokens": [{"token": "abcd", "role": "viewer"}]}))
        )


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "tokens"),
        ({"tokens": "x"}, "tokens"),
        ({"tokens": [{"token": "abcd"}]}, "tokens[0].role"),
        ({"tokens": [{"token": "abcd", "role": "admin"}]}, "tokens[0].role"),
        ({"tokens": [{"token": "ab", "role": "viewer"}]}, "tokens[0].token"),
        (
            {"tokens": [{"token": "abcd", "role": "viewer", "namespaces": []}]},
            "tokens[0].namespaces",
        ),
        (
            {"tokens": [{"token": "abcd", "role": "viewer", "namspaces": ["a"]}]},
            "tokens[0].namspaces",
        ),
        (
            {"tokens": [{"token": "abcd", "role": "viewer"}, {"token": "abcd", "role": "editor"}]},
            "tokens[1].token",
        ),
        ({"tokens": [{"token": "abcd", "role": "viewer"}], "extra": 1}, "extra"),
    ],
)
def test_bad_tokens_files_name_the_field(doc: object, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_tokens(doc)
    assert info.value.field == field


def test_tokens_file_yaml_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens:\n  - {token: s3cret, role: editor, namespaces: ['*']}\n")
    auth = load_tokens(path)
    assert auth.principal((("authorization", "Bearer s3cret"),)).role == "editor"
    path.write_text("tokens: [ {token: s3cret, role: boss} ]")
    with pytest.raises(ValueError, match=r"tokens.yaml: tokens\[0\].role"):
        load_tokens(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_tokens(tmp_path / "missing.yaml")


def test_meshd_refuses_an_open_admin_api_beyond_loopback(tmp_path: Path) -> None:
    def meshd(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "xds_server.cli.meshd", "--data-dir", str(tmp_path)]
        return subprocess.run(
            [*cmd, "--metrics", "", *args], capture_output=True, text=True, timeout=30
        )

    out = meshd("--admin", "0.0.0.0:0")
    assert out.returncode == 2
    assert "needs --tokens" in out.stderr
    assert not (tmp_path / "etcd").exists()  # refused before starting anything
    bad = tmp_path / "tokens.json"
    bad.write_text('{"tokens": [{"token": "abcd", "role": "root"}]}')
    out = meshd("--tokens", str(bad))
    assert out.returncode == 2 and "tokens[0].role" in out.stderr
