"""Route ``jwt``, ``api_keys``, ``websocket`` and ``cors``: validation, reference rules,
translation to Envoy's filters, and what proxyless gRPC clients are told."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.golden import PREFIX, to_dict, translate, unpack
from xds_server.admin.proxies import resource_json
from xds_server.errors import ValidationError
from xds_server.ingest.refs import check_route_secrets
from xds_server.ingest.registry import Entry
from xds_server.model.fields import Obj
from xds_server.model.route import Route, parse_route
from xds_server.resources.secrets import REDACTED, dump_any
from xds_server.resources.types import LISTENER, ROUTE
from xds_server.translate.edge import API_KEY_AUTH, CORS, JWT_AUTHN, edge_filters
from xds_server.translate.route import route_entry

JWKS = {"keys": [{"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": "k1"}]}
JWT = {
    "issuer": "https://issuer.example",
    "audiences": ["api"],
    "jwks": {"inline": JWKS},
    "forward_claims": {"sub": "x-user"},
}
CORS_FIELDS = {
    "allow_origins": ["https://app.example", "*"],
    "allow_methods": ["get", "POST"],
    "allow_headers": ["X-Custom"],
    "expose_headers": ["x-trace"],
    "max_age_s": 600,
    "allow_credentials": True,
}


def route(ns: str = "default", **extra: Any) -> Route:
    value = {"listener": "gw", "destinations": [{"service": "web"}], **extra}
    return parse_route(ns, "r", Obj(value))


def refused(**extra: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        route(**extra)
    return info.value


def test_fields_parse() -> None:
    r = route(jwt=JWT, api_keys={"secret": "keys"}, websocket=True, cors=CORS_FIELDS)
    assert r.websocket
    assert r.jwt is not None and r.jwt.issuer == "https://issuer.example"
    assert r.jwt.forward_claims == (("sub", "x-user"),)
    assert json.loads(r.jwt.jwks_inline) == JWKS
    assert r.api_keys is not None
    assert (r.api_keys.secret, r.api_keys.header) == ("default/keys", "x-api-key")
    assert r.cors is not None and r.cors.allow_methods == ("GET", "POST")
    assert r.cors.allow_headers == ("x-custom",)


@pytest.mark.parametrize(
    ("extra", "field", "text"),
    [
        ({"websocket": "yes"}, "websocket", "true or false"),
        ({"jwt": {**JWT, "isuer": "x"}}, "jwt.isuer", "did you mean 'issuer'"),
        ({"jwt": {**JWT, "jwks": {}}}, "jwt.jwks", "exactly one of inline, secret"),
        ({"jwt": {**JWT, "jwks": {"inline": {"keys": []}}}}, "jwt.jwks.inline.keys", "at least"),
        (
            {"jwt": {**JWT, "jwks": {"inline": {"keys": [{"kty": "DSA"}]}}}},
            "jwt.jwks.inline.keys[0].kty",
            "unknown key type",
        ),
        ({"jwt": {**JWT, "issuer": ""}}, "jwt.issuer", "must not be empty"),
        ({"jwt": {**JWT, "forward_claims": {"sub": ":path"}}}, "jwt.forward_claims.sub", "header"),
        ({"api_keys": {"secret": "a/b/c"}}, "api_keys.secret", "namespace/name"),
        ({"api_keys": {"secret": "k", "header": "Host"}}, "api_keys.header", "reserved"),
        ({"api_keys": {"secrets": "k"}}, "api_keys.secrets", "did you mean 'secret'"),
        ({"cors": {"allow_origin": ["*"]}}, "cors.allow_origin", "did you mean 'allow_origins'"),
        ({"cors": {"allow_origins": []}}, "cors.allow_origins", "at least one origin"),
        ({"cors": {"allow_origins": ["app.example"]}}, "cors.allow_origins[0]", "not an origin"),
        (
            {"cors": {"allow_origins": ["*"], "allow_methods": ["FETCH"]}},
            "cors.allow_methods[0]",
            "",
        ),
        ({"cors": {"allow_origins": ["*"], "max_age_s": -1}}, "cors.max_age_s", "at least 0"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(
    extra: dict[str, Any], field: str, text: str
) -> None:
    error = refused(**extra)
    assert error.field == field, error
    assert text in str(error)


@dataclass(frozen=True)
class FakeSecret:
    kind: str
    jwks_json: str = ""
    api_keys: tuple[tuple[str, str], ...] = ()


def test_a_route_reads_only_its_namespace_secrets_and_those_in_force() -> None:
    keys = route(api_keys={"secret": "other/keys"})
    problem = check_route_secrets(keys, None)
    assert problem is not None and problem[0] == "api_keys.secret"
    assert "namespace other" in problem[1]
    own = route(api_keys={"secret": "keys"})
    assert check_route_secrets(own, None) is None
    problem = check_route_secrets(own, {})
    assert problem == ("api_keys.secret", "secret default/keys is not in force")
    problem = check_route_secrets(own, {"default/keys": FakeSecret("jwks")})
    assert problem is not None and "not {" in problem[1]
    assert check_route_secrets(own, {"default/keys": FakeSecret("keys")}) is None
    jwt = route(jwt={**JWT, "jwks": {"secret": "other/jwks"}})
    problem = check_route_secrets(jwt, {"other/jwks": FakeSecret("jwks")})
    assert problem is not None and problem[0] == "jwt.jwks.secret"


def test_route_entry_carries_each_setting() -> None:
    r = route(jwt=JWT, api_keys={"secret": "keys"}, websocket=True, cors=CORS_FIELDS)
    entry = to_dict(route_entry(r, (), (("alice", "k-alice"),)))
    assert entry["route"]["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    per = entry["typed_per_filter_config"]
    assert per[JWT_AUTHN]["requirement_name"] == "default/r"
    assert per[API_KEY_AUTH]["credentials"] == [{"key": "k-alice", "client": "alice"}]
    assert per[API_KEY_AUTH]["forwarding"] == {"header": "x-client-name", "hide_credentials": True}
    assert per[API_KEY_AUTH]["key_sources"] == [{"header": "x-api-key"}]
    origins = per[CORS]["allow_origin_string_match"]
    assert origins == [{"exact": "https://app.example"}, {"safe_regex": {"regex": ".*"}}]
    assert per[CORS]["max_age"] == "600" and per[CORS]["allow_credentials"] is True


def test_edge_filters_hold_one_provider_per_jwt_route() -> None:
    a = route(jwt=JWT)
    b = parse_route(
        "team",
        "b",
        Obj(
            {
                "listener": "gw",
                "destinations": [{"service": "web"}],
                "jwt": JWT,
                "cors": {"allow_origins": ["*"]},
            }
        ),
    )
    filters = edge_filters([a, b], {})
    assert [f.name for f in filters] == [CORS, JWT_AUTHN]
    jwt = to_dict(filters[1])["typed_config"]
    assert set(jwt["providers"]) == {"default/r", "team/b"}
    assert jwt["requirement_map"]["team/b"] == {"provider_name": "team/b"}
    provider = jwt["providers"]["default/r"]
    assert provider["claim_to_headers"] == [{"header_name": "x-user", "claim_name": "sub"}]
    assert json.loads(provider["local_jwks"]["inline_string"]) == JWKS
    assert edge_filters([route(websocket=True)], {}) == []


def _entries(registry: dict[str, Any]) -> tuple[Entry, ...]:
    return tuple(
        Entry(PREFIX + key, json.dumps(value).encode(), i)
        for i, (key, value) in enumerate(registry.items(), start=1)
    )


BASE = {
    "services/default/web": {"protocol": "http", "port": 8080},
    "listeners/gw": {"port": 10000, "protocol": "http", "nodes": ["*"]},
    "listeners/plain": {"port": 10001, "protocol": "http", "nodes": ["*"]},
}


def _hcm_filters(translator: Any, name: str) -> list[str]:
    listener = to_dict(unpack(translator.served[LISTENER][name]))
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [f["name"] for f in hcm["http_filters"]]


def test_only_listeners_whose_routes_use_them_get_the_edge_filters() -> None:
    registry = {
        **BASE,
        "routes/default/auth": {
            "listener": "gw",
            "destinations": [{"service": "web"}],
            "jwt": JWT,
            "websocket": True,
        },
    }
    _, translator, _ = translate(_entries(registry))
    assert _hcm_filters(translator, "gw")[0] == JWT_AUTHN
    assert JWT_AUTHN not in _hcm_filters(translator, "plain")
    routes = to_dict(unpack(translator.served[ROUTE]["gw"]))
    entry = next(
        r for vh in routes["virtual_hosts"] for r in vh["routes"] if r["name"] == "default/auth"
    )
    assert entry["typed_per_filter_config"][JWT_AUTHN]["requirement_name"] == "default/auth"


def test_proxyless_clients_are_not_served_a_route_they_cannot_authenticate() -> None:
    registry = {
        "services/default/api": {"protocol": "grpc", "port": 9000},
        "services/default/feed": {"protocol": "grpc", "port": 9001},
        "routes/default/auth": {
            "listener": "*",
            "hosts": ["api.default"],
            "destinations": [{"service": "api"}],
            "jwt": JWT,
        },
        "routes/default/cors": {
            "listener": "*",
            "hosts": ["feed.default"],
            "destinations": [{"service": "feed"}],
            "cors": {"allow_origins": ["*"]},
            "websocket": True,
        },
    }
    _, translator, _ = translate(_entries(registry))
    assert "api.default" not in translator.served[LISTENER]  # never served unauthenticated
    assert "feed.default" in translator.served[ROUTE]
    feed = to_dict(unpack(translator.served[ROUTE]["feed.default"]))
    entry = feed["virtual_hosts"][0]["routes"][0]
    assert CORS not in entry.get("typed_per_filter_config", {})
    assert "upgrade_configs" not in entry["route"]
    notes = {n.key.rsplit("/", 1)[1]: n for n in translator.notes.values()}
    assert notes["auth"].field == "jwt"
    assert "cannot enforce JWT authentication" in notes["auth"].reason
    assert "xds:///api.default not served" in notes["auth"].reason
    # (a key shows one problem: of the route's two notes, one is shown)
    assert (notes["cors"].field, notes["cors"].reason.split(":")[0]) in {
        ("cors", "proxyless gRPC clients run no CORS filter (no browser calls them)"),
        ("websocket", "proxyless gRPC clients speak HTTP/2 only, with no WebSocket upgrade"),
    }


def test_dumps_redact_api_keys() -> None:
    """The keys reach Envoy in the route configuration; CSDS and the admin API's proxy
    config (both through dump_any) show the clients, never a key."""
    registry = {
        **BASE,
        "secrets/default/keys": {"keys": {"alice": "k-alice-0123456789"}},
        "routes/default/keyed": {
            "listener": "gw",
            "destinations": [{"service": "web"}],
            "api_keys": {"secret": "keys"},
        },
    }
    state, translator, _ = translate(_entries(registry))
    assert not state.problems, state.problems
    served = translator.served[ROUTE]["gw"]
    assert b"k-alice-0123456789" in served.body  # (what Envoy gets)
    dumped = dump_any(served)
    assert b"k-alice-0123456789" not in dumped.value
    assert b"alice" in dumped.value and REDACTED.encode() in dumped.value
    assert "k-alice-0123456789" not in resource_json(served)


def test_a_route_naming_a_missing_secret_is_rejected_naming_the_field() -> None:
    registry = {
        **BASE,
        "routes/default/keyed": {
            "listener": "gw",
            "destinations": [{"service": "web"}],
            "api_keys": {"secret": "nope"},
        },
    }
    state, _, _ = translate(_entries(registry))
    problem = state.problems[PREFIX + "routes/default/keyed"]
    assert problem.field == "api_keys.secret" and "not in force" in problem.reason
