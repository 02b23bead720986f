"""A meshd with its admin API on real etcd, and a client for it.

- ``admin_mesh``: an :class:`AdminMesh` (EtcdRegistry on the shared etcd under this test's
  prefix, MeshApp with xDS and admin servers on free loopback ports, open admin API).
- ``admin_mesh_tokens``: the same with ``TOKENS`` enforced.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from tests.support.wait import eventually
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.api import admin_pb2_grpc
from xds_server.admin.auth import Authenticator, parse_tokens
from xds_server.admin.entries import spec_struct
from xds_server.app import MeshApp, MeshConfig

TOKENS = {
    "tokens": [
        {"token": "edit-all", "role": "editor", "namespaces": ["*"]},
        {"token": "edit-shop", "role": "editor", "namespaces": ["shop", "shop-*"]},
        {"token": "view-shop", "role": "viewer", "namespaces": ["shop"]},
    ]
}


@dataclass
class AdminMesh:
    etcd: EmbeddedEtcd
    registry: EtcdRegistry
    app: MeshApp
    channel: grpc.aio.Channel
    stub: admin_pb2_grpc.MeshAdminServiceStub

    @property
    def prefix(self) -> str:
        return self.registry.prefix

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.admin_port}"

    async def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 5) -> None:
        await eventually(predicate, what, timeout, interval=0.02)

    async def put_json(self, key: str, value: object) -> None:
        await self.registry.put(self.prefix + key, json.dumps(value).encode())


def entry(
    kind: int,
    name: str,
    spec: dict[str, Any],
    *,
    ns: str = "",
    service: str = "",
    revision: int = 0,
) -> pb.Entry:
    """An admin API Entry."""
    return pb.Entry(
        ref=pb.EntryRef(kind=kind, namespace=ns, service=service, name=name),  # type: ignore[arg-type]
        spec=spec_struct(spec),
        revision=revision,
    )


async def rpc_error(call: Any) -> tuple[grpc.StatusCode, str]:
    """Await a call that must fail; its status code and details."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@contextlib.asynccontextmanager
async def running_admin(
    etcd: EmbeddedEtcd, prefix: str, auth: Authenticator, **config: Any
) -> AsyncIterator[AdminMesh]:
    """meshd with its admin API on ``etcd`` (``config``: more MeshConfig fields)."""
    registry = EtcdRegistry(etcd.endpoint, prefix=prefix)
    app = MeshApp(
        registry,
        MeshConfig(xds="127.0.0.1:0", metrics=None, admin="127.0.0.1:0", auth=auth, **config),
    )
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.admin_port}")
    try:
        yield AdminMesh(etcd, registry, app, channel, admin_pb2_grpc.MeshAdminServiceStub(channel))
    finally:
        await channel.close()
        await app.stop(grace=0.2)
        await registry.close()


@pytest.fixture
async def admin_mesh(etcd_shared: EmbeddedEtcd, etcd_prefix: str) -> AsyncIterator[AdminMesh]:
    async with running_admin(etcd_shared, etcd_prefix, Authenticator(None)) as mesh:
        yield mesh


@pytest.fixture
async def admin_mesh_tokens(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str
) -> AsyncIterator[AdminMesh]:
    async with running_admin(etcd_shared, etcd_prefix, Authenticator(parse_tokens(TOKENS))) as mesh:
        yield mesh


async def seed(
    stub: admin_pb2_grpc.MeshAdminServiceStub, entries: Iterable[pb.Entry], metadata: Any = None
) -> pb.ApplyEntriesResponse:
    return await stub.ApplyEntries(pb.ApplyEntriesRequest(entries=list(entries)), metadata=metadata)
