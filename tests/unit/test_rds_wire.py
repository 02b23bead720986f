"""The fast RouteConfiguration assembly equals the message API, byte for byte."""

from __future__ import annotations

import json
from typing import Any

from tests.support.golden import translate
from tests.support.route_reference import (
    build_route_configuration,
)
from xds_server.ingest.registry import Entry
from xds_server.translate.rds_wire import route_config_bytes


def _entries(registry: dict[str, dict[str, Any]]) -> tuple[Entry, ...]:
    return tuple(
        Entry(key, json.dumps(value).encode(), i)
        for i, (key, value) in enumerate(registry.items(), start=1)
    )


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
