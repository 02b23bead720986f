"""The per-service endpoint counts a /metrics scrape exports are those of the full health
view: ``HealthMonitor.endpoint_counts`` (no per-endpoint rows) against ``services()``."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.health.assign import Checker
from xds_server.health.monitor import HealthMonitor
from xds_server.ingest.registry import Entry, Reset
from xds_server.ingest.state import RegistryState

P = "/mesh/"
CHECK = {"path": "/health", "interval_ms": 1000, "timeout_ms": 500}

_endpoint = st.fixed_dictionaries(
    {"draining": st.booleans(), "zone": st.sampled_from(["", "a", "b"])},
)
_service = st.tuples(
    st.sampled_from(["hds", "none", "every_proxy"]),
    st.lists(_endpoint, max_size=5),
)


def registry(services: list[tuple[str, list[dict[str, Any]]]]) -> RegistryState:
    content: dict[str, dict[str, Any]] = {}
    for i, (mode, endpoints) in enumerate(services):
        svc: dict[str, Any] = {"port": 8080}
        if mode == "hds":
            svc["health_check"] = dict(CHECK)
        elif mode == "every_proxy":
            svc["health_check"] = {**CHECK, "every_proxy": True}
        content[f"services/default/s{i}"] = svc
        for j, ep in enumerate(endpoints):
            value: dict[str, Any] = {"address": f"10.0.{i}.{j + 1}", "draining": ep["draining"]}
            if ep["zone"]:
                value["zone"] = ep["zone"]
            content[f"endpoints/default/s{i}/e{j}"] = value
    state = RegistryState(P)
    entries = tuple(Entry(P + k, json.dumps(v).encode(), 1) for k, v in content.items())
    state.apply(Reset(1, entries))
    return state


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_service, min_size=1, max_size=6),
    st.lists(st.booleans(), max_size=40),  # results, in turn, for the probes assigned
    st.integers(1, 3),  # checkers
)
def test_endpoint_counts_match_the_full_health_view(
    services: list[tuple[str, list[dict[str, Any]]]], results: list[bool], checkers: int
) -> None:
    state = registry(services)
    monitor = HealthMonitor(report_interval=1.0)
    monitor.update_registry(state)
    monitor.set_checkers(Checker(f"n{i}") for i in range(checkers))
    verdicts = iter(results)
    for node, keys in sorted(monitor.assignment().items()):
        report = {}
        for key in sorted(keys):
            healthy = next(verdicts, None)
            if healthy is not None:
                report[key] = (healthy, 10.0)
        monitor.ingest_keys(node, report)
    monitor.evaluate(10.5)

    full = [(sh.service, sh.healthy, sh.total) for sh in monitor.services()]
    assert monitor.endpoint_counts() == full
    assert len(full) == len(services)  # every registered service, with endpoints or not
