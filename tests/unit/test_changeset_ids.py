"""A ChangeSet names which endpoints of a service changed, so translation re-encodes only
those (the rest of a big service's assignments is kept); when it cannot tell, it says so."""

from __future__ import annotations

from tests.unit.test_state import EP1, EP2, SVC, WEB, Mesh
from xds_server.ingest.registry import Changes, Event
from xds_server.model import ServiceRef
from xds_server.model.view import ChangeSet

EP3 = "/mesh/endpoints/default/web/w3"
API = ServiceRef("default", "api")


def mesh_with_web() -> Mesh:
    mesh = Mesh()
    mesh.put((SVC, {"port": 80}), (EP1, {"address": "10.0.0.1"}), (EP2, {"address": "10.0.0.2"}))
    return mesh


def test_an_update_names_the_endpoints_it_added_modified_and_removed() -> None:
    mesh = mesh_with_web()
    r = mesh.revision
    changes = mesh.state.apply(
        Changes(
            r + 3,
            (
                Event("put", EP3, b'{"address": "10.0.0.3"}', r + 1),
                Event("put", EP1, b'{"address": "10.0.0.9"}', r + 2),
                Event("delete", EP2, b"", r + 3),
            ),
        )
    )
    assert changes.endpoints == {WEB}
    assert changes.changed_endpoint_ids(WEB) == {"w1", "w2", "w3"}


def test_an_endpoint_rejected_or_put_back_as_it_was() -> None:
    mesh = mesh_with_web()
    # A bad value: the last good one stays in force, nothing changed in force.
    changes = mesh.put((EP1, {"address": "x y"}))
    assert changes.endpoints == set() and changes.changed_endpoint_ids(WEB) is None
    changes = mesh.put((EP2, {"address": "10.0.0.2"}))  # the same value again
    assert changes.endpoints == set()


def test_a_listing_says_any_endpoint_may_have_changed() -> None:
    mesh = mesh_with_web()
    mesh.content.pop(EP1)
    changes = mesh.reset()
    assert changes.endpoints == {WEB}
    assert changes.changed_endpoint_ids(WEB) is None


def test_merged_changesets_keep_what_each_named_and_any_wins() -> None:
    first = ChangeSet(endpoints={WEB, API}, endpoint_ids={WEB: {"a"}})  # API: any
    first.merge(ChangeSet(endpoints={WEB, API}, endpoint_ids={WEB: {"b"}, API: {"c"}}))
    assert first.changed_endpoint_ids(WEB) == {"a", "b"}
    assert first.changed_endpoint_ids(API) is None
    later_any = ChangeSet(endpoints={WEB})
    first.merge(later_any)
    assert first.changed_endpoint_ids(WEB) is None
    fresh = ChangeSet()
    fresh.merge(ChangeSet(endpoints={API}, endpoint_ids={API: {"c"}}))
    assert fresh.changed_endpoint_ids(API) == {"c"}
    assert ChangeSet(endpoint_ids={API: {"c"}}).changed_endpoint_ids(API) is None
