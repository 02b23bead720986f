"""Admin API acceptance with a real Envoy: a TTL-registered endpoint leaves Envoy's
endpoints by itself; a route Envoy NACKs shows NACKED with Envoy's message in
``meshctl proxy-status``, and SYNCED after a fix."""

from __future__ import annotations

import asyncio
import json
import time

from integration.harness import EnvoyProcess, free_port
from tests.support.fixtures_admin import AdminMesh, entry, seed
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.meshctl import meshctl
from tests.support.nack import serve_rejected_route
from tests.support.wait import eventually
from xds_server.admin.api import admin_pb2 as pb
from xds_server.cli.bootstrap import bootstrap


async def _mesh_with_envoy(
    admin_mesh: AdminMesh, envoy_factory: EnvoyFactory, backend_port: int
) -> EnvoyProcess:
    await seed(
        admin_mesh.stub,
        [
            entry(pb.KIND_SERVICE, "web", {"port": backend_port}, ns="shop"),
            entry(
                pb.KIND_ROUTE,
                "front",
                {
                    "listener": "public",
                    "match": {"prefix": "/"},
                    "destinations": [{"service": "web", "weight": 100}],
                },
                ns="shop",
            ),
            entry(pb.KIND_LISTENER, "public", {"address": "127.0.0.1", "port": free_port()}),
        ],
    )
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: bool(state.listeners) and bool(state.routes), "config")
    boot = bootstrap("gw-1", "gateway", xds_port=admin_mesh.app.xds_port, admin_port=0)
    return await asyncio.to_thread(envoy_factory, boot)


def _hosts(envoy: EnvoyProcess, cluster: str) -> set[str]:
    _, text = envoy.admin_get("/clusters")
    return {
        line.split("::")[1]
        for line in text.splitlines()
        if line.startswith(f"{cluster}::") and line.count("::") >= 3 and ":" in line.split("::")[1]
    }


async def test_ttl_endpoint_leaves_envoy_when_keepalives_stop(
    admin_mesh: AdminMesh, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> None:
    backend = backend_factory("web-1")
    envoy = await _mesh_with_envoy(admin_mesh, envoy_factory, backend.port)
    reg = await admin_mesh.stub.RegisterEndpoint(
        pb.RegisterEndpointRequest(
            namespace="shop",
            service="web",
            id="web-1",
            spec=entry(0, "x", {"address": "127.0.0.1"}).spec,
            ttl_seconds=2,
        )
    )
    address = f"127.0.0.1:{backend.port}"
    await eventually(
        lambda: _hosts(envoy, "web.shop"),
        f"{address} in Envoy",
        10,
        until=lambda hosts: address in hosts,
        blocking=True,
    )
    # Kept alive for longer than its TTL: it stays.
    for _ in range(8):
        await asyncio.sleep(0.5)
        await admin_mesh.stub.KeepAlive(pb.KeepAliveRequest(lease=reg.lease))
    assert address in await asyncio.to_thread(_hosts, envoy, "web.shop")
    stopped = time.monotonic()
    await eventually(
        lambda: _hosts(envoy, "web.shop"),
        f"the dead instance {address} to leave Envoy",
        5,
        until=lambda hosts: address not in hosts,
        blocking=True,
    )
    gone_after = time.monotonic() - stopped
    print(f"\nTTL 2 s endpoint left Envoy {gone_after:.2f} s after its last keep-alive")
    assert await admin_mesh.registry.get(reg.entry.key) is None


async def _proxy_rds(admin_mesh: AdminMesh) -> dict[str, str]:
    code, out, err = await meshctl("proxy-status", "-o", "json", "--admin", admin_mesh.address)
    assert code == 0, err
    proxies = json.loads(out)["proxies"]
    if not proxies:
        return {}
    rds = {t["type"]: t for t in proxies[0]["types"]}["RDS"]
    return {"state": rds["state"], "error": rds.get("error", "")}


def _synced(rds: dict[str, str]) -> bool:
    return rds.get("state") == "SYNCED"


async def test_nacked_route_shows_in_proxy_status_until_fixed(
    admin_mesh: AdminMesh, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> None:
    backend = backend_factory("web-1")
    envoy = await _mesh_with_envoy(admin_mesh, envoy_factory, backend.port)
    app = admin_mesh.app
    await eventually(lambda: _proxy_rds(admin_mesh), "RDS SYNCED", 10, until=_synced, interval=0.1)

    # A route configuration Envoy must refuse, served as a translation bug would serve it.
    serve_rejected_route(app)

    rds = await eventually(
        lambda: _proxy_rds(admin_mesh),
        "the NACK shown",
        10,
        until=lambda rds: rds.get("state") == "NACKED",
        interval=0.1,
    )
    assert "(unclosed" in rds["error"], rds  # Envoy's own message
    code, out, _ = await meshctl("proxy-status", "--admin", admin_mesh.address)
    assert "NACKED" in out and "gw-1 RDS NACKED:" in out
    rejected = await asyncio.to_thread(envoy.stats, r"rds\..*update_rejected")
    assert sum(rejected.values()) >= 1, rejected  # Envoy itself counted the rejection

    # The fix: the route is translated again (a new timeout, applied with meshctl), and
    # the proxy gets a configuration it accepts.
    fixed = {
        "kind": "Route",
        "namespace": "shop",
        "name": "front",
        "spec": {
            "listener": "public",
            "match": {"prefix": "/"},
            "destinations": [{"service": "web", "weight": 100}],
            "timeout_ms": 2500,
        },
    }
    code, _, err = await meshctl(
        "apply", "-f", "-", "--admin", admin_mesh.address, stdin=json.dumps(fixed)
    )
    assert code == 0, err
    rds = await eventually(
        lambda: _proxy_rds(admin_mesh), "RDS SYNCED after the fix", 10, until=_synced, interval=0.1
    )
    assert rds["error"] == ""
