"""Health over HDS with real etcd, real Envoys and real backends (issue 6, acceptance 1, 2).

Checks go out through HDS to a few proxies; the verdict reaches every proxy in EDS
(``eds_health_status`` in ``/clusters``), also the proxies that never probed the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from integration.harness import BackendProcess, EnvoyProcess
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.hds_mesh import INTERVAL_MS, Mesh, mesh_fixture, start_meshd  # noqa: F401  (fixture)
from tests.support.meshctl import meshctl
from tests.support.rig import Load
from tests.support.wait import eventually
from xds_server.app import MeshApp
from xds_server.cli.bootstrap import bootstrap
from xds_server.health.aggregate import Status

UNHEALTHY_THRESHOLD = 2
BUDGET = INTERVAL_MS / 1000 * UNHEALTHY_THRESHOLD + 2.0  # the bound, in seconds
# Checks read Envoys' /clusters (blocking HTTP): in a thread, every 100 ms.
POLL: dict[str, Any] = {"interval": 0.1, "blocking": True}


def web_service() -> dict[str, Any]:
    return {
        "port": 8080,
        "health_check": {
            "path": "/health",
            "interval_ms": INTERVAL_MS,
            "timeout_ms": 500,
            "healthy_threshold": 1,
            "unhealthy_threshold": UNHEALTHY_THRESHOLD,
        },
    }


async def seed_web(mesh: Mesh, ports: list[int]) -> None:
    await mesh.put("services/default/web", web_service())
    for i, port in enumerate(ports):
        await mesh.put(f"endpoints/default/web/ep-{i}", {"address": "127.0.0.1", "port": port})
    await mesh.put("listeners/public", {"address": "127.0.0.1", "port": mesh.listener_port})
    await mesh.put(
        "routes/default/web", {"listener": "public", "destinations": [{"service": "web"}]}
    )


async def start_envoys(
    factory: EnvoyFactory, app: MeshApp, n: int, prefix: str = "gw"
) -> list[EnvoyProcess]:
    def start(i: int) -> EnvoyProcess:
        bs = bootstrap(f"{prefix}-{i}", "gateway", xds_port=app.xds_port, admin_port=0)
        return factory(bs, name=f"{prefix}-{i}")

    return [await asyncio.to_thread(start, i) for i in range(n)]


def eds_health(envoy: EnvoyProcess, cluster: str = "web.default") -> dict[int, str]:
    """Port -> EDS health status of every host of ``cluster`` in this Envoy's /clusters."""
    out: dict[int, str] = {}
    for c in envoy.clusters_json().get("cluster_statuses", []):
        if c["name"] != cluster:
            continue
        for h in c.get("host_statuses", []):
            port = h["address"]["socket_address"]["port_value"]
            out[port] = h["health_status"].get("eds_health_status", "HEALTHY")
    return out


def all_show(envoys: list[EnvoyProcess], port: int, status: str) -> Callable[[], bool]:
    return lambda: all(eds_health(e).get(port) == status for e in envoys)


async def test_killed_backend_is_unhealthy_everywhere_within_budget_and_returns(
    mesh: Mesh, envoy_factory: EnvoyFactory
) -> None:
    backends = [BackendProcess(f"web-{i}") for i in range(3)]
    try:
        ports = [b.port for b in backends]
        await seed_web(mesh, ports)
        app = await start_meshd(mesh)
        envoys = await start_envoys(envoy_factory, app, 4)
        for port in ports:
            await eventually(
                all_show(envoys, port, "HEALTHY"), f"{port} HEALTHY in EDS", 15, **POLL
            )
        # With 4 proxies and 3 endpoints each endpoint is probed by 3 proxies, never all 4.
        probers = app.health.assignment()
        per_endpoint: dict[str, int] = {}
        for keys in probers.values():
            for key in keys:
                per_endpoint[key] = per_endpoint.get(key, 0) + 1
        assert per_endpoint == {f"default/web/ep-{i}": 3 for i in range(3)}, probers
        assert max(len(v) for v in probers.values()) <= 3  # fair share: ceil(3 * 3 / 4)
        load = Load(f"http://127.0.0.1:{mesh.listener_port}/").start()
        await asyncio.sleep(1.0)
        victim = backends[1]
        victim.proc.kill()  # kill -9: no goodbye
        victim.proc.wait()
        killed = time.monotonic()
        await eventually(
            all_show(envoys, ports[1], "UNHEALTHY"), "UNHEALTHY in every Envoy", BUDGET + 5, **POLL
        )
        took = time.monotonic() - killed
        print(f"killed backend UNHEALTHY in all 4 Envoys' EDS after {took:.2f}s (budget {BUDGET}s)")
        assert took <= BUDGET, f"{took:.2f}s > {BUDGET}s"
        # What people see: meshctl health (the real CLI over the admin API).
        code, out, err = await meshctl(
            "health", "web", "-o", "json", "--admin", f"127.0.0.1:{app.admin_port}"
        )
        assert code == 0, err
        (web,) = json.loads(out)["services"]
        assert {e["id"]: e["status"] for e in web["endpoints"]} == {
            "ep-0": "HEALTHY",
            "ep-1": "UNHEALTHY",
            "ep-2": "HEALTHY",
        }
        assert (web["healthy"], web["total"]) == (2, 3)
        # Endpoints a proxy did not probe are marked through EDS all the same.
        not_probing = [n for n, keys in probers.items() if "default/web/ep-1" not in keys]
        assert not_probing, "every proxy probed the victim: the spread is not working"
        # After the window the client sees (almost) no errors.
        ok0, failed0 = load.ok, len(load.failed)
        await asyncio.sleep(3.0)
        ok, failed = load.ok - ok0, len(load.failed) - failed0
        load.stop()
        print(f"after the window: {ok} ok, {failed} failed")
        assert ok > 50
        assert failed / (ok + failed) < 0.01, load.failed[-5:]
        # Restart on the same port: it comes back everywhere.
        backends[1] = BackendProcess("web-1", port=ports[1])
        restarted = time.monotonic()
        await eventually(all_show(envoys, ports[1], "HEALTHY"), "HEALTHY again", 15, **POLL)
        back = time.monotonic() - restarted
        print(f"restarted backend HEALTHY again after {back:.2f}s")
        # ...and the verdict is published in etcd for people and other tools.
        entry = await mesh.registry.get("/mesh/status/health/endpoints/default/web/ep-0")
        assert entry is not None and json.loads(entry.value)["status"] == "HEALTHY"
    finally:
        for b in backends:
            b.stop()


async def test_twenty_proxies_ten_endpoints_about_three_probes_per_interval(
    mesh: Mesh, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> None:
    backends = [backend_factory(f"b{i}") for i in range(10)]
    ports = [int(b.url.rsplit(":", 1)[1]) for b in backends]
    await seed_web(mesh, ports)
    app = await start_meshd(mesh)
    envoys = await start_envoys(envoy_factory, app, 20)
    await eventually(
        lambda: all(len(eds_health(e)) == 10 for e in envoys), "EDS in all 20 Envoys", 30, **POLL
    )
    # Every proxy has its HDS stream and its share of the probes.
    await eventually(lambda: len(app.health.local) == 20, "20 HDS streams", 15, **POLL)
    await asyncio.sleep(2 * INTERVAL_MS / 1000)  # the new clusters' first probes settle
    before = [b.stats()["health_checks"] for b in backends]
    window = 4.0
    await asyncio.sleep(window)
    after = [b.stats()["health_checks"] for b in backends]
    for e in envoys:  # short lifetimes: 20 Envoys weigh on 2 cores
        e.stop()
    per_interval = [
        (a - b) / (window * 1000 / INTERVAL_MS) for a, b in zip(after, before, strict=True)
    ]
    print("probes per interval per backend:", [round(x, 2) for x in per_interval])
    assert all(2.0 <= x <= 4.5 for x in per_interval), per_interval
    assert max(len(v) for v in app.health.assignment().values()) <= 2  # ceil(10 * 3 / 20)


async def test_two_replicas_on_one_etcd_agree(mesh: Mesh, envoy_factory: EnvoyFactory) -> None:
    backends = [BackendProcess(f"web-{i}") for i in range(3)]
    try:
        ports = [b.port for b in backends]
        await seed_web(mesh, ports)
        a, b = await start_meshd(mesh), await start_meshd(mesh)
        envoys = [
            *await start_envoys(envoy_factory, a, 1, "a"),
            *await start_envoys(envoy_factory, b, 1, "b"),
        ]
        # Each replica sees both proxies as checkers (its own and the other replica's).
        await eventually(
            lambda: a.health.monitor.checker_count() == 2, "a sees 2 checkers", 10, **POLL
        )
        await eventually(
            lambda: b.health.monitor.checker_count() == 2, "b sees 2 checkers", 10, **POLL
        )
        assert a.health.assignment() == b.health.assignment()
        for port in ports:
            await eventually(all_show(envoys, port, "HEALTHY"), "HEALTHY on both", 15, **POLL)
        backends[0].proc.kill()
        backends[0].proc.wait()
        await eventually(
            all_show(envoys, ports[0], "UNHEALTHY"), "UNHEALTHY on both", BUDGET + 3, **POLL
        )

        def verdicts(app: MeshApp) -> dict[str, Status]:
            (web,) = app.health.services("web")
            return {e.endpoint_id: e.status for e in web.endpoints}

        want = {"ep-0": Status.UNHEALTHY, "ep-1": Status.HEALTHY, "ep-2": Status.HEALTHY}
        await eventually(lambda: verdicts(a) == verdicts(b) == want, "replicas agree", 5, **POLL)
        # A replica that stops takes its proxies' reports with it (its lease is revoked).
        await b.stop(grace=0.2)
        mesh.apps.remove(b)
        await eventually(
            lambda: a.health.monitor.checker_count() == 1, "b's proxy forgotten", 10, **POLL
        )
    finally:
        for backend in backends:
            backend.stop()
