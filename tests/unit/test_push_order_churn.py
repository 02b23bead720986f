"""A route change is not held back behind endpoint updates a proxy has not answered yet
(a rolling deploy keeps the endpoint type waiting for its ACK most of the time); a new
cluster's assignment still goes before the route that names it (make before break)."""

from __future__ import annotations

from typing import Any

from tests.support.stream_mesh import BASE, Mesh
from tests.unit.test_delta_stream import connect as delta_connect
from tests.unit.test_delta_stream import dreq, names
from tests.unit.test_delta_stream import push as delta_push
from tests.unit.test_stream import connect as sotw_connect
from tests.unit.test_stream import names_of
from xds_server.resources import CLUSTER, ENDPOINT, ROUTE

ROUTE_TO_API = {"listener": "public", "destinations": [{"service": "api"}]}


def endpoint_update(mesh: Mesh, port: int) -> None:
    mesh.change({"endpoints/default/api/a": {"address": "10.0.0.2", "port": port}})


def test_delta_route_change_overtakes_endpoint_updates_awaiting_an_ack() -> None:
    mesh = Mesh(BASE)
    s, w, _ = delta_connect(mesh)
    endpoint_update(mesh, 81)
    (eds,) = delta_push(mesh, s, w)  # sent, not ACKed yet
    endpoint_update(mesh, 82)
    assert delta_push(mesh, s, w) == []  # (one unanswered response per type)
    mesh.change({"routes/default/r": ROUTE_TO_API})
    out = delta_push(mesh, s, w)
    assert [(r.type_url, names(r)) for r in out] == [(ROUTE, ["public"])]
    # The held endpoint update goes once the first is answered.
    (eds2,) = s.on_request(dreq(ENDPOINT, nonce=eds.nonce))
    assert names(eds2) == ["api.default"] and b"\x18\x52" in eds2.resources[0].body


def test_delta_new_assignment_still_goes_before_the_route_that_names_it() -> None:
    mesh = Mesh(BASE)
    s, w, _ = delta_connect(mesh)
    # The proxy asks for an assignment that does not exist yet (answered: removed).
    (none,) = s.on_request(dreq(ENDPOINT, ("later.default",)))
    assert none.removed == ("later.default",)
    s.on_request(dreq(ENDPOINT, nonce=none.nonce))
    endpoint_update(mesh, 81)
    (eds,) = delta_push(mesh, s, w)  # not answered yet
    mesh.change(
        {
            "services/default/later": {"port": 80},
            "endpoints/default/later/a": {"address": "10.0.0.9"},
            "routes/default/r": {"listener": "public", "destinations": [{"service": "later"}]},
        }
    )
    out = delta_push(mesh, s, w)
    assert [r.type_url for r in out] == [CLUSTER]  # the route waits for later's assignment
    out = s.on_request(dreq(ENDPOINT, nonce=eds.nonce))
    assert [r.type_url for r in out] == [ENDPOINT, ROUTE]
    assert names(out[0]) == ["later.default"] and "public" in names(out[1])


def sotw_push(mesh: Mesh, s: Any, w: Any) -> list[Any]:
    return mesh.push(s, w)


def test_sotw_route_change_overtakes_endpoint_updates_awaiting_an_ack() -> None:
    mesh = Mesh(BASE)
    s, w, _ = sotw_connect(mesh)
    endpoint_update(mesh, 81)
    (eds,) = sotw_push(mesh, s, w)
    assert eds.type_url == ENDPOINT
    endpoint_update(mesh, 82)
    assert sotw_push(mesh, s, w) == []
    mesh.change({"routes/default/r": ROUTE_TO_API})
    out = sotw_push(mesh, s, w)
    assert [r.type_url for r in out] == [ROUTE] and "public" in names_of(out[0])
