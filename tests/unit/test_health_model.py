"""Registry fields of this feature: health_check.every_proxy, scaling; cluster translation."""

from __future__ import annotations

import json

import pytest

from xds_server.model import Problem, Scaling, Service, parse_entry
from xds_server.translate.cluster import build_cluster

KEY = "/mesh/services/default/web"


def parse(value: dict[str, object]) -> Service | Problem:
    _, out = parse_entry(KEY, json.dumps(value).encode(), "/mesh/", revision=1)
    assert isinstance(out, Service | Problem)
    return out


def test_scaling_is_read() -> None:
    svc = parse({"scaling": {"target_rps_per_endpoint": 50}})
    assert isinstance(svc, Service)
    assert svc.scaling == Scaling(50)


@pytest.mark.parametrize(
    ("value", "field", "text"),
    [
        ({"scaling": {}}, "scaling.target_rps_per_endpoint", "required"),
        (
            {"scaling": {"target_rps_per_endpoint": 0}},
            "scaling.target_rps_per_endpoint",
            "at least 1",
        ),
        (
            {"scaling": {"target_rps_per_endpoint": "9"}},
            "scaling.target_rps_per_endpoint",
            "integer",
        ),
        ({"scaling": {"target_rps_per_endpoint": 2, "max": 3}}, "scaling.max", "unknown field"),
        ({"scaling": 5}, "scaling", "must be an object"),
        ({"health_check": {"every_proxy": "yes"}}, "health_check.every_proxy", "true or false"),
    ],
)
def test_bad_values_name_their_field(value: dict[str, object], field: str, text: str) -> None:
    problem = parse(value)
    assert isinstance(problem, Problem), problem
    assert problem.field == field
    assert text in problem.message


def test_cluster_has_active_check_only_for_every_proxy() -> None:
    hds = parse({"health_check": {"interval_ms": 1000}})
    every = parse({"health_check": {"interval_ms": 1000, "every_proxy": True}})
    assert isinstance(hds, Service) and isinstance(every, Service)
    assert len(build_cluster(hds).health_checks) == 0
    checks = build_cluster(every).health_checks
    assert len(checks) == 1 and checks[0].interval.seconds == 1
