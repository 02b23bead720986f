"""Route ``mirror`` and ``fault``: validation with field errors, references, translation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.fault.v3 import fault_pb2

from tests.support.golden import translate, unpack
from xds_server.ingest.registry import Entry
from xds_server.model import Fault, Mirror, Problem, Route, ServiceRef, parse_entry
from xds_server.resources import ROUTE
from xds_server.translate.route import FAULT

PREFIX = "/mesh/"
RT = "/mesh/routes/default/r"
BASE: dict[str, Any] = {"listener": "public", "destinations": [{"service": "web"}]}


def parse(value: dict[str, Any]) -> Route | Problem:
    _, result = parse_entry(RT, json.dumps(value).encode(), PREFIX, revision=1)
    assert isinstance(result, Route | Problem)
    return result


def test_mirror_defaults_to_every_request_in_the_route_namespace() -> None:
    route = parse({**BASE, "mirror": {"service": "shadow"}})
    assert isinstance(route, Route)
    assert route.mirror == Mirror(ServiceRef("default", "shadow"), "", 100)


def test_mirror_with_namespace_subset_and_share() -> None:
    route = parse({**BASE, "mirror": {"service": "qa/shadow", "subset": "v2", "percent": 5}})
    assert isinstance(route, Route)
    assert route.mirror == Mirror(ServiceRef("qa", "shadow"), "v2", 5)


def test_fault_abort_and_delay() -> None:
    fault = {"abort_percent": 10, "abort_status": 418, "delay_percent": 50, "delay_ms": 250}
    route = parse({**BASE, "fault": fault})
    assert isinstance(route, Route)
    assert route.fault == Fault(10, 418, 50, 250)
    route = parse({**BASE, "fault": {"delay_percent": 100, "delay_ms": 5}})
    assert isinstance(route, Route) and route.fault == Fault(0, 0, 100, 5)


@pytest.mark.parametrize(
    ("block", "field", "fragment"),
    [
        ({"mirror": {}}, "mirror.service", "is required"),
        ({"mirror": {"service": "Bad_Name"}}, "mirror.service", ""),
        ({"mirror": {"service": "s", "percent": 101}}, "mirror.percent", "at most 100"),
        ({"mirror": {"service": "s", "percent": -1}}, "mirror.percent", "at least 0"),
        ({"mirror": {"service": "s", "percent": 1.5}}, "mirror.percent", "integer"),
        ({"mirror": {"service": "s", "subset": "V1"}}, "mirror.subset", ""),
        ({"mirror": {"service": "s", "precent": 5}}, "mirror.precent", "did you mean 'percent'"),
        ({"mirror": "shadow"}, "mirror", "must be an object"),
        ({"fault": {}}, "fault", "must set abort_percent"),
        ({"fault": {"abort_percent": 10}}, "fault.abort_status", "required with abort_percent"),
        ({"fault": {"abort_status": 503}}, "fault.abort_percent", "required with abort_status"),
        ({"fault": {"delay_percent": 10}}, "fault.delay_ms", "required with delay_percent"),
        ({"fault": {"delay_ms": 10}}, "fault.delay_percent", "required with delay_ms"),
        ({"fault": {"abort_percent": 10, "abort_status": 199}}, "fault.abort_status", "200"),
        ({"fault": {"abort_percent": 10, "abort_status": 600}}, "fault.abort_status", "599"),
        ({"fault": {"abort_percent": 110, "abort_status": 503}}, "fault.abort_percent", "100"),
        ({"fault": {"delay_percent": 10, "delay_ms": 0}}, "fault.delay_ms", "at least 1"),
        ({"fault": {"delay_percent": True, "delay_ms": 5}}, "fault.delay_percent", "integer"),
        ({"fault": {"abort_pct": 5}}, "fault.abort_pct", "did you mean 'abort_percent'"),
    ],
)
def test_bad_mirror_and_fault_name_the_field(
    block: dict[str, Any], field: str, fragment: str
) -> None:
    problem = parse({**BASE, **block})
    assert isinstance(problem, Problem), problem
    assert problem.field == field, problem
    assert fragment in problem.reason, problem


def _state_problem(route: dict[str, Any]) -> Problem | None:
    entries = {
        "/mesh/services/default/web": {"port": 80, "subsets": {"v1": {"version": "v1"}}},
        "/mesh/services/default/raw": {"port": 81, "protocol": "tcp"},
        "/mesh/listeners/public": {"port": 10000},
        RT: route,
    }
    raw = tuple(Entry(k, json.dumps(v).encode(), i) for i, (k, v) in enumerate(entries.items(), 1))
    state, _, _ = translate(raw)
    return state.problems.get(RT)


@pytest.mark.parametrize(
    ("mirror", "field", "fragment"),
    [
        ({"service": "nowhere"}, "mirror.service", "unknown service default/nowhere"),
        ({"service": "web", "subset": "v9"}, "mirror.subset", "no subset 'v9'"),
        ({"service": "raw"}, "mirror.service", "speaks tcp"),
    ],
)
def test_mirror_references_are_checked(mirror: dict[str, Any], field: str, fragment: str) -> None:
    problem = _state_problem({**BASE, "mirror": mirror})
    assert problem is not None
    assert (problem.field, fragment in problem.reason) == (field, True), problem


def test_mirror_and_fault_translate_to_policy_and_per_route_filter_config() -> None:
    route = {
        **BASE,
        "mirror": {"service": "web", "subset": "v1", "percent": 30},
        "fault": {"abort_percent": 20, "abort_status": 503, "delay_percent": 40, "delay_ms": 1500},
    }
    assert _state_problem(route) is None
    entries = (
        Entry(
            "/mesh/services/default/web", b'{"port": 80, "subsets": {"v1": {"version": "v1"}}}', 1
        ),
        Entry("/mesh/listeners/public", b'{"port": 10000}', 2),
        Entry(RT, json.dumps(route).encode(), 3),
    )
    _, translator, _ = translate(entries)
    config = unpack(translator.served[ROUTE]["public"])
    envoy_route = next(
        r
        for vh in config.virtual_hosts
        for r in vh.routes
        if r.name == "default/r"  # type: ignore[attr-defined]
    )
    assert isinstance(envoy_route, rc.Route)
    (policy,) = envoy_route.route.request_mirror_policies
    assert policy.cluster == "web.default|v1"
    assert policy.runtime_fraction.default_value.numerator == 30
    fault = fault_pb2.HTTPFault()
    assert envoy_route.typed_per_filter_config[FAULT].Unpack(fault)
    assert (fault.abort.http_status, fault.abort.percentage.numerator) == (503, 20)
    assert fault.delay.fixed_delay.ToMilliseconds() == 1500
    assert fault.delay.percentage.numerator == 40
    assert translator.served[ROUTE]["public"].refs >= {"web.default", "web.default|v1"}


def test_an_empty_regex_is_refused_as_envoy_would() -> None:
    """Found by tests/e2e/test_envoy_accepts_props.py: RE2 takes "", Envoy's RegexMatcher not."""
    problem = parse({**BASE, "match": {"regex": ""}})
    assert isinstance(problem, Problem)
    assert (problem.field, "must not be empty" in problem.reason) == ("match.regex", True)
