"""Re-warming on a stream that meshd has sent nothing yet.

After a meshd restart, an Envoy that holds the current config is sent nothing on its new
stream. The next change to a Service (Listener) makes Envoy re-warm the cluster (listener):
over SotW it asks for the endpoints (routes) again with a request that looks like an ACK
(and has no nonce: nothing was sent on this stream), over Delta it asks for nothing. Either
way the endpoints (routes) must arrive at once, not after Envoy's 15 s
``initial_fetch_timeout``. Pinned with real etcd and a real Envoy (SotW and Delta), and with
a real gRPC client for Listener -> routes: Envoy shares a route subscription between a
listener's old and new versions, so it does not show that case.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.rig import Rig
from tests.support.stream_mesh import BASE
from tests.support.wait import eventually
from tests.support.xds_client import RawAds, running_meshd, sotw_client
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

REWARM_WITHIN = 5.0
"""Seconds: far below Envoy's 15 s initial_fetch_timeout, far above a normal push."""


async def _restarted_and_sent_nothing(rig: Rig) -> None:
    await asyncio.to_thread(rig.counts, 20)
    await rig.restart_meshd(down_for=0.3)
    await asyncio.to_thread(
        rig.envoy.wait_for,
        lambda: (
            rig.envoy.stat("control_plane.connected_state") == 1
            and len(rig.app.streams.connections) == 1
            and len(next(iter(rig.app.streams.connections.values())).stream.types) == 4
        ),
        10,
        "envoy reconnected, all four types asked for",
    )
    (conn,) = rig.app.streams.connections.values()
    # The premise: every type was current on arrival, nothing was sent on the new stream.
    assert all(s.nonce == "" for s in conn.stream.types.values())
    assert {s.state for s in conn.stream.types.values()} == {"SYNCED"}


async def _settles(rig: Rig, done: Callable[[dict[str, int]], bool], what: str) -> float:
    """Seconds until Envoy's stats satisfy ``done`` (at most 20)."""
    start = time.monotonic()
    await eventually(
        rig.envoy.stats, what, 20, until=done, blocking=True, context=rig.envoy.log_tail
    )
    return time.monotonic() - start


async def test_changed_service_rewarms_at_once_after_a_restart(rig: Rig) -> None:
    await _restarted_and_sent_nothing(rig)
    modified = rig.envoy.stat("cluster_manager.cluster_modified") or 0
    web = {
        "protocol": "http",
        "port": rig.ports["v1"],
        "connect_timeout_ms": 750,
        "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}},
    }
    await asyncio.to_thread(rig.put, "services/default/web", web)
    took = await _settles(
        rig,
        lambda s: (
            s.get("cluster_manager.cluster_modified", 0) > modified
            and s.get("cluster_manager.warming_clusters") == 0
        ),
        "the changed clusters becoming active",
    )
    assert took < REWARM_WITHIN, f"clusters warmed for {took:.1f} s (initial_fetch_timeout)"
    counts = await asyncio.to_thread(rig.counts, 200)
    assert set(counts) == {"v1", "v2"}, counts
    assert rig.rejected() == {}


def _names(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    if resp.type_url == ENDPOINT:
        cla = endpoint_pb2.ClusterLoadAssignment
        return [cla.FromString(a.value).cluster_name for a in resp.resources]
    decode = {
        CLUSTER: cluster_pb2.Cluster,
        LISTENER: listener_pb2.Listener,
        ROUTE: route_pb2.RouteConfiguration,
    }[resp.type_url]
    return [decode.FromString(a.value).name for a in resp.resources]


async def test_sotw_rewarm_requests_are_answered_on_a_stream_sent_nothing() -> None:
    """A real gRPC client doing what Envoy does over SotW, for Cluster -> endpoints and
    Listener -> routes: the re-warm request repeats the names and version it holds, with
    no nonce, since nothing was sent on this stream."""
    async with running_meshd(BASE) as (registry, app):
        async with sotw_client(app.xds_port, "gateway", node_id="gw-old") as got:
            held = dict(got)  # what a proxy holds when meshd restarts
        names = {t: sorted(_names(held[t])) for t in (CLUSTER, LISTENER)}
        names[ENDPOINT], names[ROUTE] = names[CLUSTER], names[LISTENER]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}") as channel:
            ads = RawAds(channel)

            def ask(t: str, version: str, *, node: bool = False) -> None:
                names_ = [] if t in (CLUSTER, LISTENER) else names[t]
                req = discovery_pb2.DiscoveryRequest(
                    type_url=t, version_info=version, resource_names=names_
                )
                if node:
                    req.node.id, req.node.cluster = "gw-1", "gateway"
                ads.send(req)

            for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
                ask(t, held[t].version_info, node=t == CLUSTER)

            def sent_nothing() -> bool:
                conns = [c for c in app.streams.connections.values() if c.stream.node_id == "gw-1"]
                return bool(conns) and len(conns[0].stream.types) == 4

            await eventually(sent_nothing, "the new stream to ask for 4 types", 10, interval=0.02)
            (conn,) = [c for c in app.streams.connections.values() if c.stream.node_id == "gw-1"]
            assert all(s.nonce == "" for s in conn.stream.types.values())

            await registry.put(
                registry.prefix + "services/default/api",
                b'{"port": 9090, "connect_timeout_ms": 250}',
            )
            cds = await ads.read()
            assert cds.type_url == CLUSTER and "api.default" in _names(cds)
            ads.send(
                discovery_pb2.DiscoveryRequest(
                    type_url=CLUSTER, version_info=cds.version_info, response_nonce=cds.nonce
                )
            )
            ask(ENDPOINT, held[ENDPOINT].version_info)  # the re-warm of api.default
            eds = await ads.read(timeout=5)
            assert eds.type_url == ENDPOINT and _names(eds) == ["api.default"]

            await registry.put(registry.prefix + "listeners/inner", b'{"port": 10002}')
            lds = await ads.read()
            assert lds.type_url == LISTENER and "inner" in _names(lds)
            ads.send(
                discovery_pb2.DiscoveryRequest(
                    type_url=LISTENER, version_info=lds.version_info, response_nonce=lds.nonce
                )
            )
            ask(ROUTE, held[ROUTE].version_info)  # the re-warm of inner's routes
            rds = await ads.read(timeout=5)
            assert rds.type_url == ROUTE and _names(rds) == ["inner"]
            ads.call.cancel()
