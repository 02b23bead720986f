"""GetHealth, GetTopology, GetRecommendations, GetServiceMetrics and health events over the
real admin API.

A real meshd (``admin_mesh``: real etcd, MeshApp, admin gRPC server) with a registry
seeded through the API. Health and load are fed through the real entry points the HDS
and LRS servicers use (``app.health.connect`` / ``report``, ``app.topology.report``),
with Envoy's own message types, so no Envoy is needed to get known verdicts and rates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from tests.support.fixtures_admin import AdminMesh, bearer
from tests.support.health_feed import CHECKERS, feed_load, report, seed_mesh
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import OPEN
from xds_server.admin.health_topology import (
    get_health,
    get_recommendations,
    get_service_metrics,
    get_topology,
)


def statuses(svc: pb.ServiceHealth) -> dict[str, int]:
    return {e.id: e.status for e in svc.endpoints}


async def test_get_health_statuses_zones_and_filters(admin_mesh: AdminMesh) -> None:
    await seed_mesh(admin_mesh)
    report(admin_mesh.app, {"ep-0": True, "ep-1": False, "db-0": True})
    stub = admin_mesh.stub

    resp = await stub.GetHealth(pb.GetHealthRequest(service="web", namespace="shop"))
    (web,) = resp.services
    assert (web.namespace, web.name, web.healthy, web.total) == ("shop", "web", 1, 4)
    assert statuses(web) == {
        "ep-0": pb.HEALTH_STATUS_HEALTHY,
        "ep-1": pb.HEALTH_STATUS_UNHEALTHY,
        "ep-2": pb.HEALTH_STATUS_UNKNOWN,  # probed, nobody reported yet
        "ep-3": pb.HEALTH_STATUS_DRAINING,
    }
    assert [(z.zone, z.healthy, z.total) for z in web.zones] == [
        ("zone-a", 1, 2),
        ("zone-b", 0, 2),
    ]
    ep0, ep1, _, ep3 = web.endpoints
    assert list(ep0.checkers) == list(CHECKERS) and (
        ep0.healthy_reports,
        ep0.unhealthy_reports,
    ) == (
        3,
        0,
    )
    assert (ep1.healthy_reports, ep1.unhealthy_reports) == (0, 3)
    assert list(ep3.checkers) == []  # draining endpoints are not probed
    assert ep0.address == "127.0.0.1" and ep0.zone == "zone-a"
    assert web.check_mode == "hds" and not web.all_unhealthy

    same = await stub.GetHealth(pb.GetHealthRequest(service="shop/web"))
    assert same == resp
    every = await stub.GetHealth(pb.GetHealthRequest())
    assert [(s.namespace, s.name, s.check_mode) for s in every.services] == [
        ("ops", "db", "hds"),
        ("shop", "api", "none"),
        ("shop", "web", "hds"),
    ]
    assert statuses(every.services[1]) == {"api-0": pb.HEALTH_STATUS_UNKNOWN}
    shop = await stub.GetHealth(pb.GetHealthRequest(namespace="shop"))
    assert [s.name for s in shop.services] == ["api", "web"]

    async def code_of(req: pb.GetHealthRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetHealth(req)
        return err.value.code(), err.value.details() or ""

    code, details = await code_of(pb.GetHealthRequest(service="nope", namespace="shop"))
    assert code == grpc.StatusCode.NOT_FOUND and "shop/nope" in details
    code, details = await code_of(pb.GetHealthRequest(service="a/b/c"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "service" in details
    code, details = await code_of(pb.GetHealthRequest(service="shop/web", namespace="ops"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "contradicts" in details
    code, details = await code_of(pb.GetHealthRequest(service="Web"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DNS-1123" in details


async def test_health_transitions_and_panic_are_watch_events(admin_mesh: AdminMesh) -> None:
    await seed_mesh(admin_mesh)
    app, prefix = admin_mesh.app, admin_mesh.prefix
    call = admin_mesh.stub.Watch(pb.WatchRequest(types=[pb.EVENT_TYPE_HEALTH]))
    await call.initial_metadata()  # subscribed from here on

    async def next_events(n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            ev = await asyncio.wait_for(call.read(), 10)
            assert isinstance(ev, pb.WatchResponse) and ev.type == pb.EVENT_TYPE_HEALTH
            out.append((ev.key.removeprefix(prefix), ev.message))
        return out

    report(app, {"ep-0": True, "ep-1": True, "ep-2": True})
    # The first checker's report already makes a majority of the fresh reports (1 of 1).
    assert await next_events(3) == [
        (
            f"endpoints/shop/web/ep-{i}",
            f"shop/web/ep-{i} UNKNOWN -> HEALTHY (shop/web: {n}/4 healthy)",
        )
        for i, n in ((0, 3), (1, 3), (2, 3))
    ]
    report(app, {"ep-0": False, "ep-1": False, "ep-2": False})
    events = await next_events(4)
    # Two of three checkers saying UNHEALTHY turn each verdict (the third is a tie-break).
    assert events[:3] == [
        (
            f"endpoints/shop/web/ep-{i}",
            f"shop/web/ep-{i} HEALTHY -> UNHEALTHY (shop/web: 0/4 healthy)",
        )
        for i in range(3)
    ]
    assert events[3][0] == "services/shop/web"
    assert "every endpoint is UNHEALTHY" in events[3][1] and "panic" in events[3][1]
    (web,) = (await admin_mesh.stub.GetHealth(pb.GetHealthRequest(service="shop/web"))).services
    assert web.all_unhealthy and web.healthy == 0

    report(app, {"ep-0": True})
    assert await next_events(2) == [
        ("endpoints/shop/web/ep-0", "shop/web/ep-0 UNHEALTHY -> HEALTHY (shop/web: 1/4 healthy)"),
        ("services/shop/web", "shop/web: no longer all UNHEALTHY (panic over)"),
    ]
    call.cancel()


async def test_topology_and_recommendations(admin_mesh: AdminMesh) -> None:
    await seed_mesh(admin_mesh)
    feed_load(admin_mesh.app)
    stub = admin_mesh.stub
    topo = await stub.GetTopology(pb.GetTopologyRequest(window_seconds=30))
    assert topo.window_seconds == 30
    assert [(n.id, n.kind) for n in topo.nodes] == [
        ("gateway", pb.NODE_KIND_PROXY_GROUP),
        ("ops/db", pb.NODE_KIND_SERVICE),
        ("shop/api", pb.NODE_KIND_SERVICE),
        ("shop/web", pb.NODE_KIND_SERVICE),
    ]
    edges = {
        (e.source, e.destination): (e.rps, round(e.error_rate, 3), e.allowed, e.idle)
        for e in topo.edges
    }
    assert edges == {
        ("gateway", "ops/db"): (5.0, 0.0, True, False),
        ("gateway", "shop/api"): (0.0, 0.0, True, True),  # allowed, no traffic: idle
        ("gateway", "shop/web"): (20.0, 0.1, True, False),
        ("shop/web", "shop/api"): (2.0, 0.0, False, False),  # traffic no route allows
    }
    (web,) = [e for e in topo.edges if e.destination == "shop/web"]
    # By endpoint: only those that carried load (ep-2's empty row is no series).
    assert [(ep.subset, ep.endpoint, ep.rps, ep.error_rate) for ep in web.endpoints] == [
        ("", "127.0.0.1:9001", 12.0, 0.0),
        ("", "127.0.0.1:9002", 8.0, 0.25),
    ]
    default = await stub.GetTopology(pb.GetTopologyRequest())
    assert default.window_seconds == 60 and len(default.edges) == 4
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetTopology(pb.GetTopologyRequest(window_seconds=100_000))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "window_seconds: must be at most 300" in (err.value.details() or "")

    recs = await stub.GetRecommendations(pb.GetRecommendationsRequest(window_seconds=30))
    assert recs.window_seconds == 30
    got = {
        f"{s.namespace}/{s.name}": (
            s.scaling.observed_rps,
            s.scaling.target_rps_per_endpoint,
            s.scaling.current_endpoints,
            s.scaling.recommended_endpoints,
            s.scaling.action,
        )
        for s in recs.services
    }
    assert got == {
        "ops/db": (5.0, 100, 1, 1, pb.SCALING_ACTION_OK),
        # 20 rps at 5 per endpoint: 4 endpoints; 3 are not draining.
        "shop/web": (20.0, 5, 3, 4, pb.SCALING_ACTION_SCALE_UP),
    }


async def test_viewer_of_another_namespace_sees_nothing_of_it(
    admin_mesh_tokens: AdminMesh,
) -> None:
    mesh = admin_mesh_tokens
    await seed_mesh(mesh, "edit-all")
    report(mesh.app, {"ep-0": True, "db-0": True})
    feed_load(mesh.app)
    stub, viewer = mesh.stub, bearer("view-shop")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetHealth(pb.GetHealthRequest(service="ops/db"), metadata=viewer)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "health/ops/db: namespace 'ops' is outside ['shop']" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetHealth(pb.GetHealthRequest(namespace="ops"), metadata=viewer)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    seen = await stub.GetHealth(pb.GetHealthRequest(), metadata=viewer)
    assert [f"{s.namespace}/{s.name}" for s in seen.services] == ["shop/api", "shop/web"]
    every = await stub.GetHealth(pb.GetHealthRequest(), metadata=bearer("edit-all"))
    assert len(every.services) == 3  # the filter, not an empty registry, hid ops/db

    topo = await stub.GetTopology(pb.GetTopologyRequest(), metadata=viewer)
    assert [n.id for n in topo.nodes] == ["gateway", "shop/api", "shop/web"]
    assert all("ops/" not in e.source + e.destination for e in topo.edges)
    assert len(topo.edges) == 3
    recs = await stub.GetRecommendations(pb.GetRecommendationsRequest(), metadata=viewer)
    assert [s.name for s in recs.services] == ["web"]
    red = await stub.GetServiceMetrics(pb.GetServiceMetricsRequest(), metadata=viewer)
    assert [f"{s.namespace}/{s.name}" for s in red.services] == ["shop/api", "shop/web"]
    for req, where in (
        (pb.GetServiceMetricsRequest(service="ops/db"), "metrics/ops/db"),
        (pb.GetServiceMetricsRequest(namespace="ops"), "metrics/ops"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetServiceMetrics(req, metadata=viewer)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, req
        details = err.value.details() or ""
        assert f"{where}: namespace 'ops' is outside ['shop']" in details, details
    every_red = await stub.GetServiceMetrics(
        pb.GetServiceMetricsRequest(), metadata=bearer("edit-all")
    )
    assert len(every_red.services) == 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetTopology(pb.GetTopologyRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Health events of ops/db do not reach a shop viewer; shop's do.
    call = stub.Watch(pb.WatchRequest(types=[pb.EVENT_TYPE_HEALTH]), metadata=viewer)
    await call.initial_metadata()
    report(mesh.app, {"db-0": False})
    report(mesh.app, {"ep-1": True})
    ev = await asyncio.wait_for(call.read(), 10)
    assert isinstance(ev, pb.WatchResponse)
    assert ev.key == f"{mesh.prefix}endpoints/shop/web/ep-1", ev
    call.cancel()
    (db,) = (
        await stub.GetHealth(pb.GetHealthRequest(service="ops/db"), metadata=bearer("edit-all"))
    ).services
    assert statuses(db) == {"db-0": pb.HEALTH_STATUS_UNHEALTHY}  # it did change


async def test_service_metrics_red_per_service_and_endpoint(admin_mesh: AdminMesh) -> None:
    await seed_mesh(admin_mesh)
    stub = admin_mesh.stub
    before = await stub.GetServiceMetrics(pb.GetServiceMetricsRequest())
    # Every registered service is listed, at zero before any load.
    assert [(s.namespace, s.name, s.rps) for s in before.services] == [
        ("ops", "db", 0.0),
        ("shop", "api", 0.0),
        ("shop", "web", 0.0),
    ]
    feed_load(admin_mesh.app)
    resp = await stub.GetServiceMetrics(pb.GetServiceMetricsRequest(window_seconds=30))
    assert resp.window_seconds == 30
    got = {
        f"{s.namespace}/{s.name}": (s.rps, s.error_rps, round(s.error_rate, 3), s.in_flight)
        for s in resp.services
    }
    assert got == {
        "ops/db": (5.0, 0.0, 0.0, 0),
        "shop/api": (2.0, 0.0, 0.0, 0),  # sidecar traffic counts, allowed or not
        "shop/web": (20.0, 2.0, 0.1, 0),
    }
    # LRS carries no latency: the duration is absent, not a made-up 0.
    assert not any(s.HasField("duration_ms") for s in resp.services)
    (web,) = (
        await stub.GetServiceMetrics(pb.GetServiceMetricsRequest(service="web", namespace="shop"))
    ).services
    assert [(ep.endpoint, ep.rps, ep.error_rate) for ep in web.endpoints] == [
        ("127.0.0.1:9001", 12.0, 0.0),
        ("127.0.0.1:9002", 8.0, 0.25),
    ]
    ops = await stub.GetServiceMetrics(pb.GetServiceMetricsRequest(namespace="ops"))
    assert [s.name for s in ops.services] == ["db"]
    for req, code, words in (
        (pb.GetServiceMetricsRequest(service="shop/nope"), grpc.StatusCode.NOT_FOUND, "not found"),
        (
            pb.GetServiceMetricsRequest(window_seconds=301),
            grpc.StatusCode.INVALID_ARGUMENT,
            "window_seconds: must be at most 300",
        ),
        (
            pb.GetServiceMetricsRequest(service="a/b/c"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must be 'name' or 'namespace/name'",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetServiceMetrics(req)
        assert err.value.code() == code and words in (err.value.details() or ""), req


async def test_edge_and_endpoint_metrics_at_scrape_time(admin_mesh: AdminMesh) -> None:
    """meshd's /metrics registry: every edge of the graph, idle only for allowed ones, and
    per-endpoint series only for endpoints that carried load."""
    await seed_mesh(admin_mesh)
    feed_load(admin_mesh.app)
    registry = admin_mesh.app.metrics.registry

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("meshd_edge_idle", source="gateway", destination="shop/api") == 1.0
    assert value("meshd_edge_idle", source="gateway", destination="shop/web") == 0.0
    assert value("meshd_edge_idle", source="shop/web", destination="shop/api") == 0.0
    # shop/web's sidecar reports db.ops with no traffic and no route: no edge, no series.
    assert value("meshd_edge_idle", source="shop/web", destination="ops/db") is None
    labels = {"service": "shop/web", "mesh_service": "web.shop", "subset": ""}
    assert value("meshd_endpoint_requests_per_second", endpoint="127.0.0.1:9001", **labels) == 12
    assert value("meshd_endpoint_error_ratio", endpoint="127.0.0.1:9002", **labels) == 0.25
    assert value("meshd_endpoint_in_flight_requests", endpoint="127.0.0.1:9002", **labels) == 0
    assert value("meshd_endpoint_requests_per_second", endpoint="127.0.0.1:9003", **labels) is None
    names = {
        s.labels["endpoint"]
        for m in registry.collect()
        if m.name == "meshd_endpoint_requests_per_second"
        for s in m.samples
    }
    assert names == {"127.0.0.1:9001", "127.0.0.1:9002"}


def test_without_health_or_topology_the_calls_say_unavailable() -> None:
    """A servicer built without them (older wiring) answers UNAVAILABLE, not INTERNAL."""
    calls: list[Callable[[], object]] = [
        lambda: get_health(None, OPEN, pb.GetHealthRequest()),
        lambda: get_topology(None, OPEN, pb.GetTopologyRequest()),
        lambda: get_recommendations(None, OPEN, pb.GetRecommendationsRequest()),
        lambda: get_service_metrics(None, OPEN, pb.GetServiceMetricsRequest()),
    ]
    for call in calls:
        with pytest.raises(Exception) as err:
            call()
        assert getattr(err.value, "code", None) == grpc.StatusCode.UNAVAILABLE
