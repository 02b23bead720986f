"""RegistryState: references, last good values, Reset reconciliation, exact ChangeSets."""

from __future__ import annotations

import copy
import json
from typing import Any

from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.ingest.state import RegistryState
from xds_server.model import Endpoint, Problem, Route, Service, ServiceRef
from xds_server.model.view import ChangeSet

PREFIX = "/mesh/"
WEB = ServiceRef("default", "web")
API = ServiceRef("default", "api")
SVC = "/mesh/services/default/web"
SVC_API = "/mesh/services/default/api"
EP1 = "/mesh/endpoints/default/web/w1"
EP2 = "/mesh/endpoints/default/web/w2"
RT = "/mesh/routes/default/r"
RT_API = "/mesh/routes/default/to-api"
LS = "/mesh/listeners/public"
TCP = "/mesh/listeners/db"

Value = dict[str, Any] | bytes


def raw(value: Value) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


class Mesh:
    """A registry simulated in memory that feeds a RegistryState like a backend would."""

    def __init__(self) -> None:
        self.state = RegistryState(PREFIX)
        self.revision = 0
        self.content: dict[str, Entry] = {}

    def put(self, *pairs: tuple[str, Value]) -> ChangeSet:
        """Put every pair, each at its own revision, delivered as one Changes."""
        events = []
        for key, value in pairs:
            self.revision += 1
            self.content[key] = Entry(key, raw(value), self.revision)
            events.append(Event("put", key, raw(value), self.revision))
        return self.state.apply(Changes(self.revision, tuple(events)))

    def delete(self, *keys: str) -> ChangeSet:
        events = []
        for key in keys:
            self.revision += 1
            self.content.pop(key, None)
            events.append(Event("delete", key, b"", self.revision))
        return self.state.apply(Changes(self.revision, tuple(events)))

    def reset(self) -> ChangeSet:
        """Deliver the current content as one Reset (as after a relist)."""
        return self.state.apply(Reset(self.revision, tuple(self.content.values())))


def route(*destinations: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "listener": "public",
        "destinations": list(destinations) or [{"service": "web"}],
        **fields,
    }


def web(**fields: Any) -> dict[str, Any]:
    return {"port": 8080, "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}}, **fields}


def empty(revision: int) -> ChangeSet:
    return ChangeSet(revision=revision)


def only(mesh: Mesh, **fields: Any) -> ChangeSet:
    """The ChangeSet expected at the mesh's revision with exactly ``fields`` set."""
    return ChangeSet(revision=mesh.revision, **fields)


# -- references -------------------------------------------------------------------------------


def test_route_to_a_missing_service_is_a_problem_of_the_route() -> None:
    mesh = Mesh()
    changes = mesh.put((RT, route({"service": "api"})))
    problem = Problem(RT, "destinations[0].service", "unknown service default/api", 1)
    assert changes == only(mesh, problems_set={RT: problem})
    assert mesh.state.routes == {}
    assert mesh.state.problems == {RT: problem}


def test_route_to_a_missing_subset_names_that_destination() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()))
    changes = mesh.put(
        (RT, route({"service": "web", "subset": "v1"}, {"service": "web", "subset": "v3"}))
    )
    problem = Problem(RT, "destinations[1].subset", "service default/web has no subset 'v3'", 2)
    assert changes == only(mesh, problems_set={RT: problem})
    assert mesh.state.routes == {}


def test_route_to_a_tcp_service_is_a_problem() -> None:
    mesh = Mesh()
    mesh.put((SVC, {"protocol": "tcp", "port": 5432}))
    mesh.put((RT, route()))
    problem = mesh.state.problems[RT]
    assert (problem.field, problem.reason) == (
        "destinations[0].service",
        "service default/web speaks tcp, not http",
    )
    assert RT not in mesh.state.routes


def test_route_comes_into_force_when_its_service_appears() -> None:
    mesh = Mesh()
    mesh.put((RT, route({"service": "web", "subset": "v2"})))
    changes = mesh.put((SVC, web()))
    assert changes == only(mesh, services={WEB}, routes={RT}, problems_cleared={RT})
    assert mesh.state.problems == {}
    assert isinstance(mesh.state.routes[RT], Route)


def test_route_and_its_service_in_one_batch_in_any_order() -> None:
    mesh = Mesh()
    changes = mesh.put((RT, route()), (SVC, web()))
    assert changes == only(mesh, services={WEB}, routes={RT})
    assert mesh.state.problems == {}


def test_removing_a_subset_a_route_uses_keeps_it_until_the_route_changes() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()), (RT, route({"service": "web", "subset": "v2"})))
    old = mesh.state.services[WEB]
    changes = mesh.put((SVC, {"port": 8080, "subsets": {"v1": {"version": "v1"}}}))
    # Nothing changes in force; both keys say why.
    assert changes == only(mesh, problems_set=changes.problems_set)
    assert set(changes.problems_set) == {SVC, RT}
    assert mesh.state.services[WEB] is old and RT in mesh.state.routes
    held = mesh.state.problems[SVC]
    assert (held.field, held.revision, held.last_good_kept) == ("", 3, True)
    assert held.reason == (
        "changed while routes/default/r still depends on it (routes/default/r: "
        "destinations[0].subset: service default/web has no subset 'v2'); the last good "
        "value stays in force until they change or it is restored"
    )
    leaning = mesh.state.problems[RT]
    assert (leaning.field, leaning.revision, leaning.last_good_kept) == (
        "destinations[0].subset",
        2,
        True,
    )
    assert leaning.reason.startswith("service default/web has no subset 'v2' in the registry")
    # A new route to the subset that is gone is judged by the registry as it is.
    changes = mesh.put((RT_API, route({"service": "web", "subset": "v2"})))
    assert RT_API not in mesh.state.routes
    assert mesh.state.problems[RT_API].reason == "service default/web has no subset 'v2'"

    changes = mesh.put((RT, route({"service": "web", "subset": "v1"})))
    assert changes == only(mesh, services={WEB}, routes={RT}, problems_cleared={SVC, RT})
    assert mesh.state.services[WEB].subset_names == ("v1",)


def test_deleting_a_service_keeps_it_for_its_dependents_until_they_go() -> None:
    mesh = Mesh()
    mesh.put(
        (SVC, web()),
        (EP1, {"address": "10.0.0.1"}),
        (RT, route()),
        (TCP, {"port": 5432, "protocol": "tcp", "service": "web"}),
        (LS, {"port": 10000}),
    )
    before = copy.deepcopy(
        (mesh.state.services, mesh.state.endpoints, mesh.state.routes, mesh.state.listeners)
    )
    assert mesh.state.problems == {}

    changes = mesh.delete(SVC)
    assert changes == only(mesh, problems_set=changes.problems_set)
    assert set(changes.problems_set) == {SVC, RT, TCP}
    assert (
        mesh.state.services,
        mesh.state.endpoints,
        mesh.state.routes,
        mesh.state.listeners,
    ) == before
    held = mesh.state.problems[SVC]
    assert held.last_good_kept and held.revision == 6
    assert held.reason.startswith(
        "deleted while listeners/db and 1 more still depend on it (listeners/db: service: "
        "unknown service default/web)"
    )
    assert mesh.state.problems[RT].field == "destinations[0].service"
    assert mesh.state.problems[TCP].field == "service"

    # Put back as it was: nothing to push, the problems clear.
    changes = mesh.put((SVC, web()))
    assert changes == only(mesh, services=set(), problems_cleared={SVC, RT, TCP})
    assert mesh.state.problems == {}

    # Deleted again, then its dependents go: then so does it, and its endpoints with it.
    mesh.delete(SVC)
    changes = mesh.delete(RT)
    assert changes == only(mesh, routes={RT}, problems_cleared={RT})
    assert WEB in mesh.state.services
    changes = mesh.delete(TCP)
    assert changes == only(
        mesh,
        services={WEB},
        endpoints={WEB},
        listeners={"db"},
        problems_set={EP1: Problem(EP1, "", "service default/web is not registered", 2)},
        problems_cleared={SVC, TCP},
    )
    assert mesh.state.services == {} and mesh.state.endpoints == {}
    assert list(mesh.state.listeners) == ["public"]


def test_a_service_nothing_in_force_needs_goes_at_once() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()), (RT, route({"service": "web", "subset": "v1"})))
    changes = mesh.put((SVC, {"port": 8080, "subsets": {"v1": {"version": "v1"}}}))
    assert changes == only(mesh, services={WEB}, routes=changes.routes)
    assert mesh.state.problems == {}
    mesh.delete(RT)
    changes = mesh.delete(SVC)
    assert changes == only(mesh, services={WEB})
    assert mesh.state.problems == {}


def test_endpoint_of_an_unregistered_service() -> None:
    mesh = Mesh()
    changes = mesh.put((EP1, {"address": "10.0.0.1", "port": 80}))
    problem = Problem(EP1, "", "service default/web is not registered", 1)
    assert problem.message == "service default/web is not registered"
    assert changes == only(mesh, problems_set={EP1: problem})
    assert mesh.state.endpoints == {}
    changes = mesh.put((SVC, {}))
    assert changes == only(mesh, services={WEB}, endpoints={WEB}, problems_cleared={EP1})
    assert set(mesh.state.endpoints[WEB]) == {"w1"}


def test_endpoint_without_port_needs_a_service_port() -> None:
    mesh = Mesh()
    mesh.put((SVC, {}))
    changes = mesh.put((EP1, {"address": "10.0.0.1"}), (EP2, {"address": "10.0.0.2", "port": 81}))
    problem = Problem(EP1, "port", "is required: service default/web has no port", 2)
    assert changes == only(mesh, endpoints={WEB}, problems_set={EP1: problem})
    assert set(mesh.state.endpoints[WEB]) == {"w2"}

    changes = mesh.put((SVC, {"port": 80}))  # the service gains a port: w1 comes into force
    assert changes == only(mesh, services={WEB}, endpoints={WEB}, problems_cleared={EP1})
    assert set(mesh.state.endpoints[WEB]) == {"w1", "w2"}

    changes = mesh.put((SVC, {}))  # and loses it again: w1 goes
    problem = Problem(EP1, "port", "is required: service default/web has no port", 2)
    assert changes == only(mesh, services={WEB}, endpoints={WEB}, problems_set={EP1: problem})
    assert set(mesh.state.endpoints[WEB]) == {"w2"}


def test_tcp_listener_to_a_missing_service() -> None:
    mesh = Mesh()
    changes = mesh.put((TCP, {"port": 5432, "protocol": "tcp", "service": "pg"}))
    problem = Problem(TCP, "service", "unknown service default/pg", 1)
    assert changes == only(mesh, problems_set={TCP: problem})
    assert mesh.state.listeners == {}


# -- last good values --------------------------------------------------------------------------


def test_bad_update_keeps_the_last_good_service_and_fixing_clears_the_problem() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()))
    good = mesh.state.services[WEB]

    changes = mesh.put((SVC, {"port": 8080, "wieght": 1}))
    problem = mesh.state.problems[SVC]
    assert problem.last_good_kept
    assert (problem.key, problem.field, problem.revision) == (SVC, "wieght", 2)
    assert problem.message.endswith("; last good value kept")
    assert changes == only(mesh, problems_set={SVC: problem})
    assert mesh.state.services == {WEB: good}

    changes = mesh.put((SVC, b"{not json"))  # a second bad value: still the first good one
    assert mesh.state.problems[SVC].last_good_kept
    assert mesh.state.problems[SVC].revision == 3
    assert changes == only(mesh, problems_set={SVC: mesh.state.problems[SVC]})
    assert mesh.state.services == {WEB: good}

    changes = mesh.put((SVC, web(port=9090)))
    assert changes == only(mesh, services={WEB}, problems_cleared={SVC})
    assert mesh.state.services[WEB].port == 9090
    assert mesh.state.problems == {}


def test_bad_update_of_every_kind_keeps_its_last_good_value() -> None:
    mesh = Mesh()
    mesh.put(
        (SVC, web()),
        (EP1, {"address": "10.0.0.1"}),
        (RT, route()),
        (LS, {"port": 10000}),
    )
    good = (dict(mesh.state.endpoints[WEB]), dict(mesh.state.routes), dict(mesh.state.listeners))
    changes = mesh.put(
        (EP1, {"address": "10.0.0.1", "weight": 0}),
        (RT, route({"service": "web", "weight": 0})),
        (LS, {"port": 10000, "protocol": "udp"}),
    )
    assert changes.config_changed is False
    assert set(changes.problems_set) == {EP1, RT, LS}
    assert {k: (p.field, p.last_good_kept) for k, p in mesh.state.problems.items()} == {
        EP1: ("weight", True),
        RT: ("destinations", True),
        LS: ("protocol", True),
    }
    after = (dict(mesh.state.endpoints[WEB]), dict(mesh.state.routes), dict(mesh.state.listeners))
    assert after == good


def test_unresolvable_update_keeps_the_last_good_route() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()), (RT, route()))
    good = mesh.state.routes[RT]
    changes = mesh.put((RT, route({"service": "api"})))
    problem = Problem(RT, "destinations[0].service", "unknown service default/api", 3, True)
    assert changes == only(mesh, problems_set={RT: problem})
    assert mesh.state.routes == {RT: good}

    # The service it wants appears: the new value replaces the last good one.
    changes = mesh.put((SVC_API, {}))
    assert changes == only(mesh, services={API}, routes={RT}, problems_cleared={RT})
    assert mesh.state.routes[RT].destinations[0].service == API


def test_a_last_good_route_holds_its_service_too() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()), (RT, route()))
    mesh.put((RT, route({"service": "api"})))
    assert mesh.state.problems[RT].last_good_kept
    changes = mesh.delete(SVC)  # the service of the route's last good value
    assert changes == only(mesh, problems_set={SVC: mesh.state.problems[SVC]})
    assert mesh.state.problems[SVC].last_good_kept
    assert mesh.state.problems[RT].reason == "unknown service default/api"
    assert RT in mesh.state.routes
    # The route's current value comes into force: nothing needs web any more.
    changes = mesh.put((SVC_API, {}))
    assert changes == only(mesh, services={API, WEB}, routes={RT}, problems_cleared={RT, SVC})
    assert list(mesh.state.services) == [API]


def test_unresolvable_endpoint_update_keeps_the_last_good_endpoint() -> None:
    mesh = Mesh()
    mesh.put((SVC, {}), (EP1, {"address": "10.0.0.1", "port": 80}))
    changes = mesh.put((EP1, {"address": "10.0.0.9"}))  # no port, and the service has none
    problem = Problem(EP1, "port", "is required: service default/web has no port", 3, True)
    assert changes == only(mesh, problems_set={EP1: problem})
    assert mesh.state.endpoints[WEB]["w1"].address == "10.0.0.1"


def test_first_value_bad_serves_nothing() -> None:
    mesh = Mesh()
    changes = mesh.put((SVC, {"port": 0}))
    problem = Problem(SVC, "port", "must be at least 1, got 0", 1)
    assert changes == only(mesh, problems_set={SVC: problem})
    assert not problem.last_good_kept
    assert mesh.state.services == {}


def test_deleting_a_key_with_a_kept_value_removes_both() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()))
    mesh.put((SVC, b"[]"))
    changes = mesh.delete(SVC)
    assert changes == only(mesh, services={WEB}, problems_cleared={SVC})
    assert mesh.state.services == {}
    assert mesh.state.problems == {}


def test_deleting_a_rejected_key_clears_its_problem() -> None:
    mesh = Mesh()
    mesh.put((RT, route({"service": "nope"})), ("/mesh/bogus/x", b"{}"))
    assert set(mesh.state.problems) == {RT, "/mesh/bogus/x"}
    changes = mesh.delete(RT, "/mesh/bogus/x")
    assert changes == only(mesh, problems_cleared={RT, "/mesh/bogus/x"})
    assert mesh.state.problems == {}


def test_malformed_keys_are_reported() -> None:
    mesh = Mesh()
    changes = mesh.put(("/mesh/services/Default/web", {}), ("/mesh/listeners/a/b", {"port": 1}))
    assert set(changes.problems_set) == {"/mesh/services/Default/web", "/mesh/listeners/a/b"}
    assert changes.config_changed is False
    assert mesh.state.problems["/mesh/services/Default/web"].field == "key"


# -- exact ChangeSets --------------------------------------------------------------------------


def test_changeset_names_only_what_changed() -> None:
    mesh = Mesh()
    assert mesh.put((SVC, web())) == only(mesh, services={WEB})
    assert mesh.put((EP1, {"address": "10.0.0.1"})) == only(mesh, endpoints={WEB})
    assert mesh.put((LS, {"port": 10000})) == only(mesh, listeners={"public"})
    assert mesh.put((RT, route())) == only(mesh, routes={RT})
    assert mesh.put((SVC_API, {})) == only(mesh, services={API})
    # Changing a service re-checks the routes but reports only what changed in force.
    assert mesh.put((SVC, web(port=9090))) == only(mesh, services={WEB})
    assert mesh.put((EP1, {"address": "10.0.0.2"})) == only(mesh, endpoints={WEB})
    assert mesh.delete(EP1) == only(mesh, endpoints={WEB})
    assert WEB not in mesh.state.endpoints
    assert mesh.delete(RT) == only(mesh, routes={RT})
    assert mesh.delete(LS) == only(mesh, listeners={"public"})


def test_rewriting_the_same_content_changes_nothing() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()), (EP1, {"address": "10.0.0.1"}), (RT, route()), (LS, {"port": 1}))
    # Same meaning, other spelling and new revisions: nothing changes in force.
    changes = mesh.put(
        (SVC, {"subsets": {"v2": {"version": "v2"}, "v1": {"version": "v1"}}, "port": 8080}),
        (EP1, {"weight": 100, "address": "10.0.0.1"}),
        (RT, route(hosts=["*"])),
        (LS, {"port": 1, "address": "0.0.0.0"}),
    )
    assert changes == empty(mesh.revision)


def test_a_new_bad_revision_of_a_bad_key_reports_the_new_problem() -> None:
    mesh = Mesh()
    mesh.put((SVC, {"port": 0}))
    changes = mesh.put((SVC, {"port": 0}))
    assert changes == only(
        mesh, problems_set={SVC: Problem(SVC, "port", "must be at least 1, got 0", 2)}
    )


def test_deleting_an_unknown_key_changes_nothing() -> None:
    mesh = Mesh()
    assert mesh.delete(SVC) == empty(1)


def test_revision_only_grows() -> None:
    mesh = Mesh()
    mesh.put((SVC, {}))
    assert mesh.state.revision == 1
    assert mesh.state.apply(Changes(0, ())) == empty(1)
    assert mesh.state.revision == 1


def test_merge_keeps_the_latest_problem_state() -> None:
    first = ChangeSet(revision=1, services={WEB}, problems_set={RT: Problem(RT, "", "x")})
    second = ChangeSet(revision=2, routes={RT}, problems_cleared={RT})
    first.merge(second)
    assert first == ChangeSet(revision=2, services={WEB}, routes={RT}, problems_cleared={RT})
    again = ChangeSet(revision=3, problems_set={RT: Problem(RT, "", "y")})
    first.merge(again)
    assert first.problems_set == {RT: Problem(RT, "", "y")}
    assert first.problems_cleared == set()
    assert first.config_changed


# -- Reset reconciliation ------------------------------------------------------------------------


def test_first_reset_loads_everything() -> None:
    mesh = Mesh()
    pairs: list[tuple[str, Value]] = [
        (SVC, web()),
        (EP1, {"address": "10.0.0.1"}),
        (RT, route()),
        (LS, {"port": 1}),
        (EP2, b"nope"),
    ]
    mesh.content = {k: Entry(k, raw(v), i + 1) for i, (k, v) in enumerate(pairs)}
    mesh.revision = 9
    changes = mesh.reset()
    assert changes == only(
        mesh,
        services={WEB},
        endpoints={WEB},
        routes={RT},
        listeners={"public"},
        problems_set={EP2: mesh.state.problems[EP2]},
    )
    assert mesh.state.revision == 9


def test_reset_equal_to_the_current_state_changes_nothing() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()), (EP1, {"address": "10.0.0.1"}), (RT, route()), (LS, {"port": 1}))
    mesh.put((EP2, b"nope"), (SVC, b"also bad"), ("/mesh/x/y", b"{}"))
    problems = dict(mesh.state.problems)
    assert mesh.reset() == empty(mesh.revision)
    assert mesh.state.problems == problems


def test_reset_missing_a_key_deletes_it() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()), (EP1, {"address": "10.0.0.1"}), (RT, route({"service": "api"})))
    del mesh.content[EP1]
    del mesh.content[RT]
    changes = mesh.reset()
    assert changes == only(mesh, endpoints={WEB}, problems_cleared={RT})
    assert mesh.state.endpoints == {}
    del mesh.content[SVC]
    assert mesh.reset() == only(mesh, services={WEB})
    assert mesh.state.services == {}


def test_reset_with_a_changed_mod_revision_reparses() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()), (EP1, {"address": "10.0.0.1"}))
    mesh.revision += 5  # changes missed while the watch was down
    mesh.content[EP1] = Entry(EP1, raw({"address": "10.0.0.7"}), mesh.revision)
    mesh.content[EP2] = Entry(EP2, raw({"address": "10.0.0.8"}), mesh.revision)
    mesh.content[SVC] = Entry(SVC, b"{bad", mesh.revision)
    changes = mesh.reset()
    problem = mesh.state.problems[SVC]
    assert problem.last_good_kept
    assert changes == only(mesh, endpoints={WEB}, problems_set={SVC: problem})
    assert {e.address for e in mesh.state.endpoints[WEB].values()} == {"10.0.0.7", "10.0.0.8"}


def test_reset_trusts_an_unchanged_mod_revision() -> None:
    # etcd's mod_revision identifies a value: the same revision is not parsed again.
    mesh = Mesh()
    mesh.put((SVC, web()))
    mesh.content[SVC] = Entry(SVC, raw({"port": 1}), mesh.content[SVC].mod_revision)
    assert mesh.reset() == empty(mesh.revision)
    assert mesh.state.services[WEB].port == 8080


def test_changes_after_a_reset_continue_from_it() -> None:
    mesh = Mesh()
    mesh.put((SVC, web()))
    mesh.reset()
    assert mesh.put((EP1, {"address": "10.0.0.1"})) == only(mesh, endpoints={WEB})
    assert isinstance(mesh.state.endpoints[WEB]["w1"], Endpoint)
    assert isinstance(mesh.state.services[WEB], Service)
    assert mesh.state.listeners == {}
