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

from adapters.etcd import EmbeddedEtcd, find_etcd_binary
from tests.support.fixtures_admin import AdminMesh, running_admin
from tests.support.meshctl import MANIFEST, meshctl
from tests.support.mtls_certs import make_ca
from tests.support.wait import eventually
from xds_server.admin.auth import Authenticator

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
    code, _, err = await meshctl(
        "apply", "-f", "-", *admin, stdin=SERVICE_DOC + "---\n" + ROUTE_DOC
    )
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


async def test_huge_bad_field_names_do_not_block_status_reports(admin_mesh: AdminMesh) -> None:
    admin = ("--admin", admin_mesh.address)
    prefix = admin_mesh.prefix
    huge = "x" * (900 * 1024)  # a value etcd takes; its error, naming the field twice, it does not
    await etcdctl(
        admin_mesh.etcd,
        "put",
        f"{prefix}services/shop/huge",
        stdin=json.dumps({"port": 80, huge: 1}).encode(),
    )
    await etcdctl(admin_mesh.etcd, "put", f"{prefix}services/shop/small", stdin=b'{"port": "http"}')

    async def reported() -> dict[str, dict[str, object]]:
        out = await etcdctl(admin_mesh.etcd, "get", "--prefix", f"{prefix}status/errors/")
        lines = out.splitlines()
        return {k: json.loads(v) for k, v in zip(lines[::2], lines[1::2], strict=True)}

    status = await eventually(
        reported, "two status entries", 15, until=lambda status: len(status) >= 2, interval=0.1
    )
    small = status[f"{prefix}status/errors/services/shop/small"]
    assert small["field"] == "port" and "must be an integer" in str(small["error"]), small
    big = status[f"{prefix}status/errors/services/shop/huge"]
    assert big["key"] == f"{prefix}services/shop/huge"
    assert len(json.dumps(big)) < 16 * 1024, len(json.dumps(big))
    assert str(big["field"]).startswith("xxxx") and "truncated" in str(big["field"]), big
    assert "unknown field" in str(big["error"]) and "truncated" in str(big["error"]), big

    code, out, err = await meshctl("errors", "-o", "json", *admin)
    assert code == 0, err
    keys = {e["key"] for e in json.loads(out)["errors"]}
    assert keys == {f"{prefix}services/shop/huge", f"{prefix}services/shop/small"}


async def test_a_status_write_etcd_refuses_does_not_block_the_others(tmp_path: Path) -> None:
    # An etcd with a small request limit (--max-request-bytes): the first entry fits, the
    # report of what is wrong with it (quoting its 1,000-digit port) does not.
    etcd = EmbeddedEtcd(
        tmp_path / "etcd",
        unsafe_no_fsync=True,
        auto_compaction_retention=None,
        extra_args=("--max-request-bytes=1100",),
    )
    await etcd.start()
    try:
        # An operator's CA: meshd writes only its bundle, which fits in the small limit.
        ca, _, _ = make_ca()
        operator_ca = (ca.cert, ca.key)
        async with running_admin(
            etcd, "/mesh/", Authenticator(None), operator_ca=operator_ca
        ) as mesh:
            await etcdctl(
                etcd, "put", "/mesh/services/shop/big", stdin=b'{"port": 1%s}' % (b"0" * 1000)
            )
            state = mesh.app.controller.state
            await mesh.wait_for(lambda: "/mesh/services/shop/big" in state.problems, "big")
            await etcdctl(etcd, "put", "/mesh/services/shop/small", stdin=b'{"port": "http"}')
            await eventually(
                lambda: etcdctl(etcd, "get", "/mesh/status/errors/services/shop/small"),
                "small's status",
                10,
                interval=0.1,
            )
            assert not await etcdctl(etcd, "get", "/mesh/status/errors/services/shop/big")
            # Both are reported where meshd keeps them in memory, too.
            code, out, err = await meshctl("errors", "--admin", mesh.address)
            assert code == 0, err
            assert "/mesh/services/shop/big" in out and "/mesh/services/shop/small" in out
    finally:
        etcd.stop()


def _bulk(n: int) -> str:
    """A manifest of ``n`` documents: one service and ``n - 1`` of its endpoints."""
    docs: list[dict[str, object]] = [
        {"kind": "Service", "namespace": "shop", "name": "bulk", "spec": {"port": 8080}}
    ]
    docs += [
        {
            "kind": "Endpoint",
            "namespace": "shop",
            "service": "bulk",
            "name": f"ep-{i}",
            "spec": {"address": f"10.0.{i // 250}.{i % 250 + 1}"},
        }
        for i in range(n - 1)
    ]
    return json.dumps(docs)


async def test_apply_beyond_a_stock_etcds_transaction_limit(tmp_path: Path) -> None:
    # etcd's own default: at most 128 operations in one transaction (--max-txn-ops).
    etcd = EmbeddedEtcd(
        tmp_path / "etcd", unsafe_no_fsync=True, auto_compaction_retention=None, max_txn_ops=128
    )
    await etcd.start()
    try:
        # An operator's CA: meshd writes only its bundle, which fits in the small limit.
        ca, _, _ = make_ca()
        operator_ca = (ca.cert, ca.key)
        async with running_admin(
            etcd, "/mesh/", Authenticator(None), operator_ca=operator_ca
        ) as mesh:
            admin = ("--admin", mesh.address)
            for dry_run in (("--dry-run",), ()):
                code, out, err = await meshctl(
                    "apply", *dry_run, "-f", "-", *admin, stdin=_bulk(300)
                )
                assert code == 1, (dry_run, out)
                assert "INVALID_ARGUMENT" in err, err
                assert "300 entries" in err and "at most 128" in err, err
                assert "--max-txn-ops" in err, err
            for kind in ("services", "endpoints"):
                assert await etcdctl(etcd, "get", "--prefix", f"/mesh/{kind}/", "--keys-only") == ""
            # At the limit, it all goes in, in one transaction.
            code, out, err = await meshctl("apply", "-f", "-", *admin, stdin=_bulk(128))
            assert code == 0, err
            assert out.count(" created") == 128
            keys = await etcdctl(etcd, "get", "--prefix", "/mesh/endpoints/", "--keys-only")
            assert len(keys.split()) == 127
    finally:
        etcd.stop()


WEB_ONLY_V2 = """\
kind: Service
namespace: shop
name: web
spec: {port: 8080, subsets: {v2: {version: v2}}}
"""


async def test_writes_that_would_break_a_route_are_refused_unless_forced(
    admin_mesh: AdminMesh,
) -> None:
    admin = ("--admin", admin_mesh.address)
    prefix = admin_mesh.prefix
    code, _, err = await meshctl("apply", "-f", "-", *admin, stdin=MANIFEST)  # front -> web@v1
    assert code == 0, err
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: f"{prefix}routes/shop/front" in state.routes, "front")
    web_key = f"{prefix}services/shop/web"

    for dry_run in ((), ("--dry-run",)):
        code, out, err = await meshctl("delete", "svc", "web", "-n", "shop", *dry_run, *admin)
        assert code == 1, (dry_run, out)
        assert "FAILED_PRECONDITION" in err and "services/shop/web:" in err, err
        assert "routes/shop/front (destinations[0].service: unknown service shop/web)" in err, err
        assert "--force" in err, err
        code, out, err = await meshctl("apply", *dry_run, "-f", "-", *admin, stdin=WEB_ONLY_V2)
        assert code == 1, (dry_run, out)
        assert "FAILED_PRECONDITION" in err, err
        assert (
            "routes/shop/front (destinations[0].subset: service shop/web has no subset 'v1')" in err
        )
    assert json.loads(await etcdctl(admin_mesh.etcd, "get", "--print-value-only", web_key))[
        "subsets"
    ] == {"v1": {"version": "v1"}, "v2": {"version": "v2"}}

    # What nothing uses may go; a route changed in the same apply is judged as written.
    code, out, err = await meshctl(
        "apply", "-f", "-", *admin, stdin=MANIFEST.replace(", v2: {version: v2}", "")
    )
    assert code == 0, err
    moved = MANIFEST.replace("subset: v1", "subset: v2").replace("{v1: {version: v1}, ", "{")
    code, out, err = await meshctl("apply", "-f", "-", *admin, stdin=moved)
    assert code == 0, err
    assert "service/shop/web configured" in out and "route/shop/front configured" in out
    await admin_mesh.wait_for(
        lambda: state.routes[f"{prefix}routes/shop/front"].destinations[0].subset == "v2", "v2"
    )

    # Forced: a dry run reports and writes nothing; then the delete goes through, and meshd
    # keeps the service in force for the route, saying so on both keys.
    code, out, err = await meshctl(
        "delete", "service", "web", "-n", "shop", "--force", "--dry-run", *admin
    )
    assert code == 0, err
    assert out.strip() == "service/web deleted (dry run)"
    assert "routes/shop/front" in err and "warning" in err, err
    assert await etcdctl(admin_mesh.etcd, "get", "--keys-only", web_key)
    code, out, err = await meshctl("delete", "service", "web", "-n", "shop", "--force", *admin)
    assert code == 0, err
    assert out.strip() == "service/web deleted"
    assert "routes/shop/front still depends on it" in err, err
    assert not await etcdctl(admin_mesh.etcd, "get", "--keys-only", web_key)
    await admin_mesh.wait_for(lambda: web_key in state.problems, "the held service")
    assert f"{prefix}routes/shop/front" in state.routes
    code, out, err = await meshctl("errors", "-o", "json", *admin)
    assert {e["key"] for e in json.loads(out)["errors"]} == {
        web_key,
        f"{prefix}routes/shop/front",
    }
