"""The SotW stream state machine, pinned point by point against docs/xds.md. No network."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.stream_mesh import BASE, Mesh
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.server.stream import Response, SotwStream


def req(
    type_url: str,
    names: tuple[str, ...] = (),
    *,
    version: str = "",
    nonce: str = "",
    error: str | None = None,
    node: tuple[str, str] | None = None,
) -> discovery_pb2.DiscoveryRequest:
    r = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
    )
    if node:
        r.node.id, r.node.cluster = node
    if error is not None:
        r.error_detail.message = error
        r.error_detail.code = 3
    return r


def names_of(resp: Response) -> list[str]:
    return [r.name for r in resp.resources]


def connect(mesh: Mesh, cluster: str = "gateway") -> tuple[SotwStream, Any, dict[str, Response]]:
    """A stream that subscribed like Envoy does and ACKed everything."""
    s, w = mesh.stream()
    got: dict[str, Response] = {}
    (cds,) = s.on_request(req(CLUSTER, node=("n1", cluster)))
    got[CLUSTER] = cds
    s.on_request(req(CLUSTER, version=cds.version, nonce=cds.nonce))
    (eds,) = s.on_request(req(ENDPOINT, tuple(names_of(cds))))
    got[ENDPOINT] = eds
    s.on_request(req(ENDPOINT, tuple(names_of(cds)), version=eds.version, nonce=eds.nonce))
    (lds,) = s.on_request(req(LISTENER))
    got[LISTENER] = lds
    s.on_request(req(LISTENER, version=lds.version, nonce=lds.nonce))
    http = tuple(n for n in names_of(lds))
    if http:
        (rds,) = s.on_request(req(ROUTE, http))
        got[ROUTE] = rds
        s.on_request(req(ROUTE, http, version=rds.version, nonce=rds.nonce))
    return s, w, got


def test_initial_wildcard_gets_complete_sets_and_scope() -> None:
    mesh = Mesh(BASE)
    s, _w, got = connect(mesh)
    assert names_of(got[CLUSTER]) == ["api.default", "web.default", "web.default|v1"]
    assert names_of(got[LISTENER]) == ["inner", "public"]
    # A sidecar's cluster does not match the gateway-only listener (xds.md point 5).
    _s2, _, got2 = connect(mesh, cluster="sidecar")
    assert names_of(got2[LISTENER]) == ["inner"]
    assert all(t.state == "SYNCED" for t in s.types.values())


def test_stale_nonce_is_ignored_entirely() -> None:
    mesh = Mesh(BASE)
    s, _w, got = connect(mesh)
    cds = got[CLUSTER]
    # An old nonce, even with different names: ignored, no state change (point 1).
    assert s.on_request(req(ENDPOINT, ("api.default",), nonce="1")) == []
    assert s.last_outcome is not None and s.last_outcome.kind == "stale"
    assert s.types[ENDPOINT].subscribed == set(names_of(cds))


def test_nack_is_recorded_and_not_resent_until_content_changes() -> None:
    mesh = Mesh(BASE)
    s, w, got = connect(mesh)
    mesh.change({"services/default/api": {"port": 9090, "connect_timeout_ms": 250}})
    (cds,) = mesh.push(s, w)
    out = s.on_request(
        req(CLUSTER, version=got[CLUSTER].version, nonce=cds.nonce, error="bad cluster api")
    )
    assert out == []
    assert s.types[CLUSTER].state == "NACKED"
    assert s.types[CLUSTER].nack == "bad cluster api"
    # Nothing changed: a further request (e.g. Envoy retrying) gets nothing either.
    assert s.on_request(req(CLUSTER, version=got[CLUSTER].version, nonce=cds.nonce)) == []
    mesh.change({"services/default/api": {"port": 9090, "connect_timeout_ms": 300}})
    (cds2,) = mesh.push(s, w)
    s.on_request(req(CLUSTER, version=cds2.version, nonce=cds2.nonce))
    assert s.types[CLUSTER].state == "SYNCED"


def test_rewarm_request_that_looks_like_an_ack_is_answered() -> None:
    mesh = Mesh(BASE)
    s, w, got = connect(mesh)
    eds = got[ENDPOINT]
    mesh.change({"services/default/api": {"port": 9090, "connect_timeout_ms": 250}})
    (cds,) = mesh.push(s, w)
    assert names_of(cds) == ["api.default", "web.default", "web.default|v1"]
    s.on_request(req(CLUSTER, version=cds.version, nonce=cds.nonce))
    # Envoy re-warms api.default and asks for EDS again with the same names, version
    # and nonce as its last ACK (point 2): the answer must carry api.default's endpoints.
    names = tuple(names_of(eds))
    (again,) = s.on_request(req(ENDPOINT, names, version=eds.version, nonce=eds.nonce))
    assert names_of(again) == ["api.default"]
    # A plain ACK of that answer gets nothing more.
    assert s.on_request(req(ENDPOINT, names, version=again.version, nonce=again.nonce)) == []


def test_endpoint_change_sends_only_the_changed_assignment() -> None:
    mesh = Mesh(BASE)
    s, w, _ = connect(mesh)
    mesh.change({"endpoints/default/api/b": {"address": "10.0.0.3"}})
    (eds,) = mesh.push(s, w)
    assert eds.type_url == ENDPOINT
    assert names_of(eds) == ["api.default"]  # partial response (point 9)
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(eds.resources[0].any.value)
    addrs = sorted(e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints)
    assert addrs == ["10.0.0.2", "10.0.0.3"]


def test_reconnect_with_current_versions_gets_nothing() -> None:
    mesh = Mesh(BASE)
    _, _, got = connect(mesh)
    s, _ = mesh.stream()
    # Point 4: first request of a new stream already at the current version -> no response.
    cds_v = got[CLUSTER].version
    assert s.on_request(req(CLUSTER, version=cds_v, node=("n1", "gateway"))) == []
    names = tuple(names_of(got[CLUSTER]))
    assert s.on_request(req(ENDPOINT, names, version=got[ENDPOINT].version)) == []
    assert s.on_request(req(LISTENER, version=got[LISTENER].version)) == []
    assert s.on_request(req(ROUTE, ("inner", "public"), version=got[ROUTE].version)) == []
    assert all(t.state == "SYNCED" for t in s.types.values())
    # An outdated version does get the current set.
    s2, _ = mesh.stream()
    (cds,) = s2.on_request(req(CLUSTER, version="0" * 32, node=("n2", "gateway")))
    assert cds.version == cds_v


def test_versions_are_content_hashes_identical_across_instances() -> None:
    a, b = Mesh(BASE), Mesh(dict(reversed(list(BASE.items()))))
    _, _, got_a = connect(a)
    _, _, got_b = connect(b)
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        assert got_a[t].version == got_b[t].version
        assert [r.version for r in got_a[t].resources] == [r.version for r in got_b[t].resources]


def test_push_order_and_make_before_break() -> None:
    mesh = Mesh(BASE)
    s, w, _ = connect(mesh)
    # Move the route from web to api and delete web in one update: the route must be
    # replaced before web's clusters go away (point 3).
    mesh.change(
        {"routes/default/r": {"listener": "public", "destinations": [{"service": "api"}]}},
        deletes=("services/default/web", "endpoints/default/web/a"),
    )
    out = mesh.push(s, w)
    kinds = [r.type_url for r in out]
    # web's clusters are still named by the route in force, so the cluster set stays
    # as it is until the new route configuration has gone out; then they are removed.
    assert kinds == [ROUTE, CLUSTER]
    assert names_of(out[-1]) == ["api.default"]
    # The same update without the route change: ordering clusters before routes.
    mesh2 = Mesh(BASE)
    s2, w2, _ = connect(mesh2)
    mesh2.change(
        {
            "services/default/api": {"port": 9091, "connect_timeout_ms": 700},
            "endpoints/default/api/a": {"address": "10.0.0.9"},
            "listeners/inner": {"port": 10009},
        }
    )
    kinds2 = [r.type_url for r in mesh2.push(s2, w2)]
    assert kinds2 == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


def test_unknown_type_is_ignored() -> None:
    mesh = Mesh(BASE)
    s, _ = mesh.stream()
    scoped = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
    assert s.on_request(req(scoped, node=("n", "gateway"))) == []
    assert s.last_outcome is not None and s.last_outcome.kind == "unknown_type"


def test_response_wire_parses_as_discovery_response() -> None:
    mesh = Mesh(BASE)
    _, _, got = connect(mesh)
    cds = got[CLUSTER]
    parsed = discovery_pb2.DiscoveryResponse.FromString(cds.wire())
    assert parsed.version_info == cds.version and parsed.nonce == cds.nonce
    assert parsed.type_url == CLUSTER
    names = [cluster_pb2.Cluster.FromString(a.value).name for a in parsed.resources]
    assert names == names_of(cds)


def test_listener_change_rewarms_its_route_configuration() -> None:
    mesh = Mesh(BASE)
    s, w, got = connect(mesh)
    rds = got[ROUTE]
    mesh.change({"listeners/inner": {"port": 10002}})
    (lds,) = mesh.push(s, w)
    s.on_request(req(LISTENER, version=lds.version, nonce=lds.nonce))
    again = s.on_request(req(ROUTE, ("inner", "public"), version=rds.version, nonce=rds.nonce))
    assert [names_of(r) for r in again] == [["inner"]]


def test_no_push_when_nothing_in_scope_changed() -> None:
    mesh = Mesh(BASE)
    s, w, _ = connect(mesh, cluster="sidecar")
    # The route lives on the gateway-only listener: a sidecar gets no RDS for it.
    mesh.change({"routes/default/r": {"listener": "public", "destinations": [{"service": "api"}]}})
    assert mesh.push(s, w) == []


def test_streams_in_the_same_position_share_their_strings() -> None:
    """Each stream keeps, per type, its URL, versions, nonce and last outcome; thousands
    of streams in the same position share one object of each (memory, not behaviour:
    equal strings would do as well on the wire)."""
    mesh = Mesh(BASE)
    (s1, _, _), (s2, _, _) = connect(mesh), connect(mesh)
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        key = next(k for k in s1.types if k == t)
        assert key is t  # not the request's own copy of the URL
        a, b = s1.types[t], s2.types[t]
        assert a.version == b.version and a.version is b.version
        assert a.nonce == b.nonce and a.nonce is b.nonce
        assert a.acked_version is a.version  # the ACK's copy is not kept
        assert a.rewarm is b.rewarm
    assert s1.last_outcome is not None and s1.last_outcome.kind == "ack"
    assert s1.last_outcome is s2.last_outcome
