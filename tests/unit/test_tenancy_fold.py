"""Tenancy rules of routes in the registry fold (docs/security.md, Tenancy): listeners'
``allowed_namespaces``, namespaces' ``export_to``, default hosts owned by their namespace,
a contested host and match kept by the older route, and the cross-namespace route order."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.ingest.refs import contests
from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.ingest.state import RegistryState
from xds_server.model import Route
from xds_server.model.fields import Obj
from xds_server.model.route import parse_route
from xds_server.translate.route import ordered_routes

PREFIX = "/mesh/"
SPLIT = "/mesh/routes/default/web-split"
HIJACK = "/mesh/routes/auth/hijack"


class Registry:
    """Keys with etcd's create revisions, fed to a RegistryState one event at a time."""

    def __init__(self) -> None:
        self.state = RegistryState(PREFIX)
        self.revision = 0
        self.content: dict[str, Entry] = {}

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.revision += 1
        old = self.content.get(key)
        born = old.create_revision if old is not None else self.revision
        data = json.dumps(value).encode()
        self.content[key] = Entry(key, data, self.revision, 0, born)
        self.state.apply(Changes(self.revision, (Event("put", key, data, self.revision, 0, born),)))

    def delete(self, key: str) -> None:
        self.revision += 1
        del self.content[key]
        self.state.apply(Changes(self.revision, (Event("delete", key, b"", self.revision),)))

    def fresh(self) -> RegistryState:
        """A meshd started on this registry (one listing, in key order as etcd lists)."""
        state = RegistryState(PREFIX)
        state.apply(Reset(self.revision, tuple(e for _, e in sorted(self.content.items()))))
        return state

    def reason(self, key: str) -> str:
        problem = self.state.problems.get(key)
        return f"{problem.field}: {problem.reason}" if problem else ""


@pytest.fixture
def reg() -> Registry:
    r = Registry()
    r.put("/mesh/listeners/public", {"port": 10000})
    r.put("/mesh/listeners/internal", {"port": 10001})
    for ns, name in [("default", "web"), ("auth", "login"), ("secret", "vault")]:
        r.put(f"/mesh/services/{ns}/{name}", {"port": 8080})
    r.put(SPLIT, {"listener": "public", "destinations": [{"service": "web"}]})
    return r


def test_a_newer_route_of_another_namespace_cannot_take_a_held_host_and_match(
    reg: Registry,
) -> None:
    reg.put(HIJACK, {"listener": "public", "destinations": [{"service": "login"}]})
    assert set(reg.state.routes) == {SPLIT}
    assert "held by the older route default/web-split" in reg.reason(HIJACK)
    # A listener glob that covers public contests it too; another listener does not.
    reg.put(HIJACK, {"listener": "*", "destinations": [{"service": "login"}]})
    assert HIJACK not in reg.state.routes
    reg.put(HIJACK, {"listener": "internal", "destinations": [{"service": "login"}]})
    assert HIJACK in reg.state.routes and HIJACK not in reg.state.problems
    # More specific paths are what a shared listener admits.
    reg.put(
        HIJACK,
        {
            "listener": "public",
            "match": {"prefix": "/auth"},
            "destinations": [{"service": "login"}],
        },
    )
    assert set(reg.state.routes) == {SPLIT, HIJACK}
    fresh = reg.fresh()
    assert fresh.routes == reg.state.routes and fresh.problems == reg.state.problems


def test_the_owner_leaving_lets_the_next_oldest_in_and_a_restart_agrees(reg: Registry) -> None:
    third = "/mesh/routes/secret/copy"
    reg.put(HIJACK, {"listener": "public", "destinations": [{"service": "login"}]})
    reg.put(third, {"listener": "public", "destinations": [{"service": "vault"}]})
    assert set(reg.state.routes) == {SPLIT}
    assert reg.fresh().routes == reg.state.routes
    reg.delete(SPLIT)
    assert set(reg.state.routes) == {HIJACK}  # the older of the two left
    assert "held by the older route auth/hijack" in reg.reason(third)
    assert reg.fresh().routes == reg.state.routes
    # Put back, default's route is the newest now.
    reg.put(SPLIT, {"listener": "public", "destinations": [{"service": "web"}]})
    assert set(reg.state.routes) == {HIJACK}
    assert "held by the older route auth/hijack" in reg.reason(SPLIT)


def test_a_rejected_edit_keeps_the_last_good_value(reg: Registry) -> None:
    good = {
        "listener": "public",
        "match": {"prefix": "/auth"},
        "destinations": [{"service": "login"}],
    }
    reg.put(HIJACK, good)
    reg.put(HIJACK, {"listener": "public", "destinations": [{"service": "login"}]})
    assert reg.state.routes[HIJACK].match.value == "/auth"
    problem = reg.state.problems[HIJACK]
    assert problem.last_good_kept and "default/web-split" in problem.reason


@pytest.mark.parametrize(
    "host",
    [
        "web.default",
        "web.default:10000",
        "web.default:8080",
        "*.default",
        "*.default:10000",
        "*t",
        "*0",
        "*-web.default",
        "*default",
    ],
)
def test_other_namespaces_default_hosts_cannot_be_claimed(reg: Registry, host: str) -> None:
    reg.put(
        HIJACK,
        {
            "listener": "*",
            "hosts": [host],
            "match": {"prefix": "/x"},
            "destinations": [{"service": "login"}],
        },
    )
    assert HIJACK not in reg.state.routes
    assert reg.state.problems[HIJACK].field == "hosts[0]"
    assert "default" in reg.reason(HIJACK) or "every namespace" in reg.reason(HIJACK)


@pytest.mark.parametrize(
    "host",
    [
        "login.auth",
        "*.auth",
        "*.auth:10000",
        "*.example.com",
        "shop.example.com",
        "example.com",
        "web.*",
        "*",
    ],
)
def test_own_and_neutral_hosts_are_fine(reg: Registry, host: str) -> None:
    reg.put(
        HIJACK,
        {
            "listener": "*",
            "hosts": [host],
            "match": {"prefix": "/x"},
            "destinations": [{"service": "login"}],
        },
    )
    assert HIJACK in reg.state.routes, reg.reason(HIJACK)


def test_a_service_registered_later_evicts_a_route_claiming_its_host(reg: Registry) -> None:
    reg.put(
        HIJACK, {"listener": "*", "hosts": ["api.default"], "destinations": [{"service": "login"}]}
    )
    assert HIJACK in reg.state.routes
    reg.put("/mesh/services/default/api", {"port": 80})
    assert HIJACK not in reg.state.routes
    assert "default host of service default/api" in reg.reason(HIJACK)


def test_export_to_limits_who_sends_to_a_namespace_and_withdrawing_it_applies(
    reg: Registry,
) -> None:
    to_vault = {
        "listener": "public",
        "match": {"prefix": "/vault"},
        "destinations": [{"service": "secret/vault"}],
    }
    reg.put("/mesh/routes/default/vault", to_vault)
    assert "/mesh/routes/default/vault" in reg.state.routes
    reg.put("/mesh/namespaces/secret", {"export_to": ["default"]})
    assert "/mesh/routes/default/vault" in reg.state.routes
    reg.put(HIJACK, {**to_vault, "match": {"prefix": "/v2"}})
    assert HIJACK not in reg.state.routes
    assert reg.state.problems[HIJACK].field == "destinations[0].service"
    assert "namespace secret does not export to namespace auth" in reg.reason(HIJACK)
    mirror = {
        "listener": "public",
        "match": {"prefix": "/m"},
        "destinations": [{"service": "login"}],
        "mirror": {"service": "secret/vault"},
    }
    reg.put(HIJACK, mirror)
    assert reg.state.problems[HIJACK].field == "mirror.service"
    # Withdrawn, it takes effect (not held like a service): default's route leaves force.
    reg.put("/mesh/namespaces/secret", {"export_to": []})
    assert "/mesh/routes/default/vault" not in reg.state.routes
    assert "does not export to namespace default" in reg.reason("/mesh/routes/default/vault")
    reg.delete("/mesh/namespaces/secret")  # no entry: exports to every namespace
    assert {"/mesh/routes/default/vault", HIJACK} <= set(reg.state.routes)


def test_allowed_namespaces_names_the_listener(reg: Registry) -> None:
    reg.put(
        HIJACK, {"listener": "*", "match": {"prefix": "/a"}, "destinations": [{"service": "login"}]}
    )
    assert HIJACK in reg.state.routes
    reg.put("/mesh/listeners/public", {"port": 10000, "allowed_namespaces": ["default", "shop-*"]})
    assert HIJACK not in reg.state.routes and SPLIT in reg.state.routes
    assert reg.state.problems[HIJACK].field == "listener"
    assert "listener public does not admit routes of namespace auth" in reg.reason(HIJACK)
    reg.put(
        HIJACK,
        {"listener": "internal", "match": {"prefix": "/a"}, "destinations": [{"service": "login"}]},
    )
    assert HIJACK in reg.state.routes
    fresh = reg.fresh()
    assert fresh.routes == reg.state.routes and fresh.problems == reg.state.problems


def _route(ns: str, name: str, spec: dict[str, Any], created: int) -> Route:
    return parse_route(ns, name, Obj(spec), created=created)


def test_priority_orders_routes_within_a_namespace_only() -> None:
    dest = [{"service": "web"}]
    catch_all = _route(
        "auth", "all", {"listener": "public", "priority": 1000, "destinations": dest}, 50
    )
    exact = _route(
        "auth", "exact", {"listener": "public", "match": {"path": "/x"}, "destinations": dest}, 51
    )
    api = _route(
        "default",
        "api",
        {"listener": "public", "match": {"prefix": "/api"}, "destinations": dest},
        90,
    )
    shop = {"listener": "public", "match": {"prefix": "/api", "headers": {"x": "1"}}}
    api_old = _route("shop", "api", {**shop, "destinations": dest}, 10)
    order = [r.key_name for r in ordered_routes([catch_all, exact, api, api_old])]
    # auth's catch-all (priority 1000) stays before auth's own exact path, but after
    # the longer prefixes of other namespaces; equal specificity goes to the older.
    assert order == ["shop/api", "default/api", "auth/all", "auth/exact"]
    # One namespace: priority first, as before.
    assert [r.key_name for r in ordered_routes([exact, catch_all])] == ["auth/all", "auth/exact"]


_NAMES = [f"/mesh/routes/{ns}/r{i}" for ns in ("a", "b", "c") for i in range(2)]
_SPECS = [
    {"listener": listener, "hosts": [host], "match": match}
    for listener in ("public", "*", "internal")
    for host in ("*", "x.example.com")
    for match in ({"prefix": "/"}, {"prefix": "/p"})
]


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(_NAMES), st.integers(0, len(_SPECS))), max_size=14))
def test_who_holds_a_contested_claim_depends_on_the_registry_not_its_history(
    ops: list[tuple[str, int]],
) -> None:
    # Keys are created or deleted, never edited (an edit keeps a last good value that a
    # fresh start cannot know): then a meshd that saw every step serves what a meshd
    # started on the result serves, and no two namespaces hold one claim.
    r = Registry()
    r.put("/mesh/listeners/public", {"port": 10000})
    r.put("/mesh/listeners/internal", {"port": 10001})
    for ns in ("a", "b", "c"):
        r.put(f"/mesh/services/{ns}/s", {"port": 80})
    for key, spec in ops:
        if key in r.content:
            r.delete(key)
        elif spec < len(_SPECS):
            r.put(key, {**_SPECS[spec], "destinations": [{"service": "s"}]})
        fresh = r.fresh()
        assert fresh.routes == r.state.routes
        assert fresh.problems == r.state.problems
        held = list(r.state.routes.values())
        assert not any(contests(one, other) for one in held for other in held)
