"""What ``meshctl`` shows of rejected registry entries: ``errors``, ``get`` and the metrics.

Real etcd, a real meshd (MeshApp with its admin API and ``/metrics``) and the real
``meshctl`` process.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import free_port
from tests.support.fixtures_admin import AdminMesh
from tests.support.meshctl import meshctl
from tests.support.wait import eventually
from xds_server.admin.api import admin_pb2_grpc
from xds_server.app import MeshApp, MeshConfig

BAD_NAME = "db.invalid"  # RFC 6761: never resolves


@pytest.fixture
async def mesh(etcd_shared: EmbeddedEtcd, etcd_prefix: str) -> AsyncIterator[AdminMesh]:
    """meshd with its admin API and /metrics on free ports, on the shared etcd."""
    registry = EtcdRegistry(etcd_shared.endpoint, prefix=etcd_prefix)
    config = MeshConfig(xds="127.0.0.1:0", admin="127.0.0.1:0", metrics=f"127.0.0.1:{free_port()}")
    app = MeshApp(registry, config)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.admin_port}")
    try:
        yield AdminMesh(
            etcd_shared, registry, app, channel, admin_pb2_grpc.MeshAdminServiceStub(channel)
        )
    finally:
        await channel.close()
        await app.stop(grace=0.2)
        await registry.close()


def _rejected_metric(app: MeshApp, kind: str) -> float:
    url = f"http://127.0.0.1:{app.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(f'meshd_registry_rejected_entries{{kind="{kind}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no meshd_registry_rejected_entries for {kind}:\n{text}")


async def _errors(mesh: AdminMesh) -> dict[str, dict[str, object]]:
    code, out, err = await meshctl("errors", "-o", "json", "--admin", mesh.address)
    assert code == 0, err
    return {e["key"]: e for e in json.loads(out)["errors"]}


async def test_an_endpoint_name_that_does_not_resolve_is_listed_and_counted(
    mesh: AdminMesh,
) -> None:
    p = mesh.prefix
    await mesh.put_json("services/shop/db", {"port": 5432})
    await mesh.put_json("endpoints/shop/db/db-1", {"address": BAD_NAME})
    key = f"{p}endpoints/shop/db/db-1"

    async def listed() -> bool:
        return key in await _errors(mesh)

    await eventually(listed, "the unresolvable endpoint in meshctl errors", 15, interval=0.2)
    problem = (await _errors(mesh))[key]
    assert problem["field"] == "address", problem
    assert BAD_NAME in str(problem["reason"]) and "does not resolve" in str(problem["reason"])
    code, out, _ = await meshctl("errors", "--admin", mesh.address)
    assert code == 0 and key in out and "does not resolve" in out, out
    assert _rejected_metric(mesh.app, "endpoints") == 1

    # A second endpoint with the name already known not to resolve is reported too.
    await mesh.put_json("endpoints/shop/db/db-2", {"address": BAD_NAME})
    second = f"{p}endpoints/shop/db/db-2"

    async def both() -> bool:
        return {key, second} <= set(await _errors(mesh))

    await eventually(both, "the second unresolvable endpoint", 15, interval=0.2)
    assert _rejected_metric(mesh.app, "endpoints") == 2

    # Fixed (an IP) or deleted: gone from the list and from the count.
    await mesh.put_json("endpoints/shop/db/db-1", {"address": "127.0.0.1"})
    await mesh.registry.delete(second)

    async def cleared() -> bool:
        return not await _errors(mesh)

    await eventually(cleared, "the endpoints no longer rejected", 15, interval=0.2)
    assert _rejected_metric(mesh.app, "endpoints") == 0


def _table(out: str) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Header, rows by NAME (split on two spaces or more) and the lines after the table."""
    lines = out.splitlines()
    header = lines[0].split()
    rows: dict[str, list[str]] = {}
    notes: list[str] = []
    for line in lines[1:]:
        if notes or not line or line.startswith(" ") or "  " not in line:
            notes.append(line)
            continue
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        rows[cells[header.index("NAME")]] = cells
    return header, rows, notes


async def test_get_shows_what_is_in_force_and_what_is_rejected(mesh: AdminMesh) -> None:
    admin = ("--admin", mesh.address)
    await mesh.put_json("services/shop/web", {"port": 8080})
    await mesh.put_json("services/shop/api", {"port": 9090})
    await mesh.put_json("listeners/public", {"port": free_port()})
    await mesh.put_json(
        "routes/shop/front", {"listener": "public", "destinations": [{"service": "web"}]}
    )
    # A route to a service that does not exist: rejected, nothing kept.
    await mesh.put_json(
        "routes/shop/ghost",
        {"listener": "public", "match": {"prefix": "/g"}, "destinations": [{"service": "nosuch"}]},
    )
    state = mesh.app.controller.state
    await mesh.wait_for(lambda: "front" in {r.name for r in state.routes.values()}, "front")
    # A bad update of a service in force: rejected, its last good value kept.
    await mesh.put_json("services/shop/api", {"port": 9090, "protocl": "http"})
    await mesh.wait_for(lambda: len(state.problems) == 2, "two rejected entries")

    code, out, err = await meshctl("get", "routes", "-n", "shop", *admin)
    assert code == 0, err
    header, rows, notes = _table(out)
    assert header[-1] == "STATUS", out
    assert rows["front"][-1] == "in force", out
    assert rows["ghost"][-1] == "rejected", out
    assert "nosuch=1" in rows["ghost"] and "None" not in out, out  # weight defaults to 1
    (note,) = [n for n in notes if "ghost" in n]
    assert "shop/ghost" in note and "nosuch" in note, out  # the reason, naming the service

    code, out, err = await meshctl("get", "services", "-n", "shop", *admin)
    assert code == 0, err
    header, rows, notes = _table(out)
    assert rows["web"][-1] == "in force", out
    assert rows["api"][-1] == "rejected, last good in force", out
    (note,) = [n for n in notes if "api" in n]
    assert "protocl" in note and "last good value kept" in note, out

    # Everything in force: the table as before, no STATUS column.
    code, out, err = await meshctl("get", "listeners", *admin)
    assert code == 0 and out.splitlines()[0].split()[-1] == "REVISION", out
