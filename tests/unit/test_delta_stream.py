"""The Delta stream state machine, point by point (docs/xds.md, incremental xDS)."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.stream_mesh import BASE, Mesh
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.server.delta_stream import DeltaResponse, DeltaStream


def dreq(
    type_url: str,
    subscribe: tuple[str, ...] = (),
    *,
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    error: str | None = None,
    initial: dict[str, str] | None = None,
    node: tuple[str, str] | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    r = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if node:
        r.node.id, r.node.cluster = node
    if error is not None:
        r.error_detail.message = error
    return r


def names(resp: DeltaResponse) -> list[str]:
    return [r.name for r in resp.resources]


def dstream(mesh: Mesh) -> tuple[DeltaStream, Any]:
    return DeltaStream(mesh.cache, clock=lambda: 1.0), mesh.cache.watch()


def connect(
    mesh: Mesh, cluster: str = "gateway"
) -> tuple[DeltaStream, Any, dict[str, DeltaResponse]]:
    s, w = dstream(mesh)
    got = {}
    (cds,) = s.on_request(dreq(CLUSTER, node=("n1", cluster)))
    got[CLUSTER] = cds
    s.on_request(dreq(CLUSTER, nonce=cds.nonce))
    (eds,) = s.on_request(dreq(ENDPOINT, tuple(names(cds))))
    got[ENDPOINT] = eds
    s.on_request(dreq(ENDPOINT, nonce=eds.nonce))
    (lds,) = s.on_request(dreq(LISTENER))
    got[LISTENER] = lds
    s.on_request(dreq(LISTENER, nonce=lds.nonce))
    (rds,) = s.on_request(dreq(ROUTE, tuple(names(lds))))
    got[ROUTE] = rds
    s.on_request(dreq(ROUTE, nonce=rds.nonce))
    return s, w, got


def push(mesh: Mesh, s: DeltaStream, w: Any) -> list[DeltaResponse]:
    pending, scopes = w.take()
    return s.on_change(pending, scopes)


def test_wildcard_and_scope() -> None:
    mesh = Mesh(BASE)
    s, _, got = connect(mesh)
    assert names(got[CLUSTER]) == ["api.default", "web.default", "web.default|v1"]
    assert names(got[LISTENER]) == ["inner", "public"]
    assert all(t.state == "SYNCED" for t in s.types.values())
    _, _, side = connect(mesh, cluster="sidecar")
    assert names(side[LISTENER]) == ["inner"]


def test_subscribing_to_a_missing_name_is_answered_with_removed() -> None:
    mesh = Mesh(BASE)
    s, _ = dstream(mesh)
    (resp,) = s.on_request(dreq(ENDPOINT, ("api.default", "nope.default"), node=("n", "g")))
    assert names(resp) == ["api.default"]
    assert resp.removed == ("nope.default",)


def test_endpoint_change_is_incremental_and_removal_is_explicit() -> None:
    mesh = Mesh(BASE)
    s, w, _ = connect(mesh)
    mesh.change({"endpoints/default/api/b": {"address": "10.0.0.3"}})
    (eds,) = push(mesh, s, w)
    assert names(eds) == ["api.default"] and eds.removed == ()
    mesh.change(
        {}, deletes=("services/default/api", "endpoints/default/api/a", "endpoints/default/api/b")
    )
    out = push(mesh, s, w)
    cds = next(r for r in out if r.type_url == CLUSTER)
    assert cds.removed == ("api.default",) and cds.resources == ()


def test_initial_resource_versions_suppress_current_resources() -> None:
    mesh = Mesh(BASE)
    _, _, got = connect(mesh)
    held = {r.name: r.version for r in got[CLUSTER].resources}
    s, _ = dstream(mesh)
    assert s.on_request(dreq(CLUSTER, node=("n", "gateway"), initial=held)) == []
    assert s.types[CLUSTER].state == "SYNCED"
    # One stale version and one resource that no longer exists.
    stale = {**held, "api.default": "old", "gone.default": "v"}
    s2, _ = dstream(mesh)
    (resp,) = s2.on_request(dreq(CLUSTER, node=("n", "gateway"), initial=stale))
    assert names(resp) == ["api.default"] and resp.removed == ("gone.default",)
    # Everything stale and several gone: both lists come sorted by name, whatever the order
    # the client listed them in (20 more services: set order is not name order).
    mesh.change({f"services/default/x{i}": {"port": 80} for i in range(20)})
    every = {n: "old" for n in reversed([*held, *(f"x{i}.default" for i in range(20))])}
    every = {"z-gone.default": "v", **every, "a-gone.default": "v"}
    s3, _ = dstream(mesh)
    (resp,) = s3.on_request(dreq(CLUSTER, node=("n", "gateway"), initial=every))
    assert names(resp) == sorted(n for n in every if "gone" not in n)
    assert resp.removed == ("a-gone.default", "z-gone.default")


def test_nack_recorded_per_response_and_not_resent() -> None:
    mesh = Mesh(BASE)
    s, w, _ = connect(mesh)
    mesh.change({"services/default/api": {"port": 9090, "connect_timeout_ms": 250}})
    out = push(mesh, s, w)
    cds = out[0]
    assert cds.type_url == CLUSTER
    s.on_request(dreq(CLUSTER, nonce=cds.nonce, error="rejected api.default"))
    assert s.types[CLUSTER].state == "NACKED"
    assert s.types[CLUSTER].nack_names == ("api.default",)
    # Re-subscribing (a request without a nonce) does not resend the rejected content.
    assert s.on_request(dreq(CLUSTER)) == []


def test_changed_cluster_pushes_its_endpoints_unasked() -> None:
    mesh = Mesh(BASE)
    s, w, _ = connect(mesh)
    mesh.change({"services/default/api": {"port": 9090, "connect_timeout_ms": 250}})
    out = push(mesh, s, w)
    assert [r.type_url for r in out] == [CLUSTER, ENDPOINT]
    assert names(out[0]) == ["api.default"] and names(out[1]) == ["api.default"]


def test_changed_listener_pushes_its_routes_unasked() -> None:
    mesh = Mesh(BASE)
    s, w, _ = connect(mesh)
    mesh.change({"listeners/inner": {"port": 10002}})
    out = push(mesh, s, w)
    assert [(r.type_url, names(r)) for r in out] == [(LISTENER, ["inner"]), (ROUTE, ["inner"])]


def test_cluster_removal_waits_for_the_route_that_names_it() -> None:
    mesh = Mesh(BASE)
    s, w, _ = connect(mesh)
    mesh.change(
        {"routes/default/r": {"listener": "public", "destinations": [{"service": "api"}]}},
        deletes=("services/default/web", "endpoints/default/web/a"),
    )
    out = push(mesh, s, w)
    kinds = [r.type_url for r in out]
    assert kinds.index(ROUTE) < len(kinds) - 1 and kinds[-1] == CLUSTER
    assert set(out[-1].removed) == {"web.default", "web.default|v1"}
    before_route = [r for r in out[: kinds.index(ROUTE)] if r.type_url == CLUSTER]
    assert all("web.default|v1" not in r.removed for r in before_route)


def test_unsubscribe_and_nonce_independent_subscription_changes() -> None:
    mesh = Mesh(BASE)
    s, w, _got = connect(mesh)
    # A subscription change carried by a request with an old nonce still applies.
    (resp,) = s.on_request(dreq(ROUTE, ("api.default",), nonce="1"))
    assert resp.removed == ("api.default",)
    s.on_request(dreq(ROUTE, unsubscribe=("inner",)))
    assert "inner" not in s.types[ROUTE].subscribed
    mesh.change({"listeners/inner": {"port": 10003}})
    out = push(mesh, s, w)
    assert [(r.type_url, names(r)) for r in out] == [(LISTENER, ["inner"])]


def test_delta_wire_parses() -> None:
    mesh = Mesh(BASE)
    _, _, got = connect(mesh)
    parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(got[CLUSTER].wire())
    assert [r.name for r in parsed.resources] == names(got[CLUSTER])
    assert parsed.nonce == got[CLUSTER].nonce and parsed.type_url == CLUSTER
    assert all(r.version for r in parsed.resources)


class _FullPathStream(DeltaStream):
    """Every request through the full path: the reference for the ACK fast path."""

    __slots__ = ()

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest) -> list[DeltaResponse]:
        return self._on_request_full(req)


_TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
_NAMES = ("api.default", "web.default", "web.default|v1", "public", "inner", "nope", "*")
_CHANGES = (
    {"endpoints/default/api/b": {"address": "10.0.0.3"}},
    {"endpoints/default/api/b": {"address": "10.0.0.4"}},
    {"services/default/api": {"port": 9090, "connect_timeout_ms": 100}},  # a cluster change
    {"services/default/api": {"port": 9090, "connect_timeout_ms": 200}},
    {"services/default/api": {"port": 9191}},  # endpoints change
    {"routes/default/r2": {"listener": "public", "destinations": [{"service": "api"}]}},
)

_step = st.one_of(
    st.tuples(
        st.just("request"),
        st.sampled_from(_TYPES),
        st.lists(st.sampled_from(_NAMES), max_size=2),  # subscribe
        st.lists(st.sampled_from(_NAMES), max_size=1),  # unsubscribe
        st.sampled_from(("current", "stale", "none")),
        st.booleans(),  # a NACK
        st.booleans(),  # repeats the node
    ),
    st.tuples(st.just("change"), st.integers(0, len(_CHANGES) - 1)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, max_size=25))
def test_ack_fast_path_matches_the_full_path(steps: list[tuple[Any, ...]]) -> None:
    """Any request sequence gives the same responses and the same stream state through the
    fast path (a request that changes no subscription) as through the full one."""
    mesh = Mesh(BASE)
    fast, full = (
        DeltaStream(mesh.cache, clock=lambda: 1.0),
        _FullPathStream(mesh.cache, clock=lambda: 1.0),
    )
    watchers = {id(fast): mesh.cache.watch(), id(full): mesh.cache.watch()}

    def ask(s: DeltaStream, req: discovery_pb2.DeltaDiscoveryRequest) -> list[DeltaResponse]:
        out = s.on_request(req)
        if s.interest_stale:  # as the servicer does: the fast path must not need it
            s.interest_stale = False
            mesh.cache.set_interest(watchers[id(s)], s.interest())
        return out

    for s in (fast, full):  # both start the same way: node, wildcard CDS and LDS
        ask(s, dreq(CLUSTER, node=("n1", "gateway")))
        ask(s, dreq(LISTENER))
    for step in steps:
        outs = []
        for s in (fast, full):
            if step[0] == "change":
                continue
            _, t, sub, unsub, nonce_kind, nack, node = step
            ts = s.types.get(t)
            nonce = {"current": ts.nonce if ts else "", "stale": "0.0", "none": ""}[nonce_kind]
            req = dreq(
                t,
                tuple(sub),
                unsubscribe=tuple(unsub),
                nonce=nonce,
                error="bad" if nack and nonce else None,
                node=("n1", "gateway") if node else None,
            )
            outs.append(ask(s, req))
        if step[0] == "change":
            mesh.change(_CHANGES[step[1]])
            for s in (fast, full):
                pending, scopes = watchers[id(s)].take()
                outs.append(s.on_change(pending, scopes))
        assert outs[0] == outs[1], step
        assert fast.types == full.types, step
        assert fast.last_outcome == full.last_outcome, step
        assert fast.interest() == full.interest(), step
        assert fast._deferred == full._deferred, step
