"""Every fast encoder equals the message API, byte for byte, on random registries.

One registry drawn serves the cluster templates, the assembled route configurations and the
proxyless ones (``tests/support/wire_checks.py``): drawing a registry costs more than the
three checks together. Templates and route entries are memoized across examples too, so a
value that differs from a memoized one in a field its key leaves out would get the wrong
bytes here.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.support.golden import translate
from tests.support.registry_strategies import registries
from tests.support.wire_checks import (
    check_clusters,
    check_proxyless_route_configs,
    check_route_configs,
)
from xds_server.ingest.registry import Entry


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registries())
def test_clusters_and_route_configurations_match_the_message_api(
    registry: dict[str, dict[str, Any]],
) -> None:
    entries = tuple(
        Entry(key, json.dumps(value).encode(), i)
        for i, (key, value) in enumerate(registry.items(), start=1)
    )
    state, _, _ = translate(entries)
    for service in state.services.values():
        check_clusters(service)
    check_route_configs(state)
    check_proxyless_route_configs(state)
