"""Writes through meshctl and the admin API that must not take traffic down or get stuck:
repairing a key that holds invalid JSON, and applies larger than one etcd transaction.

Real etcd, real meshd (admin API) and the real ``meshctl`` and ``etcdctl`` processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from adapters.etcd import EmbeddedEtcd, find_etcd_binary
from tests.fixtures_admin import AdminMesh
from tests.test_meshctl import meshctl

pytestmark = pytest.mark.etcd

ROUTE_DOC = """\
kind: Route
namespace: shop
name: front
spec:
  listener: public
  match: {prefix: /}
  destinations: [{service: web, weight: 100}]
"""
SERVICE_DOC = "kind: Service\nnamespace: shop\nname: web\nspec: {port: 8080}\n"


async def etcdctl(etcd: EmbeddedEtcd, *args: str, stdin: bytes | None = None) -> str:
    """The real etcdctl against ``etcd`` (values via stdin: no argv limit)."""
    binary = str(Path(find_etcd_binary()).with_name("etcdctl"))
    out = await asyncio.to_thread(
        subprocess.run,
        [binary, f"--endpoints={etcd.endpoint}", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        timeout=20,
        check=True,
    )
    return out.stdout.decode()


async def test_apply_repairs_a_key_holding_invalid_json(admin_mesh: AdminMesh) -> None:
    admin = ("--admin", admin_mesh.address)
    code, _, err = await meshctl("apply", "-f", "-", *admin, stdin=SERVICE_DOC + "---\n" + ROUTE_DOC)
    assert code == 0, err
    key = f"{admin_mesh.prefix}routes/shop/front"
    await etcdctl(admin_mesh.etcd, "put", key, stdin=b'{"listener": "public", "destin')
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: key in state.problems, "the garbage to be rejected")

    # The advice of split is one a meshctl user can follow.
    code, _, err = await meshctl("split", "front", "web=1", "-n", "shop", *admin)
    assert code == 1 and "FAILED_PRECONDITION" in err, err
    assert "meshctl apply -f" in err, err

    code, out, err = await meshctl("apply", "--dry-run", "-f", "-", *admin, stdin=ROUTE_DOC)
    assert code == 0, err
    assert out.strip() == "route/shop/front configured (dry run)"
    code, out, err = await meshctl("apply", "-f", "-", *admin, stdin=ROUTE_DOC)
    assert code == 0, err
    assert out.strip() == "route/shop/front configured"
    await admin_mesh.wait_for(lambda: key not in state.problems, "the repaired route")
    stored = json.loads(await etcdctl(admin_mesh.etcd, "get", "--print-value-only", key))
    assert stored["destinations"] == [{"service": "web", "weight": 100}]
    code, out, _ = await meshctl("errors", *admin)
    assert code == 0 and out.strip() == "no rejected registry entries"
