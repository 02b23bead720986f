"""Whole-mesh answers joined from each replica's part (admin/replica_merge.py), the
replica record and id rules (admin/replicas.py), and the metadata a replica asks the
others with."""

from __future__ import annotations

import pytest

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.replica_merge import (
    merge_proxy_status,
    merge_recommendations,
    merge_service_metrics,
    merge_topology,
)
from xds_server.admin.replicas import (
    LOCAL_METADATA,
    ReplicaRecord,
    check_replica_id,
    forwarded,
)


def edge(
    src: str,
    dst: str,
    rps: float,
    err: float = 0.0,
    inflight: int = 0,
    *,
    allowed: bool = True,
    endpoints: tuple[pb.EndpointLoad, ...] = (),
) -> pb.TopologyEdge:
    idle = not (rps > 0 or inflight > 0)
    return pb.TopologyEdge(
        source=src,
        destination=dst,
        rps=rps,
        error_rate=err,
        in_flight=inflight,
        allowed=allowed,
        idle=idle,
        endpoints=list(endpoints),
    )


def test_topology_sums_each_edge_and_endpoint_over_the_replicas() -> None:
    a = pb.GetTopologyResponse(
        window_seconds=60,
        nodes=[
            pb.TopologyNode(id="default/web", kind=pb.NODE_KIND_SERVICE),
            pb.TopologyNode(id="gateway", kind=pb.NODE_KIND_PROXY_GROUP),
        ],
        edges=[
            edge(
                "gateway",
                "default/web",
                30.0,
                0.1,
                2,
                endpoints=(pb.EndpointLoad(subset="v1", endpoint="10.0.0.1:80", rps=30.0),),
            ),
            edge("gateway", "default/api", 0.0),  # allowed, idle here
        ],
    )
    b = pb.GetTopologyResponse(
        window_seconds=60,
        nodes=[
            pb.TopologyNode(id="default/web", kind=pb.NODE_KIND_SERVICE),
            pb.TopologyNode(id="edge", kind=pb.NODE_KIND_PROXY_GROUP),
        ],
        edges=[
            edge(
                "gateway",
                "default/web",
                10.0,
                0.5,
                1,
                endpoints=(
                    pb.EndpointLoad(subset="v1", endpoint="10.0.0.1:80", rps=5.0, error_rate=1.0),
                    pb.EndpointLoad(subset="v2", endpoint="10.0.0.2:80", rps=5.0),
                ),
            ),
            edge("gateway", "default/api", 4.0, allowed=True),
            edge("edge", "default/db", 1.0, allowed=False),  # observed, no route allows it
        ],
    )
    merged = merge_topology([a, b])
    assert merged.window_seconds == 60
    assert [(n.id, n.kind) for n in merged.nodes] == [
        ("default/web", pb.NODE_KIND_SERVICE),
        ("edge", pb.NODE_KIND_PROXY_GROUP),
        ("gateway", pb.NODE_KIND_PROXY_GROUP),
    ]
    by = {(e.source, e.destination): e for e in merged.edges}
    assert list(by) == [
        ("edge", "default/db"),
        ("gateway", "default/api"),
        ("gateway", "default/web"),
    ]
    web = by["gateway", "default/web"]
    assert (web.rps, web.in_flight, web.allowed, web.idle) == (40.0, 3, True, False)
    assert web.error_rate == pytest.approx((30 * 0.1 + 10 * 0.5) / 40)
    assert [(e.subset, e.endpoint, e.rps, e.error_rate) for e in web.endpoints] == [
        ("v1", "10.0.0.1:80", 35.0, pytest.approx(5 / 35)),
        ("v2", "10.0.0.2:80", 5.0, 0.0),
    ]
    api = by["gateway", "default/api"]
    assert (api.rps, api.idle, api.allowed) == (4.0, False, True)  # traffic on one replica
    db = by["edge", "default/db"]
    assert (db.allowed, db.idle) == (False, False)
    # One part alone is itself; nothing is nothing.
    assert [(e.destination, e.rps, e.idle) for e in merge_topology([a]).edges] == [
        ("default/api", 0.0, True),
        ("default/web", 30.0, False),
    ]
    assert list(merge_topology([]).edges) == []


def test_an_edge_idle_on_every_replica_stays_idle() -> None:
    parts = [pb.GetTopologyResponse(edges=[edge("gw", "default/web", 0.0)]) for _ in range(2)]
    (e,) = merge_topology(parts).edges
    assert (e.rps, e.idle, e.allowed) == (0.0, True, True)


def test_service_metrics_sum_per_service_and_endpoint() -> None:
    def metrics(rps: float, err: float, inflight: int) -> pb.GetServiceMetricsResponse:
        return pb.GetServiceMetricsResponse(
            window_seconds=30,
            services=[
                pb.ServiceMetrics(
                    namespace="shop",
                    name="web",
                    rps=rps,
                    error_rps=rps * err,
                    error_rate=err,
                    in_flight=inflight,
                    endpoints=[pb.EndpointLoad(endpoint="10.0.0.1:80", rps=rps)],
                ),
                pb.ServiceMetrics(namespace="shop", name="idle"),
            ],
        )

    merged = merge_service_metrics([metrics(10, 0.2, 1), metrics(30, 0.0, 2)])
    assert merged.window_seconds == 30
    web, idle = sorted(merged.services, key=lambda s: s.name != "web")
    assert (web.rps, web.error_rps, web.in_flight) == (40.0, 2.0, 3)
    assert web.error_rate == pytest.approx(0.05)
    assert [(e.endpoint, e.rps) for e in web.endpoints] == [("10.0.0.1:80", 40.0)]
    assert (idle.rps, idle.error_rate) == (0.0, 0.0)
    assert not web.HasField("duration_ms")


def test_recommendations_need_endpoints_for_the_summed_load() -> None:
    def rec(rps: float) -> pb.GetRecommendationsResponse:
        scaling = pb.Scaling(
            observed_rps=rps,
            target_rps_per_endpoint=100,
            current_endpoints=2,
            recommended_endpoints=1,
            action=pb.SCALING_ACTION_SCALE_DOWN,
        )
        return pb.GetRecommendationsResponse(
            window_seconds=60,
            services=[pb.ServiceRecommendation(namespace="shop", name="web", scaling=scaling)],
        )

    # Each replica alone sees 90 rps (one endpoint would do); together 270 need three.
    (merged,) = merge_recommendations([rec(90), rec(90), rec(90)]).services
    assert merged.scaling.observed_rps == 270
    assert merged.scaling.recommended_endpoints == 3
    assert merged.scaling.action == pb.SCALING_ACTION_SCALE_UP
    (same,) = merge_recommendations([rec(120), rec(80)]).services
    assert (same.scaling.recommended_endpoints, same.scaling.action) == (2, pb.SCALING_ACTION_OK)


def test_proxy_status_lists_every_part_by_node_then_replica() -> None:
    def part(*rows: tuple[str, str]) -> pb.GetProxyStatusResponse:
        return pb.GetProxyStatusResponse(
            proxies=[pb.ProxyStatus(node_id=n, replica=r) for n, r in rows]
        )

    merged = merge_proxy_status([part(("gw-2", "a"), ("gw-1", "a")), part(("gw-1", "b"))])
    assert [(p.node_id, p.replica) for p in merged] == [("gw-1", "a"), ("gw-1", "b"), ("gw-2", "a")]


def test_a_replica_asks_the_others_with_the_callers_token_only() -> None:
    md = (("authorization", "Bearer t0k3n"), ("user-agent", "x"), ("x-other", b"y"))
    assert forwarded(md) == (("authorization", "Bearer t0k3n"), (LOCAL_METADATA, "1"))
    assert forwarded(None) == ((LOCAL_METADATA, "1"),)
    # A replica's own question is answered alone, never passed on.
    assert forwarded((("authorization", "Bearer t"), (LOCAL_METADATA, "1"))) is None


def test_replica_records_round_trip_and_bad_ones_are_refused() -> None:
    record = ReplicaRecord(
        "host-1:18000", "10.0.0.5:18001", True, "meshd", "10.0.0.5:18000", "ab", 1.5
    )
    assert ReplicaRecord.decode(record.encode()) == record
    for bad in (b"{", b"[]", b'{"admin": "x"}', b"null"):
        with pytest.raises(ValueError):
            ReplicaRecord.decode(bad)


@pytest.mark.parametrize("value", ["vm-1:18000", "meshd-0", "a.b_c"])
def test_replica_ids_people_use_are_accepted(value: str) -> None:
    assert check_replica_id(value) == value


@pytest.mark.parametrize(
    ("value", "why"),
    [("", "empty"), ("a/b", "not '/'"), ("x" * 129, "at most 128"), ("a b", "not ' '")],
)
def test_bad_replica_ids_are_refused_saying_why(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_replica_id(value)
