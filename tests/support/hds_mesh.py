"""The HDS / LRS rig: real etcd with a registry client and meshd replicas the test starts
(``report_interval_ms`` of :data:`INTERVAL_MS`, admin API on for ``meshctl health`` and
``meshctl topology``), all stopped after.

``mesh_fixture`` provides the fixture ``mesh``; import it into the test module that uses it
(it overrides the behaviour tests' ``mesh`` there, and only there).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import free_port
from xds_server.app import MeshApp, MeshConfig

INTERVAL_MS = 1000


@dataclass
class Mesh:
    etcd: EmbeddedEtcd
    registry: EtcdRegistry
    apps: list[MeshApp]
    listener_port: int

    async def put(self, key: str, value: dict[str, Any]) -> None:
        await self.registry.put(self.registry.prefix + key, json.dumps(value).encode())


@pytest.fixture(name="mesh")
async def mesh_fixture(tmp_path: Path) -> AsyncIterator[Mesh]:
    """etcd with a registry client; meshd replicas started by the test, all stopped after."""
    etcd = EmbeddedEtcd(tmp_path / "etcd", unsafe_no_fsync=True, auto_compaction_retention=None)
    await etcd.start()
    registry = EtcdRegistry(etcd.endpoint)
    m = Mesh(etcd, registry, [], free_port())
    try:
        yield m
    finally:
        for app in m.apps:
            await app.stop(grace=0.2)
        await registry.close()
        etcd.stop()


async def start_meshd(mesh: Mesh) -> MeshApp:
    app = MeshApp(
        mesh.registry,
        MeshConfig(
            xds=f"127.0.0.1:{free_port()}",
            metrics=None,
            report_interval_ms=INTERVAL_MS,
            admin="127.0.0.1:0",  # for meshctl health / topology
        ),
    )
    await app.start()
    mesh.apps.append(app)
    return app
