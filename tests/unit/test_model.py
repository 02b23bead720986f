"""The validated model against every rule of the registry contract (registry.md)."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xds_server.model import (
    CircuitBreaker,
    Destination,
    Endpoint,
    Entity,
    HealthCheck,
    KeyRef,
    Listener,
    LoadBalancer,
    Match,
    OutlierDetection,
    Problem,
    RateLimit,
    Retries,
    Route,
    Service,
    ServiceRef,
    SessionAffinity,
    parse_entry,
    parse_key,
    status_error_key,
)
from xds_server.model.endpoint import canonical_ip, is_ip
from xds_server.model.fields import MAX_VALUE_BYTES
from xds_server.model.names import _ENDPOINT_ID, _endpoint_id_ok

PREFIX = "/mesh/"
SVC = "/mesh/services/default/web"
EP = "/mesh/endpoints/default/web/web-1"
RT = "/mesh/routes/default/r"
LS = "/mesh/listeners/public"
WEB = ServiceRef("default", "web")
MINIMAL: dict[str, dict[str, Any]] = {
    SVC: {},
    EP: {"address": "10.0.0.1"},
    RT: {"listener": "public", "destinations": [{"service": "web"}]},
    LS: {"port": 10000},
}


def encode(value: object) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def parse(key: str, value: object, *, revision: int = 0, lease: int = 0) -> Entity | Problem:
    _, result = parse_entry(key, encode(value), PREFIX, revision=revision, lease=lease)
    return result


def ok(key: str, value: object) -> Entity:
    result = parse(key, value)
    assert not isinstance(result, Problem), result
    return result


def bad(key: str, value: object, field: str, *fragments: str) -> Problem:
    """Assert ``value`` is rejected with ``field`` and every fragment in the reason."""
    result = parse(key, value)
    assert isinstance(result, Problem), f"accepted: {result}"
    assert result.key == key
    assert result.field == field, result
    for fragment in fragments:
        assert fragment in result.reason, result
    return result


def with_(key: str, **fields: object) -> dict[str, Any]:
    return {**MINIMAL[key], **fields}


# -- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "ref"),
    [
        (SVC, KeyRef("services", "default", "web")),
        ("/mesh/services/auth/user-service", KeyRef("services", "auth", "user-service")),
        (EP, KeyRef("endpoints", "default", "web-1", "web")),
        ("/mesh/endpoints/a/b/10.0.0.1:8080", KeyRef("endpoints", "a", "10.0.0.1:8080", "b")),
        ("/mesh/endpoints/a/b/Pod.X-1", KeyRef("endpoints", "a", "Pod.X-1", "b")),
        (RT, KeyRef("routes", "default", "r")),
        (LS, KeyRef("listeners", "", "public")),
        ("/mesh/services/" + "a" * 63 + "/x", KeyRef("services", "a" * 63, "x")),
        ("/mesh/services/0/9-9", KeyRef("services", "0", "9-9")),
    ],
)
def test_valid_keys(key: str, ref: KeyRef) -> None:
    assert parse_key(key, PREFIX) == ref
    assert parse_entry(key, encode(MINIMAL.get(key, {})), PREFIX)[0] == ref


def test_key_ref_names_the_service() -> None:
    assert parse_key(EP, PREFIX).service_ref == WEB
    assert parse_key(SVC, PREFIX).service_ref == WEB


@pytest.mark.parametrize(
    ("key", "field", "fragment"),
    [
        ("/other/services/default/web", "", "outside the prefix"),
        ("/mesh/widgets/default/web", "", "unknown kind 'widgets'"),
        ("/mesh/secrets/web", "", "secrets/<ns>/<name>"),
        ("/mesh/status/errors/services/default/web", "", "unknown kind 'status'"),
        ("/mesh/services/web", "", "services/<ns>/<name>"),
        ("/mesh/services/default/web/extra", "", "services/<ns>/<name>"),
        ("/mesh/services//web", "", "services/<ns>/<name>"),
        ("/mesh/services/default/", "", "services/<ns>/<name>"),
        ("/mesh/endpoints/default/web", "", "endpoints/<ns>/<service>/<id>"),
        ("/mesh/endpoints/default/web/a/b", "", "endpoints/<ns>/<service>/<id>"),
        ("/mesh/routes/r", "", "routes/<ns>/<name>"),
        ("/mesh/listeners/default/public", "", "listeners/<name>"),
        ("/mesh/listeners/", "", "listeners/<name>"),
        ("/mesh/services/Default/web", "key", "'Default' is not a DNS-1123 label"),
        ("/mesh/services/default/Web", "key", "'Web' is not a DNS-1123 label"),
        ("/mesh/services/default/web_1", "key", "DNS-1123"),
        ("/mesh/services/default/-web", "key", "DNS-1123"),
        ("/mesh/services/default/web-", "key", "DNS-1123"),
        ("/mesh/services/default/web.x", "key", "DNS-1123"),
        ("/mesh/services/default/" + "a" * 64, "key", "max 63"),
        ("/mesh/services/default/web\n", "key", "DNS-1123"),
        ("/mesh/routes/default/R", "key", "DNS-1123"),
        ("/mesh/listeners/Public", "key", "DNS-1123"),
        ("/mesh/endpoints/default/Web/a", "key", "DNS-1123"),
        ("/mesh/endpoints/default/web/a b", "key", "endpoint id 'a b'"),
        ("/mesh/endpoints/default/web/-a", "key", "endpoint id"),
        ("/mesh/endpoints/default/web/a\n", "key", "endpoint id"),
    ],
)
def test_malformed_keys_are_problems_without_a_ref(key: str, field: str, fragment: str) -> None:
    ref, result = parse_entry(key, b"{}", PREFIX, revision=7)
    assert ref is None
    assert isinstance(result, Problem)
    assert (result.key, result.field, result.revision) == (key, field, 7)
    assert fragment in result.reason


def test_other_prefix() -> None:
    ref, result = parse_entry("/other/listeners/l", b'{"port": 1}', "/other/")
    assert ref == KeyRef("listeners", "", "l")
    assert result == Listener("l", port=1)
    assert isinstance(parse_entry(LS, b'{"port": 1}', "/other/")[1], Problem)


def test_status_error_key() -> None:
    assert status_error_key(SVC, PREFIX) == "/mesh/status/errors/services/default/web"
    assert status_error_key(EP, PREFIX) == "/mesh/status/errors/endpoints/default/web/web-1"


# -- decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b"{'port': 1}", "invalid JSON"),
        (b'{"port": 1} {}', "invalid JSON"),
        (b"[]", "must be a JSON object, not an array"),
        (b'"web"', "not a string"),
        (b"42", "not a number"),
        (b"null", "not null"),
        (b"true", "not a boolean"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"protocol": "\xe9"}', "not UTF-8"),
        (b'{"address": "10.0.0.1", "zone": "\xe9"}', "not UTF-8"),  # (the endpoint fast path)
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
@pytest.mark.parametrize("key", [SVC, EP, RT, LS])
def test_undecodable_values(key: str, raw: bytes, fragment: str) -> None:
    ref, result = parse_entry(key, raw, PREFIX, revision=3)
    assert ref == parse_key(key, PREFIX)
    assert isinstance(result, Problem)
    assert (result.key, result.field, result.revision) == (key, "", 3)
    assert fragment in result.reason


def test_value_size_limit_is_one_mebibyte() -> None:
    at_limit = b"{" + b" " * (MAX_VALUE_BYTES - 2) + b"}"
    assert len(at_limit) == MAX_VALUE_BYTES
    assert ok(SVC, at_limit) == Service(WEB)
    over = b"{" + b" " * (MAX_VALUE_BYTES - 1) + b"}"
    problem = bad(SVC, over, "", "1048577 bytes", "over the 1 MiB limit")
    assert problem.message.startswith("value is 1048577 bytes")


def test_problem_message_names_field_and_last_good() -> None:
    problem = bad(SVC, {"port": 0}, "port", "at least 1")
    assert problem.message == "port: must be at least 1, got 0"
    kept = Problem(problem.key, problem.field, problem.reason, 5, last_good_kept=True)
    assert kept.message == "port: must be at least 1, got 0; last good value kept"
    assert Problem(SVC, "", "invalid JSON").message == "invalid JSON"


def test_revision_and_lease_are_carried() -> None:
    result = parse(SVC, {"port": "80"}, revision=42)
    assert isinstance(result, Problem)
    assert result.revision == 42
    assert not result.last_good_kept
    endpoint = parse(EP, {"address": "10.0.0.1"}, lease=99)
    assert isinstance(endpoint, Endpoint)
    assert endpoint.lease == 99


# -- unknown fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "field", "hint"),
    [
        (SVC, {"prtocol": "http"}, "prtocol", "protocol"),
        (SVC, {"load_balancer": {"algoritm": "random"}}, "load_balancer.algoritm", "algorithm"),
        (
            SVC,
            {
                "load_balancer": {
                    "algorithm": "ring_hash",
                    "session_affinity": {"cookie": "s", "ttl": 5},
                }
            },
            "load_balancer.session_affinity.ttl",
            "ttl_ms",
        ),
        (
            SVC,
            {"circuit_breaker": {"max_conections": 1}},
            "circuit_breaker.max_conections",
            "max_connections",
        ),
        (
            SVC,
            {"outlier_detection": {"consecutive5xx": 1}},
            "outlier_detection.consecutive5xx",
            "consecutive_5xx",
        ),
        (SVC, {"health_check": {"pth": "/"}}, "health_check.pth", "path"),
        (EP, with_(EP, wieght=5), "wieght", "weight"),
        (EP, with_(EP, label={}), "label", "labels"),
        (RT, with_(RT, destination=[]), "destination", "destinations"),
        (RT, with_(RT, match={"prefix": "/", "header": {}}), "match.header", "headers"),
        (
            RT,
            with_(RT, destinations=[{"service": "web"}, {"service": "web", "wieght": 1}]),
            "destinations[1].wieght",
            "weight",
        ),
        (
            RT,
            with_(RT, retries={"attempts": 1, "per_try_timeout": 5}),
            "retries.per_try_timeout",
            "per_try_timeout_ms",
        ),
        (
            RT,
            with_(RT, rate_limit={"requests_per_minute": 1, "brust": 1}),
            "rate_limit.brust",
            "burst",
        ),
        (RT, with_(RT, timeout=5), "timeout", "timeout_ms"),
        (LS, with_(LS, node=["*"]), "node", "nodes"),
    ],
)
def test_unknown_fields_are_rejected_with_a_hint(
    key: str, value: dict[str, Any], field: str, hint: str
) -> None:
    problem = bad(key, value, field, "unknown field", f"did you mean {hint!r}?")
    assert problem.message.startswith(f"{field}: unknown field")


def test_unknown_field_without_a_close_match_lists_the_allowed_ones() -> None:
    problem = bad(LS, with_(LS, zzzz=1), "zzzz", "unknown field; allowed: ")
    assert "did you mean" not in problem.reason
    for name in ("address", "nodes", "port", "protocol", "service"):
        assert name in problem.reason


def test_subset_selector_must_be_an_object() -> None:
    bad(SVC, {"subsets": {"v1": "v1"}}, "subsets.v1", "must be an object, not a string")
    bad(SVC, {"subsets": ["v1"]}, "subsets", "must be an object, not an array")


# -- booleans are not numbers, numbers are not strings ------------------------------------

INT_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    (SVC, {"port": True}, "port"),
    (SVC, {"connect_timeout_ms": False}, "connect_timeout_ms"),
    (
        SVC,
        {
            "load_balancer": {
                "algorithm": "maglev",
                "session_affinity": {"cookie": "s", "ttl_ms": True},
            }
        },
        "load_balancer.session_affinity.ttl_ms",
    ),
    (SVC, {"circuit_breaker": {"max_requests": True}}, "circuit_breaker.max_requests"),
    (SVC, {"outlier_detection": {"interval_ms": True}}, "outlier_detection.interval_ms"),
    (SVC, {"health_check": {"healthy_threshold": True}}, "health_check.healthy_threshold"),
    (EP, with_(EP, port=True), "port"),
    (EP, with_(EP, weight=True), "weight"),
    (RT, with_(RT, destinations=[{"service": "web", "weight": True}]), "destinations[0].weight"),
    (RT, with_(RT, timeout_ms=True), "timeout_ms"),
    (RT, with_(RT, priority=False), "priority"),
    (RT, with_(RT, retries={"attempts": True}), "retries.attempts"),
    (RT, with_(RT, rate_limit={"requests_per_minute": True}), "rate_limit.requests_per_minute"),
    (LS, {"port": True}, "port"),
]


@pytest.mark.parametrize(("key", "value", "field"), INT_FIELDS)
def test_booleans_are_not_numbers(key: str, value: dict[str, Any], field: str) -> None:
    bad(key, value, field, "must be an integer, not a boolean")


def test_numbers_must_be_integers() -> None:
    bad(SVC, {"port": "8080"}, "port", "must be an integer, not a string")
    bad(SVC, {"port": 8080.5}, "port", "must be an integer, not a number")
    bad(SVC, {"port": [8080]}, "port", "not an array")
    assert ok(SVC, {"port": 8080.0}) == Service(WEB, port=8080)  # JSON has one number type


def test_booleans_must_be_booleans() -> None:
    bad(EP, with_(EP, draining="false"), "draining", "must be true or false, not a string")
    bad(EP, with_(EP, draining=0), "draining", "must be true or false, not a number")
    bad(SVC, {"health_check": {"every_proxy": 1}}, "health_check.every_proxy", "true or false")


def test_strings_must_be_strings() -> None:
    bad(SVC, {"protocol": 1}, "protocol", "must be a string, not a number")
    bad(RT, with_(RT, listener=["public"]), "listener", "must be a string, not an array")
    bad(RT, with_(RT, hosts="a.com"), "hosts", "must be an array, not a string")
    bad(RT, with_(RT, hosts=["a.com", 1]), "hosts[1]", "must be a string")


# -- Service --------------------------------------------------------------------------------


def test_service_defaults() -> None:
    svc = ok(SVC, {})
    assert svc == Service(WEB)
    assert isinstance(svc, Service)
    assert svc.protocol == "http"
    assert svc.port is None
    assert svc.connect_timeout_ms is None
    assert svc.load_balancer == LoadBalancer("round_robin", None)
    assert (svc.circuit_breaker, svc.outlier_detection, svc.health_check) == (None, None, None)
    assert svc.subsets == ()


def test_service_contract_example() -> None:
    value = {
        "protocol": "http",
        "port": 8080,
        "connect_timeout_ms": 1000,
        "load_balancer": {
            "algorithm": "ring_hash",
            "session_affinity": {"cookie": "SESSIONID", "ttl_ms": 3600000},
        },
        "circuit_breaker": {
            "max_connections": 200,
            "max_pending_requests": 200,
            "max_requests": 1000,
            "max_retries": 3,
        },
        "outlier_detection": {
            "consecutive_5xx": 5,
            "interval_ms": 10000,
            "base_ejection_time_ms": 30000,
            "max_ejection_percent": 50,
        },
        "health_check": {
            "path": "/health",
            "interval_ms": 5000,
            "timeout_ms": 1000,
            "healthy_threshold": 2,
            "unhealthy_threshold": 3,
        },
        "subsets": {"v2": {"version": "v2"}, "v1": {"version": "v1", "tier": "a"}},
    }
    assert ok("/mesh/services/auth/user-service", value) == Service(
        ServiceRef("auth", "user-service"),
        protocol="http",
        port=8080,
        connect_timeout_ms=1000,
        load_balancer=LoadBalancer("ring_hash", SessionAffinity("cookie", "SESSIONID", 3600000)),
        circuit_breaker=CircuitBreaker(200, 200, 1000, 3),
        outlier_detection=OutlierDetection(5, 10000, 30000, 50),
        health_check=HealthCheck("/health", 5000, 1000, 2, 3, every_proxy=False),
        subsets=(("v1", (("tier", "a"), ("version", "v1"))), ("v2", (("version", "v2"),))),
    )


@pytest.mark.parametrize("protocol", ["http", "http2", "grpc", "tcp"])
def test_service_protocols(protocol: str) -> None:
    assert ok(SVC, {"protocol": protocol}) == Service(WEB, protocol=protocol)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["HTTP", "udp", "https", ""])
def test_service_unknown_protocol(protocol: str) -> None:
    bad(SVC, {"protocol": protocol}, "protocol", "must be one of http, http2, grpc, tcp")


@pytest.mark.parametrize(
    "algorithm", ["round_robin", "least_request", "random", "ring_hash", "maglev"]
)
def test_service_algorithms(algorithm: str) -> None:
    svc = ok(SVC, {"load_balancer": {"algorithm": algorithm}})
    assert isinstance(svc, Service)
    assert svc.load_balancer == LoadBalancer(algorithm)  # type: ignore[arg-type]


def test_service_unknown_algorithm() -> None:
    bad(SVC, {"load_balancer": {"algorithm": "RING_HASH"}}, "load_balancer.algorithm", "one of")


@pytest.mark.parametrize("algorithm", ["ring_hash", "maglev"])
@pytest.mark.parametrize(
    ("affinity", "expected"),
    [
        ({"cookie": "SESSIONID", "ttl_ms": 60000}, SessionAffinity("cookie", "SESSIONID", 60000)),
        ({"cookie": "sid"}, SessionAffinity("cookie", "sid", 0)),
        ({"header": "X-User-Id"}, SessionAffinity("header", "x-user-id")),
        ({"source_ip": True}, SessionAffinity("source_ip")),
    ],
)
def test_session_affinity_with_hashing(
    algorithm: str, affinity: dict[str, Any], expected: SessionAffinity
) -> None:
    svc = ok(SVC, {"load_balancer": {"algorithm": algorithm, "session_affinity": affinity}})
    assert isinstance(svc, Service)
    assert svc.load_balancer == LoadBalancer(algorithm, expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["round_robin", "least_request", "random", None])
@pytest.mark.parametrize(
    "affinity", [{"cookie": "sid", "ttl_ms": 1}, {"header": "x-user"}, {"source_ip": True}]
)
def test_session_affinity_needs_ring_hash_or_maglev(
    algorithm: str | None, affinity: dict[str, Any]
) -> None:
    lb: dict[str, Any] = {"session_affinity": affinity}
    if algorithm:
        lb["algorithm"] = algorithm
    bad(
        SVC,
        {"load_balancer": lb},
        "load_balancer.session_affinity",
        f"needs algorithm ring_hash or maglev, not {algorithm or 'round_robin'}",
    )


@pytest.mark.parametrize(
    ("affinity", "field", "fragment"),
    [
        ({}, "load_balancer.session_affinity", "exactly one of cookie, header, source_ip"),
        (
            {"cookie": "a", "header": "b"},
            "load_balancer.session_affinity",
            "exactly one of cookie, header, source_ip",
        ),
        ({"source_ip": False}, "load_balancer.session_affinity.source_ip", "must be true"),
        ({"source_ip": "yes"}, "load_balancer.session_affinity.source_ip", "true or false"),
        ({"cookie": ""}, "load_balancer.session_affinity.cookie", "not a valid cookie name"),
        ({"cookie": "a b"}, "load_balancer.session_affinity.cookie", "not a valid cookie name"),
        ({"cookie": "a", "ttl_ms": -1}, "load_balancer.session_affinity.ttl_ms", "at least 0"),
        ({"header": ""}, "load_balancer.session_affinity.header", "not a valid header name"),
        ({"header": "x:y"}, "load_balancer.session_affinity.header", "not a valid header name"),
        ({"header": "x", "ttl_ms": 1}, "load_balancer.session_affinity.ttl_ms", "unknown field"),
        ({"cookie": None}, "load_balancer.session_affinity.cookie", "is required"),
    ],
)
def test_session_affinity_errors(affinity: dict[str, Any], field: str, fragment: str) -> None:
    bad(
        SVC,
        {"load_balancer": {"algorithm": "ring_hash", "session_affinity": affinity}},
        field,
        fragment,
    )


@pytest.mark.parametrize(("port", "good"), [(1, True), (65535, True), (0, False), (65536, False)])
def test_service_port_range(port: int, good: bool) -> None:
    if good:
        assert ok(SVC, {"port": port}) == Service(WEB, port=port)
    else:
        bad(SVC, {"port": port}, "port", "must be at")


def test_service_durations() -> None:
    bad(SVC, {"connect_timeout_ms": 0}, "connect_timeout_ms", "at least 1")
    bad(SVC, {"connect_timeout_ms": 365 * 24 * 3600 * 1000 + 1}, "connect_timeout_ms", "at most")
    assert ok(SVC, {"connect_timeout_ms": 1}) == Service(WEB, connect_timeout_ms=1)


def test_circuit_breaker_unset_limits_stay_unset() -> None:
    svc = ok(SVC, {"circuit_breaker": {"max_requests": 5}})
    assert isinstance(svc, Service)
    assert svc.circuit_breaker == CircuitBreaker(max_requests=5)
    svc = ok(SVC, {"circuit_breaker": {}})
    assert isinstance(svc, Service)
    assert svc.circuit_breaker == CircuitBreaker(None, None, None, None)


def test_circuit_breaker_ranges() -> None:
    assert ok(SVC, {"circuit_breaker": {"max_retries": 0}}) == Service(
        WEB, circuit_breaker=CircuitBreaker(max_retries=0)
    )
    for name in ("max_connections", "max_pending_requests", "max_requests"):
        bad(SVC, {"circuit_breaker": {name: 0}}, f"circuit_breaker.{name}", "at least 1")
    bad(SVC, {"circuit_breaker": {"max_retries": -1}}, "circuit_breaker.max_retries", "at least")
    bad(SVC, {"circuit_breaker": {"max_requests": 2**31}}, "circuit_breaker.max_requests", "most")
    bad(SVC, {"circuit_breaker": 5}, "circuit_breaker", "must be an object, not a number")


def test_outlier_detection_ranges() -> None:
    assert ok(SVC, {"outlier_detection": {"max_ejection_percent": 100}}) == Service(
        WEB, outlier_detection=OutlierDetection(max_ejection_percent=100)
    )
    bad(
        SVC,
        {"outlier_detection": {"max_ejection_percent": 101}},
        "outlier_detection.max_ejection_percent",
        "at most 100",
    )
    bad(
        SVC,
        {"outlier_detection": {"consecutive_5xx": 0}},
        "outlier_detection.consecutive_5xx",
        "at least 1",
    )
    bad(
        SVC,
        {"outlier_detection": {"base_ejection_time_ms": 0}},
        "outlier_detection.base_ejection_time_ms",
        "at least 1",
    )


def test_health_check_defaults_and_errors() -> None:
    svc = ok(SVC, {"health_check": {}})
    assert isinstance(svc, Service)
    assert svc.health_check == HealthCheck("/health", 5000, 1000, 2, 3, every_proxy=False)
    svc = ok(SVC, {"health_check": {"path": "/ready", "every_proxy": True}})
    assert isinstance(svc, Service)
    assert svc.health_check == HealthCheck(path="/ready", every_proxy=True)
    bad(SVC, {"health_check": {"path": "health"}}, "health_check.path", "must start with '/'")
    bad(SVC, {"health_check": {"path": "/a\nb"}}, "health_check.path", "control characters")
    bad(SVC, {"health_check": {"interval_ms": 0}}, "health_check.interval_ms", "at least 1")
    bad(SVC, {"health_check": {"timeout_ms": 0}}, "health_check.timeout_ms", "at least 1")
    bad(
        SVC,
        {"health_check": {"unhealthy_threshold": 0}},
        "health_check.unhealthy_threshold",
        "at least 1",
    )


def test_subsets_are_sorted_and_validated() -> None:
    svc = ok(SVC, {"subsets": {"v2": {"version": "v2"}, "v1": {"version": "v1"}}})
    assert isinstance(svc, Service)
    assert svc.subset_names == ("v1", "v2")
    assert svc.selector("v1") == (("version", "v1"),)
    assert svc.selector("v3") is None
    bad(SVC, {"subsets": {"V1": {"version": "v1"}}}, "subsets.V1", "DNS-1123")
    bad(SVC, {"subsets": {"v1": {}}}, "subsets.v1", "at least one label")
    bad(SVC, {"subsets": {"v1": {"version": 1}}}, "subsets.v1.version", "must be strings")


# -- Endpoint -----------------------------------------------------------------------------


def test_endpoint_defaults() -> None:
    assert ok(EP, {"address": "10.0.0.1"}) == Endpoint(
        service=WEB,
        id="web-1",
        address="10.0.0.1",
        port=None,
        weight=100,
        labels=(),
        zone="",
        draining=False,
    )


def test_endpoint_contract_example() -> None:
    value = {
        "address": "127.0.0.1",
        "port": 8081,
        "weight": 100,
        "labels": {"version": "v1", "app.kubernetes.io/name": "web"},
        "zone": "zone-a",
        "draining": True,
    }
    assert ok("/mesh/endpoints/auth/user-service/i-1", value) == Endpoint(
        service=ServiceRef("auth", "user-service"),
        id="i-1",
        address="127.0.0.1",
        port=8081,
        weight=100,
        labels=(("app.kubernetes.io/name", "web"), ("version", "v1")),
        zone="zone-a",
        draining=True,
    )


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
        ("2001:DB8:0:0::0001", "2001:db8::1"),
        ("backend.example.com", "backend.example.com"),
        ("Backend.Example.COM.", "backend.example.com"),
        ("localhost", "localhost"),
    ],
)
def test_endpoint_addresses(address: str, stored: str) -> None:
    endpoint = ok(EP, {"address": address})
    assert isinstance(endpoint, Endpoint)
    assert endpoint.address == stored
    assert endpoint.is_ip == (stored[0].isdigit() or ":" in stored)


_ADDRESSES = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: ip.exploded.upper()),
    st.from_regex(r"[A-Za-z0-9][-A-Za-z0-9.]{0,20}\.?", fullmatch=True),
    st.from_regex(r"[0-9.:a-fA-F]{1,20}", fullmatch=True),
    st.text(max_size=12),
)


@given(_ADDRESSES)
def test_is_ip_reads_the_spelling_of_any_stored_address(address: str) -> None:
    """Translation tells IP addresses from DNS names by their stored spelling alone; for
    every address validation accepts, that agrees with parsing it."""
    endpoint = parse_entry(EP, json.dumps({"address": address}).encode(), PREFIX)[1]
    if isinstance(endpoint, Endpoint):
        assert is_ip(endpoint.address) == (canonical_ip(endpoint.address) is not None)


@given(_ADDRESSES | st.from_regex(r"0*[0-9]{1,4}(\.0*[0-9]{1,4}){2,4}", fullmatch=True))
def test_canonical_ip_is_the_round_trip_through_the_binary_form(address: str) -> None:
    """An IPv4 address is returned as written when inet_pton takes it, without the round
    trip: that holds only if inet_pton takes no spelling but the canonical one (no leading
    zeros, four parts), which this checks against the round trip itself."""
    expected = None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            expected = socket.inet_ntop(family, socket.inet_pton(family, address))
            break
        except (OSError, ValueError):
            continue
    assert canonical_ip(address) == expected


@pytest.mark.parametrize(
    "address", ["", "1.2.3", "999.1.1.1", "not a host", "a..b", "-a.com", "a.com\n", "10.0.0.1:80"]
)
def test_endpoint_bad_addresses(address: str) -> None:
    bad(EP, {"address": address}, "address", "neither an IP address nor a DNS name")


def test_endpoint_address_is_required() -> None:
    bad(EP, {"port": 80}, "address", "is required")


@pytest.mark.parametrize(("weight", "good"), [(1, True), (1000, True), (0, False), (1001, False)])
def test_endpoint_weight_range(weight: int, good: bool) -> None:
    if good:
        endpoint = ok(EP, with_(EP, weight=weight))
        assert isinstance(endpoint, Endpoint)
        assert endpoint.weight == weight
    else:
        bad(EP, with_(EP, weight=weight), "weight", "must be at")


@pytest.mark.parametrize(("port", "good"), [(1, True), (65535, True), (0, False), (70000, False)])
def test_endpoint_port_range(port: int, good: bool) -> None:
    if good:
        endpoint = ok(EP, with_(EP, port=port))
        assert isinstance(endpoint, Endpoint)
        assert endpoint.port == port
    else:
        bad(EP, with_(EP, port=port), "port", "must be at")


def test_endpoint_labels_and_zone() -> None:
    bad(EP, with_(EP, labels={"version": 1}), "labels.version", "must be a string")
    bad(EP, with_(EP, labels={"bad key!": "x"}), "labels.bad key!", "not a valid label key")
    bad(EP, with_(EP, labels=["version"]), "labels", "must be an object")
    bad(EP, with_(EP, zone="z" * 129), "zone", "at most 128")
    endpoint = ok(EP, with_(EP, labels={"b": "2", "a": "1"}))
    assert isinstance(endpoint, Endpoint)
    assert endpoint.labels == (("a", "1"), ("b", "2"))
    assert endpoint.matches((("a", "1"),))
    assert endpoint.matches(())
    assert not endpoint.matches((("a", "1"), ("c", "3")))
    assert not endpoint.matches((("a", "2"),))


# -- Route ----------------------------------------------------------------------------------


def test_route_defaults() -> None:
    assert ok(RT, MINIMAL[RT]) == Route(
        namespace="default",
        name="r",
        listener="public",
        hosts=("*",),
        match=Match("prefix", "/", (), ()),
        destinations=(Destination(WEB, "", 1),),
        timeout_ms=None,
        retries=None,
        priority=0,
        rate_limit=None,
    )


def test_route_contract_example() -> None:
    value = {
        "listener": "public",
        "hosts": ["*"],
        "match": {
            "prefix": "/api/users",
            "headers": {"x-canary": "true"},
            "methods": ["GET", "POST"],
        },
        "destinations": [
            {"service": "auth/user-service", "subset": "v1", "weight": 90},
            {"service": "auth/user-service", "subset": "v2", "weight": 10},
        ],
        "timeout_ms": 30000,
        "retries": {
            "attempts": 3,
            "on": ["5xx", "reset", "connect-failure"],
            "per_try_timeout_ms": 2000,
        },
        "priority": 1000,
        "rate_limit": {"requests_per_minute": 1000, "burst": 100},
    }
    user = ServiceRef("auth", "user-service")
    assert ok("/mesh/routes/shop/users", value) == Route(
        namespace="shop",
        name="users",
        listener="public",
        hosts=("*",),
        match=Match("prefix", "/api/users", (("x-canary", "true"),), ("GET", "POST")),
        destinations=(Destination(user, "v1", 90), Destination(user, "v2", 10)),
        timeout_ms=30000,
        retries=Retries(3, ("5xx", "reset", "connect-failure"), 2000),
        priority=1000,
        rate_limit=RateLimit(1000, 100),
    )


def test_destination_service_reference() -> None:
    route = ok(
        "/mesh/routes/shop/r",
        with_(
            RT, destinations=[{"service": "cart"}, {"service": "auth/user-service", "weight": 0}]
        ),
    )
    assert isinstance(route, Route)
    assert route.destinations == (
        Destination(ServiceRef("shop", "cart"), "", 1),
        Destination(ServiceRef("auth", "user-service"), "", 0),
    )
    bad(
        RT,
        with_(RT, destinations=[{"service": "a/b/c"}]),
        "destinations[0].service",
        "must be 'name' or 'namespace/name'",
    )
    bad(RT, with_(RT, destinations=[{"service": "Auth/x"}]), "destinations[0].service", "DNS-1123")
    bad(RT, with_(RT, destinations=[{"service": "auth/"}]), "destinations[0].service", "DNS-1123")
    bad(RT, with_(RT, destinations=[{"weight": 1}]), "destinations[0].service", "is required")
    bad(
        RT,
        with_(RT, destinations=[{"service": "web", "subset": "V1"}]),
        "destinations[0].subset",
        "DNS-1123",
    )
    bad(RT, with_(RT, destinations=["web"]), "destinations[0]", "must be an object")


@pytest.mark.parametrize(
    ("weights", "field", "fragment"),
    [
        ([0, 10000], None, ""),
        ([1], None, ""),
        ([10001], "destinations[0].weight", "at most 10000"),
        ([5, -1], "destinations[1].weight", "at least 0"),
        ([0], "destinations", "at least one weight must be greater than 0"),
        ([0, 0, 0], "destinations", "at least one weight must be greater than 0"),
    ],
)
def test_destination_weights(weights: list[int], field: str | None, fragment: str) -> None:
    value = with_(RT, destinations=[{"service": "web", "weight": w} for w in weights])
    if field is None:
        route = ok(RT, value)
        assert isinstance(route, Route)
        assert [d.weight for d in route.destinations] == weights
    else:
        bad(RT, value, field, fragment)


def test_destinations_required() -> None:
    bad(RT, {"listener": "public"}, "destinations", "needs at least one destination")
    bad(RT, with_(RT, destinations=[]), "destinations", "needs at least one destination")


def test_listener_required_and_glob() -> None:
    bad(RT, {"destinations": [{"service": "web"}]}, "listener", "is required")
    bad(RT, with_(RT, listener="Public"), "listener", "not a listener name or glob")
    bad(RT, with_(RT, listener="pub lic"), "listener", "not a listener name or glob")
    route = ok(RT, with_(RT, listener="sidecar-*"))
    assert isinstance(route, Route)
    assert route.listener_matches("sidecar-a")
    assert not route.listener_matches("public")
    route = ok(RT, with_(RT, listener="*"))
    assert isinstance(route, Route)
    assert route.listener_matches("public")


@pytest.mark.parametrize(
    ("kind", "value"), [("prefix", "/api"), ("path", "/api/users"), ("regex", "/api/[0-9]+")]
)
def test_match_kinds(kind: str, value: str) -> None:
    route = ok(RT, with_(RT, match={kind: value}))
    assert isinstance(route, Route)
    assert route.match == Match(kind, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "match",
    [
        {},
        {"headers": {"x": "y"}},
        {"prefix": "/", "path": "/a"},
        {"prefix": "/", "regex": "/a"},
        {"path": "/a", "regex": "/a"},
        {"prefix": "/", "path": "/a", "regex": "/a"},
    ],
)
def test_match_needs_exactly_one_of_prefix_path_regex(match: dict[str, Any]) -> None:
    bad(RT, with_(RT, match=match), "match", "exactly one of prefix, path, regex")


def test_prefix_and_path_start_with_slash() -> None:
    bad(RT, with_(RT, match={"prefix": "api"}), "match.prefix", "must start with '/'")
    bad(RT, with_(RT, match={"path": ""}), "match.path", "must start with '/'")


@pytest.mark.parametrize(
    ("regex", "fragment"),
    [
        (r"(a)\1", "invalid RE2 regex: invalid escape sequence"),
        ("(?=a)", "invalid RE2 regex: invalid perl operator"),
        ("(?<!a)b", "invalid RE2 regex"),
        ("a++", "invalid RE2 regex"),
    ],
)
def test_regex_is_validated_with_re2_not_python_re(regex: str, fragment: str) -> None:
    re.compile(regex)  # Python accepts it ...
    problem = bad(RT, with_(RT, match={"regex": regex}), "match.regex", fragment)  # ... RE2 not
    assert "b'" not in problem.reason


def test_regex_syntax_errors() -> None:
    bad(RT, with_(RT, match={"regex": "["}), "match.regex", "invalid RE2 regex: missing ]")


def test_regex_over_envoy_program_size_is_rejected() -> None:
    # RE2 compiles it, but Envoy refuses programs over 100 and would NACK the listener's routes.
    problem = bad(RT, with_(RT, match={"regex": "/[a-z]{1,100}"}), "match.regex", "too complex")
    assert "program size 204 > 100" in problem.reason
    assert isinstance(parse(RT, with_(RT, match={"regex": "/[a-z]{1,10}"})), Route)


def test_match_headers_and_methods() -> None:
    route = ok(
        RT,
        with_(
            RT,
            match={
                "prefix": "/",
                "headers": {"X-Canary": "true", "a": ""},
                "methods": ["post", "GET", "POST"],
            },
        ),
    )
    assert isinstance(route, Route)
    assert route.match.headers == (("a", ""), ("x-canary", "true"))
    assert route.match.methods == ("GET", "POST")
    bad(
        RT,
        with_(RT, match={"prefix": "/", "headers": {"x y": "1"}}),
        "match.headers.x y",
        "not a valid header name",
    )
    bad(
        RT,
        with_(RT, match={"prefix": "/", "headers": {"x": 1}}),
        "match.headers.x",
        "must be a string",
    )
    bad(
        RT,
        with_(RT, match={"prefix": "/", "methods": ["GET", "FETCH"]}),
        "match.methods[1]",
        "unknown HTTP method 'FETCH'",
    )
    bad(RT, with_(RT, match={"prefix": "/", "methods": "GET"}), "match.methods", "an array")


@pytest.mark.parametrize(
    ("hosts", "stored"),
    [
        (["*"], ("*",)),
        (["API.Example.com"], ("api.example.com",)),
        (
            ["*.example.com", "*-x.example.com", "api.*"],
            ("*.example.com", "*-x.example.com", "api.*"),
        ),
        (["a.com:8080", "a.com", "a.com"], ("a.com:8080", "a.com")),
        (["web.default"], ("web.default",)),
    ],
)
def test_route_hosts(hosts: list[str], stored: tuple[str, ...]) -> None:
    route = ok(RT, with_(RT, hosts=hosts))
    assert isinstance(route, Route)
    assert route.hosts == stored


@pytest.mark.parametrize("host", ["a b", "a.com/x", "*.*", "**", "a.*.com", "", "a.com:"])
def test_route_bad_hosts(host: str) -> None:
    bad(RT, with_(RT, hosts=["ok.com", host]), "hosts[1]", "not a host name or Envoy wildcard")


def test_route_hosts_not_empty() -> None:
    bad(RT, with_(RT, hosts=[]), "hosts", "at least one host")


def test_retries() -> None:
    route = ok(RT, with_(RT, retries={"attempts": 2}))
    assert isinstance(route, Route)
    assert route.retries == Retries(2, ("5xx", "reset", "connect-failure"), None)
    route = ok(RT, with_(RT, retries={"attempts": 0, "on": ["unavailable", "5xx", "5xx"]}))
    assert isinstance(route, Route)
    assert route.retries == Retries(0, ("unavailable", "5xx"), None)
    bad(RT, with_(RT, retries={}), "retries.attempts", "is required")
    bad(RT, with_(RT, retries={"attempts": 101}), "retries.attempts", "at most 100")
    bad(RT, with_(RT, retries={"attempts": 1, "on": []}), "retries.on", "at least one")
    bad(
        RT,
        with_(RT, retries={"attempts": 1, "on": ["5xx", "5XX"]}),
        "retries.on[1]",
        "unknown retry condition '5XX'",
    )
    bad(
        RT,
        with_(RT, retries={"attempts": 1, "per_try_timeout_ms": 0}),
        "retries.per_try_timeout_ms",
        "at least 1",
    )


def test_rate_limit() -> None:
    route = ok(RT, with_(RT, rate_limit={"requests_per_minute": 60}))
    assert isinstance(route, Route)
    assert route.rate_limit == RateLimit(60, 60)  # burst defaults to one minute's worth
    bad(
        RT,
        with_(RT, rate_limit={"requests_per_minute": 0}),
        "rate_limit.requests_per_minute",
        "at least 1",
    )
    bad(RT, with_(RT, rate_limit={"burst": 5}), "rate_limit.requests_per_minute", "is required")
    bad(
        RT,
        with_(RT, rate_limit={"requests_per_minute": 5, "burst": 0}),
        "rate_limit.burst",
        "at least 1",
    )


def test_timeout_and_priority() -> None:
    route = ok(RT, with_(RT, timeout_ms=0, priority=-5))
    assert isinstance(route, Route)
    assert (route.timeout_ms, route.priority) == (0, -5)
    bad(RT, with_(RT, timeout_ms=-1), "timeout_ms", "at least 0")
    bad(RT, with_(RT, priority=2**31), "priority", "at most")


def test_route_specificity_order() -> None:
    def spec(match: dict[str, str]) -> tuple[int, int]:
        route = ok(RT, with_(RT, match=match))
        assert isinstance(route, Route)
        return route.specificity()

    order = [
        spec({"path": "/a/b/c"}),
        spec({"path": "/a"}),
        spec({"prefix": "/a/b"}),
        spec({"prefix": "/a"}),
        spec({"regex": "/a.*"}),
    ]
    assert order == sorted(order)


# -- Listener -----------------------------------------------------------------------------


def test_listener_defaults() -> None:
    assert ok(LS, {"port": 10000}) == Listener(
        name="public", address="0.0.0.0", port=10000, protocol="http", nodes=("*",), service=None
    )


def test_listener_contract_example() -> None:
    value = {"address": "0.0.0.0", "port": 10000, "protocol": "http", "nodes": ["gateway-*"]}
    listener = ok(LS, value)
    assert listener == Listener("public", "0.0.0.0", 10000, "http", ("gateway-*",))
    assert isinstance(listener, Listener)
    assert listener.serves("gateway-eu")
    assert not listener.serves("sidecar")


def test_listener_fields() -> None:
    bad(LS, {}, "port", "is required")
    bad(LS, {"port": 0}, "port", "at least 1")
    bad(LS, {"port": 65536}, "port", "at most 65535")
    bad(LS, {"port": 1, "address": "localhost"}, "address", "not an IP address")
    bad(LS, {"port": 1, "protocol": "grpc"}, "protocol", "must be http or tcp")
    bad(LS, {"port": 1, "nodes": []}, "nodes", "at least one glob")
    bad(LS, {"port": 1, "nodes": ["*", ""]}, "nodes[1]", "must not be empty")
    listener = ok(LS, {"port": 1, "address": "0:0::0"})
    assert isinstance(listener, Listener)
    assert listener.address == "::"


def test_tcp_listener_requires_a_service() -> None:
    bad(LS, {"port": 5432, "protocol": "tcp"}, "service", "is required for protocol tcp")
    bad(LS, {"port": 5432, "protocol": "tcp", "service": "a/b/c"}, "service", "namespace/name")
    assert ok(LS, {"port": 5432, "protocol": "tcp", "service": "db"}) == Listener(
        "public", port=5432, protocol="tcp", service=ServiceRef("default", "db")
    )
    listener = ok(LS, {"port": 5432, "protocol": "tcp", "service": "data/pg"})
    assert isinstance(listener, Listener)
    assert listener.service == ServiceRef("data", "pg")


def test_http_listener_has_no_service() -> None:
    bad(LS, {"port": 80, "service": "db"}, "service", "only allowed with protocol tcp")


@given(
    st.text(max_size=260)
    | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,260}", fullmatch=True)
    | st.text(alphabet=st.characters(categories=["Nd", "Lo", "Lu"]), max_size=4)
)
def test_the_endpoint_id_fast_check_agrees_with_the_pattern(value: str) -> None:
    """Endpoint ids of plain ASCII letters and digits skip the regex; any other id, and
    any length over 253, still takes it (non-ASCII digits and letters are alphanumeric
    to ``str.isalnum`` but not ids)."""
    assert _endpoint_id_ok(value) == (_ENDPOINT_ID.fullmatch(value) is not None)
