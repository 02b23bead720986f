"""Authorization policies: parsing (every error names its field) and the one decision rule
(``decide``) that ``meshctl policy check`` answers with and Envoy's RBAC is compiled from."""

from __future__ import annotations

import json
from typing import Any

import pytest

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj
from xds_server.model.identity import gateway, parse_identity
from xds_server.model.names import ServiceRef
from xds_server.model.policy import Policy, decide, parse_policy

USER = ServiceRef("auth", "user-service")
WEB = parse_identity("shop/web", "t")
CART = parse_identity("shop/cart", "t")
PUBLIC = gateway("public")


def policy(name: str, value: dict[str, Any], namespace: str = "auth") -> Policy:
    return parse_policy(namespace, name, Obj(json.loads(json.dumps(value))))


def test_parse_full_policy() -> None:
    p = policy(
        "web-reads",
        {
            "target": "user-service",
            "action": "allow",
            "from": [{"identities": ["shop/web", "gateway:public", "shop/*"]}],
            "to": [{"paths": ["/api/*", "/health"], "methods": ["GET", "HEAD"]}],
        },
    )
    assert p.key_name == "auth/web-reads"
    assert p.selects(USER) and not p.selects(ServiceRef("auth", "other"))
    assert p.sources is not None and len(p.sources[0]) == 3
    assert p.rules is not None and p.rules[0].paths == ("/api/*", "/health")


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"action": "allow"}, "target"),
        ({"target": "Bad_Name", "action": "allow"}, "target"),
        ({"target": "x"}, "action"),
        ({"target": "x", "action": "permit"}, "action"),
        ({"target": "x", "action": "allow", "from": []}, "from"),
        ({"target": "x", "action": "allow", "from": [{}]}, "from[0].identities"),
        (
            {"target": "x", "action": "allow", "from": [{"identities": ["web"]}]},
            "from[0].identities[0]",
        ),
        (
            {"target": "x", "action": "allow", "from": [{"identities": [3]}]},
            "from[0].identities[0]",
        ),
        (
            {"target": "x", "action": "allow", "from": [{"identities": ["a/b"], "ids": 1}]},
            "from[0].ids",
        ),
        ({"target": "x", "action": "allow", "to": [{"paths": ["api"]}]}, "to[0].paths[0]"),
        ({"target": "x", "action": "allow", "to": [{"paths": ["/a*b"]}]}, "to[0].paths[0]"),
        ({"target": "x", "action": "allow", "to": [{"paths": ["/a?x=1"]}]}, "to[0].paths[0]"),
        ({"target": "x", "action": "allow", "to": [{"methods": ["get"]}]}, "to[0].methods[0]"),
        ({"target": "x", "action": "allow", "to": [{"methods": ["FETCH"]}]}, "to[0].methods[0]"),
        ({"target": "x", "action": "allow", "to": {"paths": ["/"]}}, "to"),
        ({"target": "x", "action": "allow", "other": 1}, "other"),
    ],
)
def test_bad_policies_name_the_field(value: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        policy("p", value)
    assert err.value.field == field


def test_no_policy_the_namespace_default_decides() -> None:
    assert decide([], USER, WEB).allowed
    got = decide([], USER, WEB, default_policy="deny")
    assert not got.allowed and got.policy == "" and "default policy of namespace auth" in got.reason


def test_deny_wins_over_allow() -> None:
    allow = policy("a-allow", {"target": "*", "action": "allow"})
    deny = policy(
        "z-deny", {"target": "user-service", "action": "deny", "from": [{"identities": ["shop/*"]}]}
    )
    got = decide([allow, deny], USER, WEB)
    assert got == (False, "auth/z-deny", "denied by policy auth/z-deny")
    assert decide([allow, deny], USER, PUBLIC) == (
        True,
        "auth/a-allow",
        "allowed by policy auth/a-allow",
    )


def test_allow_only_lets_only_what_matches() -> None:
    reads = policy(
        "reads",
        {
            "target": "user-service",
            "action": "allow",
            "from": [{"identities": ["shop/web"]}],
            "to": [{"paths": ["/api/*"], "methods": ["GET"]}],
        },
    )
    assert decide([reads], USER, WEB, "/api/users?id=1", "GET").allowed
    assert not decide([reads], USER, WEB, "/api/users", "POST").allowed
    assert not decide([reads], USER, WEB, "/admin", "GET").allowed
    assert not decide([reads], USER, WEB, "/api", "GET").allowed  # '/api/*' is a prefix of '/api/'
    assert not decide([reads], USER, CART, "/api/users", "GET").allowed
    # an allow policy selecting the target overrides even a default of allow
    assert "none matches" in decide([reads], USER, CART, "/api/x", "GET").reason
    # a policy of another service or namespace does not select this one
    other = policy("reads", {"target": "user-service", "action": "allow"}, namespace="shop")
    assert decide([other], USER, CART).allowed
    assert decide([reads], ServiceRef("auth", "other"), CART).allowed


def test_unauthenticated_callers_match_only_policies_without_from() -> None:
    deny_web = policy("d", {"target": "*", "action": "deny", "from": [{"identities": ["*"]}]})
    assert decide([deny_web], USER, None).allowed  # no certificate: no identity to deny
    allow_any = policy("a", {"target": "*", "action": "allow", "to": [{"paths": ["/health"]}]})
    assert decide([allow_any], USER, None, "/health").allowed
    assert not decide([allow_any], USER, None, "/x").allowed


@pytest.mark.parametrize(
    ("pattern", "caller", "matches"),
    [
        ("shop/web", WEB, True),
        ("shop/web", CART, False),
        ("shop/*", CART, True),
        ("shop/*", PUBLIC, False),
        ("gateway:public", PUBLIC, True),
        ("gateway:public", gateway("internal"), False),
        ("*", PUBLIC, True),
        ("*", WEB, True),
    ],
)
def test_identity_patterns(pattern: str, caller: Any, matches: bool) -> None:
    p = policy("p", {"target": "*", "action": "deny", "from": [{"identities": [pattern]}]})
    assert decide([p], USER, caller).allowed is not matches


def test_a_policy_edit_changes_only_its_namespace_inbound_routes() -> None:
    """A policy goes through the pipeline like a route: only the inbound route
    configurations of its namespace's services change (no listener, cluster or endpoint: a
    new listener would leave open connections on the old rules until Envoy drained them),
    and deleting it restores what was there before."""
    from xds_server.ingest.registry import Changes, Event
    from xds_server.ingest.state import RegistryState
    from xds_server.resources.types import LISTENER, ROUTE
    from xds_server.translate.translator import Translator

    state, translator = RegistryState("/mesh/"), Translator()
    sidecar = {"port": 15006, "sidecar": {"inbound_port": 15006, "app_port": 8080}}
    puts = [
        ("/mesh/services/auth/user-service", sidecar),
        ("/mesh/services/shop/web", {**sidecar, "sidecar": {"inbound_port": 15007, "app_port": 1}}),
    ]
    events = tuple(Event("put", k, json.dumps(v).encode(), i) for i, (k, v) in enumerate(puts, 1))
    translator.update(state, state.apply(Changes(2, events)))
    before = translator.served[ROUTE]["inbound|user-service.auth"]
    listener = translator.served[LISTENER]["inbound|user-service.auth"]

    deny = json.dumps({"target": "*", "action": "deny", "from": [{"identities": ["shop/*"]}]})
    put = Event("put", "/mesh/policies/auth/no-shop", deny.encode(), 3)
    delta = translator.update(state, state.apply(Changes(3, (put,))))
    assert {t: set(c) for t, c in delta.changed.items() if c} == {
        ROUTE: {"inbound|user-service.auth"}
    }
    after = translator.served[ROUTE]["inbound|user-service.auth"]
    assert after.version != before.version
    assert translator.served[LISTENER]["inbound|user-service.auth"] is listener

    gone = Event("delete", "/mesh/policies/auth/no-shop", b"", 4)
    delta = translator.update(state, state.apply(Changes(4, (gone,))))
    assert translator.served[ROUTE]["inbound|user-service.auth"].version == before.version
