"""Two meshd replicas on one etcd under load (issue 25): one view from either, a kill -9
that drops nothing, and a rolling restart of both.

Real etcd, two meshd processes, two real Envoys whose ADS cluster lists both replicas
(one SotW, one Delta), 200 requests/s through them while a route changes every second:

- ``meshctl proxy-status``, ``health`` and ``topology`` against either replica list both
  proxies (with the replica that holds each), the same verdicts and the same edges;
- ``kill -9`` of the replica holding a proxy: no request fails, its proxies are SYNCED on
  the survivor within 2 s, and nothing they already held is sent again (Envoy's own
  counters of CDS, LDS and EDS responses do not move, no RDS update is a no-op; the
  versions the survivor shows are those they held);
- then every replica restarted in turn (SIGTERM, start again), the upgrade procedure of
  docs/ha.md: no request fails, the proxies follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_scale import Meshd
from integration.harness import EnvoyProcess, free_port, http_get
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.paced import PacedCallers
from tests.support.replica_mesh import (
    REPORT_INTERVAL_MS,
    all_synced,
    envoy_bootstrap,
    proxies,
    replica_id,
    start_replica,
    view,
    xds_updates,
)
from tests.support.wait import eventually
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.api import admin_pb2_grpc

FAILOVER_WITHIN = 2.0
"""Seconds from a replica's death to its proxies SYNCED on the survivor (the issue's)."""
RATE = 200.0


def registry(ports: dict[str, int]) -> dict[str, Any]:
    health = {"path": "/health", "interval_ms": REPORT_INTERVAL_MS, "timeout_ms": 500}
    return {
        "services/default/web": {
            "protocol": "http",
            "port": ports["v1"],
            "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}},
            "health_check": {**health, "healthy_threshold": 1, "unhealthy_threshold": 2},
        },
        "endpoints/default/web/v1-0": {
            "address": "127.0.0.1",
            "port": ports["v1"],
            "labels": {"version": "v1"},
        },
        "endpoints/default/web/v2-0": {
            "address": "127.0.0.1",
            "port": ports["v2"],
            "labels": {"version": "v2"},
        },
        "listeners/edge-a": {"address": "127.0.0.1", "port": ports["a"], "nodes": ["edge-a"]},
        "listeners/edge-b": {"address": "127.0.0.1", "port": ports["b"], "nodes": ["edge-b"]},
        "routes/default/web-split": route(90),
    }


def route(v1: int) -> dict[str, Any]:
    return {
        "listener": "edge-*",
        "destinations": [
            {"service": "web", "subset": "v1", "weight": v1},
            {"service": "web", "subset": "v2", "weight": 100 - v1},
        ],
    }


@contextlib.asynccontextmanager
async def route_changes(etcd: EtcdRegistry) -> AsyncIterator[list[int]]:
    """The split route rewritten every second (90/10, 60/40, ...); yields the revisions."""
    revisions: list[int] = []

    async def run() -> None:
        for v1 in itertools.cycle((60, 90)):
            await asyncio.sleep(1.0)
            key = etcd.prefix + "routes/default/web-split"
            revisions.append(await etcd.put(key, json.dumps(route(v1)).encode()))

    task = asyncio.create_task(run())
    try:
        yield revisions
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def status_on(meshd: Meshd) -> dict[str, dict[str, Any]]:
    """GetProxyStatus of ``meshd`` alone (fast enough to poll every 50 ms)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{meshd.admin_port}") as channel:
        stub = admin_pb2_grpc.MeshAdminServiceStub(channel)  # type: ignore[no-untyped-call]
        resp = await stub.GetProxyStatus(
            pb.GetProxyStatusRequest(), metadata=(("x-mesh-replica-local", "1"),), timeout=2
        )
    out = {}
    for p in resp.proxies:
        types = {
            t.type: (pb.SyncState.Name(t.state).removeprefix("SYNC_STATE_"), t.acked_version)
            for t in p.types
        }
        out[p.node_id] = {"replica": p.replica, "types": types}
    return out


async def moved_within(
    survivor: Meshd, nodes: set[str], since: float, what: str
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Seconds from ``since`` until every node in ``nodes`` is SYNCED on ``survivor``."""
    seen = await eventually(
        lambda: status_on(survivor),
        what,
        10,
        interval=0.05,
        until=lambda s: all(n in s and all_synced(s[n]) for n in nodes),
    )
    return time.monotonic() - since, seen


async def same_view_from_both(replicas: list[Meshd], ids: dict[str, str]) -> bool:
    """proxy-status, health and topology (meshctl -o json) agree between the replicas and
    cover both proxies, their verdicts and their edges."""
    views = []
    for meshd in replicas:
        status = proxies(await view(meshd, "proxy-status"))
        assert set(status) == {"edge-a-1", "edge-b-1"}, status
        assert {e["replica"] for e in status.values()} <= set(ids.values())
        health = await view(meshd, "health", "web")
        verdicts = {
            (s["service"], e["id"]): e["status"] for s in health["services"] for e in s["endpoints"]
        }
        topology = await view(meshd, "topology")
        edges = {(e["source"], e["destination"]): e["rps"] > 0 for e in topology["edges"]}
        views.append(({k: v["replica"] for k, v in status.items()}, verdicts, edges))
    assert views[0] == views[1], views
    _, verdicts, edges = views[0]
    assert set(verdicts.values()) == {"HEALTHY"}, verdicts
    assert edges == {("edge-a", "default/web"): True, ("edge-b", "default/web"): True}, edges
    return True


async def test_kill_one_replica_then_restart_each_under_load(
    etcd: EmbeddedEtcd,
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    backend_factory: BackendFactory,
) -> None:
    started = time.monotonic()
    ports = {
        "v1": int(backend_factory("v1").url.rstrip("/").rsplit(":", 1)[1]),
        "v2": int(backend_factory("v2").url.rstrip("/").rsplit(":", 1)[1]),
        "a": free_port(),
        "b": free_port(),
    }
    client = EtcdRegistry(etcd.endpoint)
    replicas: dict[str, Meshd] = {}
    try:
        for key, value in registry(ports).items():
            revision = await client.put(client.prefix + key, json.dumps(value).encode())
        for name in ("m1", "m2"):
            replicas[name] = start_replica(etcd.endpoint, tmp_path, name)
        for meshd in replicas.values():
            await meshd.wait_ready(revision, timeout=30)
        ids = {name: await asyncio.to_thread(replica_id, m) for name, m in replicas.items()}
        both = list(replicas.values())
        envoys: dict[str, EnvoyProcess] = {}
        for node, cluster, delta in (("edge-a-1", "edge-a", False), ("edge-b-1", "edge-b", True)):
            bs = envoy_bootstrap(node, cluster, both, delta=delta)
            envoys[node] = await asyncio.to_thread(envoy_factory, bs, name=node)
        urls = [f"http://127.0.0.1:{ports[k]}/" for k in ("a", "b")]
        for url in urls:
            await eventually(
                lambda u=url: http_get(u)[0] == 200, f"{url} serving", 15, blocking=True
            )
        load = [
            PacedCallers(lambda u=url: http_get(u, timeout=5)[0], callers=2, rate=RATE / 4)
            for url in urls
        ]
        with load[0], load[1]:
            async with route_changes(client) as changes:
                # One view from either replica, once LRS and HDS reports are in.
                await eventually(
                    lambda: same_view_from_both(both, ids),
                    "the same view of both proxies, verdicts and edges from either replica",
                    20,
                    interval=0.5,
                    ignoring=(AssertionError,),
                )

                # kill -9 the replica that holds edge-a-1's ADS stream.
                status = proxies(await view(both[0], "proxy-status"))
                victim_id = status["edge-a-1"]["replica"]
                victim = next(n for n, i in ids.items() if i == victim_id)
                survivor = next(n for n in replicas if n != victim)
                moved = {n for n, e in status.items() if e["replica"] == victim_id}
                before = {n: xds_updates(envoys[n]) for n in envoys}
                held = {n: status[n]["types"] for n in moved}
                replicas[victim].proc.kill()
                killed = time.monotonic()
                took, after = await moved_within(
                    replicas[survivor], moved, killed, f"{sorted(moved)} SYNCED on {survivor}"
                )
                print(f"kill -9 {victim_id}: {sorted(moved)} SYNCED on the survivor in {took:.2f}s")
                await asyncio.sleep(1.5)  # (a re-sent config would have arrived by now)
                for node in moved:
                    for t in ("CDS", "EDS", "LDS"):
                        assert after[node]["types"][t][1] == held[node][t][1], (node, t)
                    assert after[node]["replica"] == ids[survivor]
                changed = {
                    n: {k: (v, xds_updates(envoys[n]).get(k)) for k, v in before[n].items()}
                    for n in envoys
                }
                resent = {
                    n: {k: v for k, v in c.items() if v[0] != v[1]} for n, c in changed.items()
                }
                assert resent == {n: {} for n in envoys}, resent
                assert took <= FAILOVER_WITHIN, f"{took:.2f}s > {FAILOVER_WITHIN}s"
                survivor_status = proxies(
                    await view(replicas[survivor], "proxy-status", whole=False)
                )
                assert {e["replica"] for e in survivor_status.values()} == {ids[survivor]}

                # Rolling restart: the killed one back, then each in turn (docs/ha.md).
                replicas[victim] = start_replica(
                    etcd.endpoint, tmp_path, f"{victim}-2", replicas[victim].xds_port
                )
                await replicas[victim].wait_ready(changes[-1], timeout=30)
                assert await asyncio.to_thread(replica_id, replicas[victim]) == ids[victim]
                for name in (survivor, victim):
                    other = next(n for n in replicas if n != name)
                    held_by = proxies(await view(replicas[other], "proxy-status"))
                    going = {n for n, e in held_by.items() if e["replica"] == ids[name]}
                    replicas[name].stop()  # SIGTERM: streams closed, lease revoked
                    stopped = time.monotonic()
                    took, _ = await moved_within(
                        replicas[other], going, stopped, f"{sorted(going)} on {other}"
                    )
                    print(f"restart {ids[name]}: {sorted(going)} SYNCED on {other} in {took:.2f}s")
                    assert took <= FAILOVER_WITHIN, f"{took:.2f}s > {FAILOVER_WITHIN}s"
                    replicas[name] = start_replica(
                        etcd.endpoint, tmp_path, f"{name}-3", replicas[name].xds_port
                    )
                    await replicas[name].wait_ready(changes[-1], timeout=30)
                # Both back: the whole mesh from either, as before.
                both = list(replicas.values())
                await eventually(
                    lambda: same_view_from_both(both, ids),
                    "the same view from either replica after the rolling restart",
                    20,
                    interval=0.5,
                    ignoring=(AssertionError,),
                )
                assert len(changes) >= 5, changes
        for paced in load:
            assert paced.rate >= RATE / 2 * 0.8, paced.rate
            assert paced.failed == [], paced.failed[:10]
        print(
            f"{sum(len(p.results) for p in load)} requests, none failed, "
            f"{len(changes)} route changes; test took {time.monotonic() - started:.1f}s"
        )
    finally:
        for meshd in replicas.values():
            meshd.stop()
        await client.close()
