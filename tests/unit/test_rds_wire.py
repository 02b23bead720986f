"""The fast RouteConfiguration assembly equals the message API, byte for byte."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.support.golden import translate
from tests.support.registry_strategies import registries
from tests.support.route_reference import (
    build_proxyless_route_configuration,
    build_route_configuration,
)
from xds_server.ingest.registry import Entry
from xds_server.translate.rds_wire import route_config_bytes


def _entries(registry: dict[str, dict[str, Any]]) -> tuple[Entry, ...]:
    return tuple(
        Entry(key, json.dumps(value).encode(), i)
        for i, (key, value) in enumerate(registry.items(), start=1)
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registries())
def test_assembled_bytes_match_message_api(registry: dict[str, dict[str, Any]]) -> None:
    state, _, _ = translate(_entries(registry))
    for name in state.listeners:
        attached = [r for r in state.routes.values() if r.listener_matches(name)]
        config, refs = build_route_configuration(name, attached, state.services)
        body, fast_refs = route_config_bytes(name, attached, state.services)
        assert body == config.SerializeToString(deterministic=True)
        assert fast_refs == refs


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registries())
def test_proxyless_bytes_match_message_api(registry: dict[str, dict[str, Any]]) -> None:
    """The route configuration of ``xds:///<name>.<ns>``: the same assembler, keeping only
    the virtual hosts a client of that name matches, without the local rate limit."""
    state, _, _ = translate(_entries(registry))
    for svc in state.services.values():
        name = f"{svc.ref.name}.{svc.ref.namespace}"
        attached = [r for r in state.routes.values() if {name, "*"} & set(r.hosts)]
        config, refs = build_proxyless_route_configuration(name, attached, state.services)
        body, fast_refs = route_config_bytes(name, attached, state.services, proxyless=True)
        assert body == config.SerializeToString(deterministic=True)
        assert fast_refs == refs


def test_memoized_entries_follow_a_service_change() -> None:
    """A route entry is memoized on the route and its services' affinities: a changed
    affinity must give new bytes, not the cached ones."""
    base = {
        "/mesh/services/default/web": {"port": 80},
        "/mesh/routes/default/r": {"listener": "gw", "destinations": [{"service": "web"}]},
        "/mesh/listeners/gw": {"port": 8080},
    }
    sticky = dict(base)
    sticky["/mesh/services/default/web"] = {
        "port": 80,
        "load_balancer": {
            "algorithm": "ring_hash",
            "session_affinity": {"header": "x-user"},
        },
    }
    outputs = []
    for registry in (base, sticky, base):
        state, _, _ = translate(_entries(registry))
        attached = list(state.routes.values())
        config, _ = build_route_configuration("gw", attached, state.services)
        body, _ = route_config_bytes("gw", attached, state.services)
        assert body == config.SerializeToString(deterministic=True)
        outputs.append(body)
    assert outputs[0] != outputs[1] and outputs[0] == outputs[2]
    assert b"x-user" in outputs[1]
