"""meshd's /metrics: real values after real pushes, convergence, stream sync state, and
the pure parts of Prometheus discovery of proxies (``/sd/envoy``)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2 as core_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.support.metrics import scrape
from tests.support.stream_mesh import BASE
from tests.support.tls_secrets import issue
from tests.support.wait import eventually
from tests.support.xds_client import running_meshd, sotw_client
from xds_server.metrics import Metrics
from xds_server.metrics_sd import ProxyTarget, RecentTargets, sd_document
from xds_server.resources import CLUSTER
from xds_server.server.ads import admin_address


async def test_metrics_after_pushes_and_a_rejected_entry() -> None:
    entries = {**BASE, "routes/default/bad": b'{"listener": "public", "wieght": 1}'}
    async with running_meshd(entries, metrics=True) as (_, app):
        async with sotw_client(app.xds_port, "gateway"):
            await asyncio.sleep(0.2)
            m = await asyncio.to_thread(scrape, app.metrics_port)
        assert (
            m[("meshd_connected_proxies", (("node_cluster", "gateway"), ("protocol", "sotw")))] == 1
        )
        assert m[("meshd_registry_revision", ())] == app.revision > 0
        assert m[("meshd_registry_rejected_entries", (("kind", "routes"),))] == 1
        for short in ("CDS", "EDS", "LDS", "RDS"):
            assert m[("meshd_xds_pushes_total", (("type", short),))] >= 1
            assert m[("meshd_xds_push_bytes_total", (("type", short),))] > 0
            assert ("meshd_xds_nacks_total", (("type", short),)) not in m or (
                m[("meshd_xds_nacks_total", (("type", short),))] == 0
            )
        assert m[("meshd_resources", (("type", "CDS"),))] == 3
        assert m[("meshd_translate_seconds_count", ())] >= 1
        assert ("meshd_registry_errors_total", ()) in m


async def test_convergence_watch_lag_and_sync_state_after_a_change() -> None:
    async with running_meshd(BASE, metrics=True) as (registry, app):
        async with sotw_client(app.xds_port, "gateway"):
            await asyncio.sleep(0.2)
            before = await asyncio.to_thread(scrape, app.metrics_port)
            await registry.put(
                registry.prefix + "endpoints/default/web/b",
                json.dumps({"address": "10.0.0.9", "labels": {"version": "v1"}}).encode(),
            )
            convergences = ("meshd_config_convergence_seconds_count", ())
            m = await eventually(
                lambda: scrape(app.metrics_port),
                "a convergence observed",
                10,
                until=lambda m: m.get(convergences, 0) > before.get(convergences, 0),
                blocking=True,
            )
        # The change converged once its one proxy ACKed the new endpoints: well under 10 s.
        assert 0 < m[("meshd_config_convergence_seconds_sum", ())] < 10
        assert m[("meshd_registry_watch_lag_seconds_count", ())] >= 1
        for short in ("CDS", "EDS", "LDS", "RDS"):
            key = (("node_cluster", "gateway"), ("state", "SYNCED"), ("type", short))
            assert m[("meshd_xds_proxy_types", key)] == 1
        assert m[("meshd_xds_oldest_unacked_push_seconds", (("node_cluster", "gateway"),))] == 0


async def test_a_proxy_that_never_acks_is_stale_and_ages() -> None:
    async with running_meshd(BASE, metrics=True) as (_, app):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}") as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
            first.node.id, first.node.cluster = "mute-1", "mute"
            call = stub.StreamAggregatedResources(_once_then_hang(first))
            await call.read()  # the CDS response, which this client never ACKs
            await asyncio.sleep(0.3)
            m = await asyncio.to_thread(scrape, app.metrics_port)
            call.cancel()
        key = (("node_cluster", "mute"), ("state", "STALE"), ("type", "CDS"))
        assert m[("meshd_xds_proxy_types", key)] == 1
        assert m[("meshd_xds_oldest_unacked_push_seconds", (("node_cluster", "mute"),))] >= 0.25


async def _once_then_hang(
    first: discovery_pb2.DiscoveryRequest,
) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
    yield first
    await asyncio.Event().wait()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _observed(metrics: Metrics) -> tuple[float, float, float]:
    count = metrics.registry.get_sample_value("meshd_config_convergence_seconds_count") or 0
    total = metrics.registry.get_sample_value("meshd_config_convergence_seconds_sum") or 0
    dropped = metrics.registry.get_sample_value("meshd_config_convergence_abandoned_total") or 0
    return count, total, dropped


def test_convergence_waits_for_the_last_proxy_open_at_the_change() -> None:
    clock = _Clock()
    metrics = Metrics(clock=clock)
    tracker = metrics.convergence
    a, b, late = object(), object(), object()
    tracker.opened(a, 1)
    tracker.opened(b, 1)
    tracker.changed(2, observed_at=100.0)
    tracker.opened(late, 2)  # connected after the change: fetches it, is not waited for
    clock.now = 100.5
    tracker.synced(a, 2)
    assert _observed(metrics) == (0, 0, 0)
    clock.now = 101.25
    tracker.synced(b, 3)  # in sync with a later generation covers this one too
    assert _observed(metrics) == (1, 1.25, 0)


def test_convergence_counts_a_disconnect_and_bounds_a_nacking_proxy() -> None:
    clock = _Clock()
    metrics = Metrics(clock=clock)
    tracker = metrics.convergence
    good, gone, nacking = object(), object(), object()
    for s in (good, gone, nacking):
        tracker.opened(s, 0)
    tracker.changed(1, observed_at=100.0)
    tracker.synced(good, 1)
    clock.now = 100.1
    tracker.gone(gone)
    assert _observed(metrics) == (0, 0, 0)  # ``nacking`` never ACKs generation 1
    for g in range(2, 2 + tracker.MAX_OUTSTANDING):
        tracker.changed(g, observed_at=clock.now)
        tracker.synced(good, g)
    assert _observed(metrics)[2] == 1  # generation 1 was given up, not kept forever
    tracker.gone(nacking)
    assert _observed(metrics)[0] == tracker.MAX_OUTSTANDING


def test_pacing_counts_only_proxies_that_keep_up() -> None:
    """waiting_in_step: a stream is counted once it has answered a push it was waited
    for, and only while it is behind on nothing older."""
    tracker = Metrics(clock=_Clock()).convergence
    good, silent, slow = object(), object(), object()
    for s in (good, silent, slow):
        tracker.opened(s, 0)
    tracker.changed(1, observed_at=0.0)
    assert (tracker.waiting(1), tracker.waiting_in_step(1)) == (3, 0)  # none answered yet
    tracker.synced(good, 1)
    tracker.synced(slow, 1)
    tracker.changed(2, observed_at=0.0)
    assert (tracker.waiting(2), tracker.waiting_in_step(2)) == (3, 2)  # not ``silent``
    tracker.synced(good, 2)
    tracker.changed(3, observed_at=0.0)
    # ``slow`` is still behind on 2: not waited for on 3; ``good`` is.
    assert (tracker.waiting(3), tracker.waiting_in_step(3)) == (3, 1)
    tracker.synced(slow, 3)  # caught up: counted again from the next push
    tracker.synced(good, 3)
    tracker.changed(4, observed_at=0.0)
    assert tracker.waiting_in_step(4) == 2
    tracker.gone(good)
    assert tracker.waiting_in_step(4) == 1


def test_admin_address_from_node_metadata() -> None:
    node = core_pb2.Node(id="n", cluster="c")
    assert admin_address(node, "ipv4:10.1.2.3:5555") is None
    node.metadata.update({"admin_port": 9901})
    assert admin_address(node, "ipv4:10.1.2.3:5555") == "10.1.2.3:9901"
    assert admin_address(node, "ipv6:[::1]:5555") == "[::1]:9901"
    node.metadata.update({"admin_host": "192.168.0.7"})
    assert admin_address(node, "ipv4:10.1.2.3:5555") == "192.168.0.7:9901"
    node.metadata.update({"admin_port": "9901"})  # not a number: not trusted
    assert admin_address(node, "ipv4:10.1.2.3:5555") is None


def test_sd_document_is_prometheus_http_sd() -> None:
    doc = sd_document(
        [
            ProxyTarget("127.0.0.1:9902", "b", "sidecar", "delta"),
            ProxyTarget("127.0.0.1:9901", "a", "gateway", "sotw"),
            ProxyTarget("127.0.0.1:9901", "a", "gateway", "sotw"),
        ]
    )
    assert [g["targets"] for g in doc] == [["127.0.0.1:9901"], ["127.0.0.1:9902"]]
    assert doc[0]["labels"] == {
        "__metrics_path__": "/stats/prometheus",
        "node_id": "a",
        "node_cluster": "gateway",
        "xds_protocol": "sotw",
    }


def test_convergence_waits_only_for_the_streams_a_change_concerns() -> None:
    """A change that woke no stream (nobody holds it) is not a convergence to wait for,
    and a stream it did not wake is not waited for: unrelated churn neither piles up
    generations nor makes every later ACK walk them."""
    clock = _Clock()
    metrics = Metrics(clock=clock)
    tracker = metrics.convergence
    holder, bystander = object(), object()
    tracker.opened(holder, 0)
    tracker.opened(bystander, 0)
    for g in range(1, 3 * tracker.MAX_OUTSTANDING):
        tracker.changed(g, observed_at=clock.now, keys=())  # unrelated churn
    assert _observed(metrics) == (0, 0, 0)
    g = 3 * tracker.MAX_OUTSTANDING
    tracker.changed(g, observed_at=100.0, keys=[holder])
    clock.now = 100.2
    tracker.synced(holder, g)
    count, total, dropped = _observed(metrics)
    assert (count, dropped) == (1, 0) and abs(total - 0.2) < 1e-9


async def test_a_scrape_by_name_skips_the_per_service_collectors() -> None:
    """``/metrics?name[]=...`` answers from the named series alone: the health and
    topology collectors (a few series per registered service, built at scrape time) are
    not run for other names, which is what makes polling one gauge cheap on a big
    registry, and they answer for their own."""
    async with running_meshd(BASE, metrics=True) as (_, app):
        ran: list[str] = []
        graph, counts = app.topology.graph, app.health.endpoint_counts

        def traced_graph(*args: object, **kw: object) -> object:
            ran.append("topology")
            return graph(*args, **kw)  # type: ignore[arg-type]

        def traced_counts() -> list[tuple[str, int, int]]:
            ran.append("health")
            return counts()

        app.topology.graph = traced_graph  # type: ignore[method-assign]
        app.health.endpoint_counts = traced_counts  # type: ignore[method-assign]
        url = f"http://127.0.0.1:{app.metrics_port}/metrics"

        def get(query: str = "") -> str:
            with urllib.request.urlopen(url + query, timeout=5) as r:
                return str(r.read().decode())

        some = await asyncio.to_thread(get, "?name[]=meshd_registry_revision")
        assert "meshd_registry_revision " in some
        assert "meshd_service_endpoints" not in some
        assert ran == []
        # Asked for by name, a scrape-time family is there (and only its collector runs).
        # A gateway with an LRS stream (set here by hand) has the edge its route allows.
        app.topology.sources["gw-1"] = "gateway"
        edges = await asyncio.to_thread(get, "?name[]=meshd_edge_idle")
        assert 'meshd_edge_idle{destination="default/web",source="gateway"} 1.0' in edges
        assert ran == ["topology"]
        ran.clear()
        whole = await asyncio.to_thread(get)
        assert 'meshd_service_endpoints{service="default/web",state="total"} 1.0' in whole
        assert sorted(ran) == ["health", "topology"]


def test_sd_keeps_a_disconnected_proxy_for_a_while_then_forgets_it() -> None:
    now = [100.0]
    recent = RecentTargets(lambda: now[0], keep_s=600)
    gw = ProxyTarget("127.0.0.1:9901", "gw-1", "gateway", "sotw")
    sc = ProxyTarget("127.0.0.1:9902", "sc-1", "sidecar", "delta")
    assert recent.targets([gw, sc]) == [gw, sc]
    now[0] += 300
    assert recent.targets([sc]) == [sc, gw]  # gw's stream closed: still scraped
    now[0] += 301
    assert recent.targets([sc]) == [sc]  # 601 s since gw was last connected
    assert recent.targets([gw, sc]) == [gw, sc]  # back


async def test_secret_expiry_gauge_follows_the_secrets_in_force() -> None:
    """``meshd_secret_expiry_timestamp_seconds{namespace,name}``: each certificate secret
    in force, its expiry (the one of its chain expiring first); an edit moves it, a
    deletion removes the series; a secret expiring within 7 days is not a rejected entry
    (it is in force, with a warning)."""
    soon = issue("soon.example", ("soon.example",), days=3)
    later = issue("later.example", ("later.example",), days=90)
    entries: dict[str, object] = {
        **BASE,
        "secrets/edge/soon": json.loads(soon.value()),
        "secrets/edge/ca": json.loads(later.ca_value()),
        "secrets/edge/keys": {"keys": {"alice": "k1"}},
    }
    gauge = "meshd_secret_expiry_timestamp_seconds"

    def series(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
        return {
            f"{dict(labels)['namespace']}/{dict(labels)['name']}": v
            for (name, labels), v in m.items()
            if name == gauge
        }

    async with running_meshd(entries, metrics=True) as (registry, app):
        m = await asyncio.to_thread(scrape, app.metrics_port)
        assert series(m) == {  # (an API-key secret has no certificate: no series)
            "edge/soon": int(soon.cert.not_valid_after_utc.timestamp()),
            "edge/ca": int(later.cert.not_valid_after_utc.timestamp()),
        }
        assert m[("meshd_registry_rejected_entries", (("kind", "secrets"),))] == 0
        await registry.put(registry.prefix + "secrets/edge/soon", later.value())
        await registry.delete(registry.prefix + "secrets/edge/ca")

        async def moved() -> bool:
            now = series(await asyncio.to_thread(scrape, app.metrics_port))
            return now == {"edge/soon": int(later.cert.not_valid_after_utc.timestamp())}

        await eventually(moved, "the gauge follows the edit and the deletion", 5)
