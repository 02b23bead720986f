"""``meshctl`` when what it asks about is missing or down: an unknown proxy, an etcd outage.

Real etcd, a real meshd (MeshApp with its admin API) and the real ``meshctl`` process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.etcd import EmbeddedEtcd
from tests.support.fixtures_admin import AdminMesh, running_admin
from tests.support.meshctl import MANIFEST, meshctl
from tests.support.xds_client import sotw_client
from xds_server.admin.auth import Authenticator

OUTAGE_BOUND = 6.0
"""Seconds a meshctl call may take while etcd is down: meshd gives up on etcd after ~2 s;
the rest is meshctl's own start on a busy machine (a loose bound, not a timing)."""


async def test_proxy_status_of_a_node_that_is_not_connected_is_not_found(
    admin_mesh: AdminMesh,
) -> None:
    admin = ("--admin", admin_mesh.address)
    code, _, err = await meshctl("apply", "-f", "-", *admin, stdin=MANIFEST)
    assert code == 0, err
    code, out, err = await meshctl("proxy-status", "nosuch", *admin)
    assert code == 1, (out, err)
    assert "NOT_FOUND" in err and "'nosuch' is not connected" in err, err
    code, out, err = await meshctl("proxy-status", "nosuch", "-o", "json", *admin)
    assert code == 1 and "NOT_FOUND" in err, (out, err)
    code, out, err = await meshctl("proxy-status", *admin)  # all nodes: none is fine
    assert code == 0 and out.strip() == "no proxies connected", (out, err)
    async with sotw_client(admin_mesh.app.xds_port, "gateway", node_id="gw-1"):
        await asyncio.sleep(0.2)
        code, out, err = await meshctl("proxy-status", "gw-1", *admin)
        assert code == 0 and out.splitlines()[1].split()[:2] == ["gw-1", "gateway"], err
        code, out, err = await meshctl("proxy-status", "gw-2", *admin)
        assert code == 1 and "NOT_FOUND" in err, (out, err)


@pytest.fixture
async def outage_mesh(etcd: EmbeddedEtcd) -> AsyncIterator[AdminMesh]:
    """A meshd on a private etcd the test may stop."""
    async with running_admin(etcd, "/mesh/", Authenticator(None)) as mesh:
        yield mesh


async def test_admin_calls_during_an_etcd_outage_say_the_registry_is_unavailable(
    outage_mesh: AdminMesh, tmp_path: Path
) -> None:
    admin = ("--admin", outage_mesh.address)
    code, _, err = await meshctl("apply", "-f", "-", *admin, stdin=MANIFEST)
    assert code == 0, err
    await outage_mesh.wait_for(
        lambda: bool(outage_mesh.app.controller.state.listeners), "the manifest in force"
    )
    outage_mesh.etcd.stop()
    for args, stdin in (
        (("get", "services"), None),
        (("get", "services", "web", "-n", "shop"), None),
        (("apply", "-f", "-"), MANIFEST.replace("8080", "8081")),
        (("delete", "routes", "front", "-n", "shop"), None),
    ):
        started = time.monotonic()
        code, out, err = await meshctl(*args, *admin, stdin=stdin)
        took = time.monotonic() - started
        assert code == 2, (args, out, err)
        assert "registry (etcd) unavailable" in err, (args, err)
        assert "admin API" not in err, (args, err)  # meshd answered: it is not unreachable
        assert took < OUTAGE_BOUND, (args, took, err)
    # What meshd holds in memory still answers.
    code, out, err = await meshctl("errors", *admin)
    assert code == 0 and "no rejected registry entries" in out, (out, err)
