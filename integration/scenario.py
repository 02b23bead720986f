"""A ready-made mesh for tests and benchmarks: a service with two versions behind a gateway.

``seed_split`` writes the registry entries of the Quick start scenario; the
JSON values are exactly the registry contract's (``docs/registry.md``).
"""

from __future__ import annotations

import json
from typing import Any

from xds_server.ingest.registry import Registry


def split_route(v1: int, v2: int, *, listener: str = "public", **extra: Any) -> dict[str, Any]:
    """The ``web-split`` route value: ``v1``/``v2`` weights between the two subsets."""
    return {
        "listener": listener,
        "destinations": [
            {"service": "web", "subset": "v1", "weight": v1},
            {"service": "web", "subset": "v2", "weight": v2},
        ],
        **extra,
    }


def split_entries(
    v1_port: int, v2_port: int, listener_port: int, *, v1: int = 90, v2: int = 10
) -> dict[str, dict[str, Any]]:
    """Registry keys (without prefix) -> values for a 90/10 split of ``default/web``."""
    return {
        "services/default/web": {
            "protocol": "http",
            "port": v1_port,
            "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}},
        },
        "endpoints/default/web/v1-0": {
            "address": "127.0.0.1",
            "port": v1_port,
            "labels": {"version": "v1"},
        },
        "endpoints/default/web/v2-0": {
            "address": "127.0.0.1",
            "port": v2_port,
            "labels": {"version": "v2"},
        },
        "listeners/public": {"address": "127.0.0.1", "port": listener_port, "nodes": ["*"]},
        "routes/default/web-split": split_route(v1, v2),
    }


async def seed(registry: Registry, entries: dict[str, dict[str, Any]]) -> int:
    """Write ``entries`` under the registry's prefix; return the last revision."""
    rev = 0
    for key, value in entries.items():
        rev = await registry.put(registry.prefix + key, json.dumps(value).encode())
    return rev
