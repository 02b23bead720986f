"""Topology from load reports: rates over a window, absurd reports refused, idle edges, no
noise edges, per-endpoint rates, RED, scaling advice."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.ingest.registry import Entry, Reset
from xds_server.ingest.state import RegistryState
from xds_server.model import ServiceRef
from xds_server.topology.graph import build_graph, destination_of, recommend, red
from xds_server.topology.load import ClusterLoad, EndpointRate, LoadTracker


def dest(cluster: str) -> str | None:
    ref = destination_of(cluster)
    return f"{ref.namespace}/{ref.name}" if ref and ref.name in ("a", "b", "c") else None


def state_of(entries: dict[str, object]) -> RegistryState:
    state = RegistryState("/mesh/")
    rows = tuple(
        Entry("/mesh/" + k, json.dumps(v).encode(), i + 1)
        for i, (k, v) in enumerate(entries.items())
    )
    state.apply(Reset(len(rows), rows))
    assert not state.problems, state.problems
    return state


MESH = {
    "services/default/a": {"port": 8080, "scaling": {"target_rps_per_endpoint": 40}},
    "services/default/b": {"port": 8080},
    "services/default/c": {"port": 8080},
    "endpoints/default/a/1": {"address": "127.0.0.1"},
    "endpoints/default/a/2": {"address": "127.0.0.2"},
    "listeners/public": {"port": 10000, "nodes": ["gateway"]},
    "listeners/outbound": {"port": 15001, "nodes": ["a.default"]},
    "routes/default/to-a": {"listener": "public", "destinations": [{"service": "a"}]},
    "routes/default/to-c": {
        "listener": "public",
        "match": {"prefix": "/c"},
        "destinations": [{"service": "c"}],
    },
    "routes/default/a-to-b": {"listener": "outbound", "destinations": [{"service": "b"}]},
}


def test_rate_is_requests_over_reported_time_summed_over_proxies() -> None:
    t = LoadTracker(report_interval=1.0)
    for i in range(1, 6):
        t.ingest("gw-1", "gateway", [ClusterLoad("a.default", 95, 5, 3, interval=1.0)], i, dest)
        t.ingest(
            "gw-2", "gateway", [ClusterLoad("a.default", 50, 0, 1, interval=1.0)], i + 0.5, dest
        )
    (edge,) = t.edges(now=5.6, window=3.0)
    assert (edge.source, edge.destination) == ("gateway", "default/a")
    assert edge.rps == pytest.approx(150.0)
    assert edge.error_rate == pytest.approx(5 / 150)
    assert edge.in_flight == 4 and edge.reporters == 2
    assert t.edges(now=100, window=10) == []  # everything aged out of the window


def test_bad_reports_change_nothing_and_are_counted() -> None:
    t = LoadTracker(report_interval=1.0)
    ok = t.ingest("gw", "gateway", [ClusterLoad("a.default", 10, 0, 0, interval=1.0)], 1.0, dest)
    assert ok.accepted == 1 and not ok.refused
    before = t.edges(2.0, 10)
    absurd = [
        ClusterLoad("nope.default", 10, 0, 0, interval=1.0),
        ClusterLoad("a.default", 2**64 - 1, 0, 0, interval=1.0),  # a "negative" uint64
        ClusterLoad("a.default", -5, 0, 0, interval=1.0),
        ClusterLoad("a.default", 1, 0, 10**9, interval=1.0),
    ]
    out = t.ingest("gw", "gateway", absurd, 2.0, dest)
    assert out.accepted == 0
    assert out.refused == {"unknown_cluster": 1, "absurd_count": 3}
    flood = t.ingest("gw", "gateway", [ClusterLoad("a.default", 5, 0, 0, interval=1.0)], 2.01, dest)
    assert flood.refused == {"flood": 1}
    assert t.edges(2.0, 10) == before
    ignored = t.ingest(
        "gw",
        "gateway",
        [ClusterLoad("xds_cluster", 1, 0, 0)],
        3.0,
        dest,
        lambda n: n == "xds_cluster",
    )
    assert ignored.accepted == 0 and not ignored.refused


def test_graph_marks_idle_allowed_edges_and_joins_sidecars_to_services() -> None:
    state = state_of(MESH)
    t = LoadTracker(report_interval=1.0)
    for i in range(1, 4):
        t.ingest("gw", "gateway", [ClusterLoad("a.default", 20, 0, 0, interval=1.0)], i, dest)
        t.ingest("a-1", "a.default", [ClusterLoad("b.default", 18, 2, 0, interval=1.0)], i, dest)
    graph = build_graph(state, t.edges(3.5, 10), ["gateway", "a.default"], 10)
    edges = {(e.source, e.destination): e for e in graph.edges}
    assert set(edges) == {
        ("gateway", "default/a"),
        ("gateway", "default/c"),
        ("default/a", "default/b"),
    }
    assert edges[("gateway", "default/c")].idle and edges[("gateway", "default/c")].allowed
    assert edges[("gateway", "default/a")].rps == pytest.approx(20)
    assert edges[("default/a", "default/b")].error_rate == pytest.approx(0.1)
    assert not edges[("default/a", "default/b")].idle
    (b,) = red(graph, "default/b")
    assert b.rps == pytest.approx(20) and b.error_rps == pytest.approx(2) and b.duration_ms is None
    (rec,) = recommend(state, graph)
    assert (rec.service, rec.current_endpoints, rec.recommended_endpoints) == ("default/a", 2, 1)
    assert rec.action == "scale_down"


def test_traffic_outside_the_routes_is_shown_not_allowed() -> None:
    state = state_of(MESH)
    t = LoadTracker(report_interval=1.0)
    t.ingest("x", "batch", [ClusterLoad("b.default", 10, 0, 0, interval=1.0)], 1, dest)
    graph = build_graph(state, t.edges(1.5, 10), ["batch"], 10)
    (edge,) = [e for e in graph.edges if e.source == "batch"]
    assert not edge.allowed and not edge.idle


def test_destination_of_cluster_names() -> None:
    assert destination_of("web.default|v1") == ServiceRef("default", "web")
    assert destination_of("web.default") == ServiceRef("default", "web")
    assert destination_of("xds_cluster") is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 100)), min_size=1, max_size=20))
def test_steady_reports_give_back_their_rate(reports: list[tuple[int, int]]) -> None:
    t = LoadTracker(report_interval=2.0)
    for i, (ok, err) in enumerate(reports):
        t.ingest(
            "n",
            "gateway",
            [ClusterLoad("a.default", ok, err, 0, interval=2.0)],
            2.0 * (i + 1),
            dest,
        )
    now = 2.0 * len(reports)
    edges = t.edges(now, window=2.0 * len(reports) + 1)
    total = sum(ok + err for ok, err in reports)
    assert edges[0].rps == pytest.approx(total / (2.0 * len(reports)))


def test_reported_clusters_without_traffic_make_no_edge() -> None:
    """Envoy reports every cluster it holds: a zero report is no traffic. Such a cluster is
    an edge only when a route allows it (then idle); otherwise it is no edge at all."""
    state = state_of(MESH)
    t = LoadTracker(report_interval=1.0)
    for i in range(1, 3):
        zero = [ClusterLoad(c, 0, 0, 0, interval=1.0) for c in ("a.default", "b.default")]
        t.ingest("gw", "gateway", [*zero, ClusterLoad("c.default", 0, 0, 0, interval=1.0)], i, dest)
        t.ingest("a-1", "a.default", [ClusterLoad("c.default", 0, 0, 0, interval=1.0)], i, dest)
    graph = build_graph(state, t.edges(2.5, 10), ["gateway", "a.default"], 10)
    got = {(e.source, e.destination): (e.allowed, e.idle) for e in graph.edges}
    assert got == {
        ("gateway", "default/a"): (True, True),
        ("gateway", "default/c"): (True, True),
        ("default/a", "default/b"): (True, True),
    }
    # A request still in flight is traffic, though none completed yet.
    t.ingest("a-1", "a.default", [ClusterLoad("c.default", 0, 0, 1, interval=1.0)], 3, dest)
    graph = build_graph(state, t.edges(3.5, 10), ["gateway", "a.default"], 10)
    (edge,) = [e for e in graph.edges if e.destination == "default/c" and e.source != "gateway"]
    assert (edge.source, edge.allowed, edge.idle, edge.in_flight) == ("default/a", False, False, 1)


def test_endpoint_rates_by_subset_add_up_to_the_edge() -> None:
    t = LoadTracker(report_interval=1.0)
    for i in range(1, 4):
        t.ingest(
            "gw-1",
            "gateway",
            [
                ClusterLoad(
                    "a.default|v1",
                    30,
                    0,
                    0,
                    interval=1.0,
                    endpoints=(("10.0.0.1:80", 20, 0, 1), ("10.0.0.2:80", 10, 0, 0)),
                ),
                ClusterLoad(
                    "a.default|v2",
                    5,
                    5,
                    0,
                    interval=1.0,
                    endpoints=(("10.0.0.3:80", 5, 5, 0), ("10.0.0.4:80", 0, 0, 0)),
                ),
            ],
            i,
            dest,
        )
        t.ingest(
            "gw-2",
            "gateway",
            [
                ClusterLoad(
                    "a.default|v1", 4, 0, 0, interval=1.0, endpoints=(("10.0.0.1:80", 4, 0, 2),)
                )
            ],
            i + 0.5,
            dest,
        )
    rates = {(r.subset, r.endpoint): r for r in t.endpoint_rates(now=3.6, window=10)}
    # 10.0.0.4 reported nothing but zeros: no row (bounded by the endpoints in use).
    assert set(rates) == {("v1", "10.0.0.1:80"), ("v1", "10.0.0.2:80"), ("v2", "10.0.0.3:80")}
    assert rates[("v1", "10.0.0.1:80")].rps == pytest.approx(24.0)  # summed over proxies
    assert rates[("v1", "10.0.0.1:80")].in_flight == 3
    assert rates[("v2", "10.0.0.3:80")].error_rate == pytest.approx(0.5)
    (edge,) = t.edges(now=3.6, window=10)
    assert sum(r.rps for r in rates.values()) == pytest.approx(edge.rps)
    assert t.endpoint_rates(now=100, window=10) == []
    t.forget_node("gw-2")  # its in-flight requests no longer count
    rates = {(r.subset, r.endpoint): r for r in t.endpoint_rates(now=3.6, window=10)}
    assert rates[("v1", "10.0.0.1:80")].in_flight == 1


def test_absurd_endpoint_counts_refuse_the_cluster_row() -> None:
    t = LoadTracker(report_interval=1.0)
    bad = ClusterLoad(
        "a.default", 1, 0, 0, interval=1.0, endpoints=(("10.0.0.1:80", 2**64 - 1, 0, 0),)
    )
    out = t.ingest("gw", "gateway", [bad], 1.0, dest)
    assert out.refused == {"absurd_count": 1} and out.accepted == 0
    assert t.edges(1.5, 10) == [] and t.endpoint_rates(1.5, 10) == []


def test_red_by_endpoint_sums_sources_and_lists_quiet_services() -> None:
    state = state_of(MESH)
    t = LoadTracker(report_interval=1.0)
    ep = (("127.0.0.1:80", 9, 1, 0),)
    t.ingest(
        "gw", "gateway", [ClusterLoad("a.default", 9, 1, 0, interval=1.0, endpoints=ep)], 1, dest
    )
    t.ingest("x", "batch", [ClusterLoad("a.default", 9, 1, 0, interval=1.0, endpoints=ep)], 1, dest)
    graph = build_graph(
        state, t.edges(1.5, 10), ["gateway", "batch"], 10, t.endpoint_rates(1.5, 10)
    )
    (gw,) = [e for e in graph.edges if e.source == "gateway" and e.destination == "default/a"]
    assert gw.endpoints == (EndpointRate("gateway", "default/a", "", "127.0.0.1:80", 10, 1, 0),)
    rows = red(graph, services=["default/a", "default/b", "default/c"])
    assert [(r.service, r.rps) for r in rows] == [
        ("default/a", 20.0),
        ("default/b", 0.0),
        ("default/c", 0.0),
    ]
    (a_ep,) = rows[0].endpoints
    assert (a_ep.source, a_ep.endpoint, a_ep.rps, a_ep.error_rate) == ("", "127.0.0.1:80", 20, 0.1)
