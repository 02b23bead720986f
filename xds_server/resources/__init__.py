"""The shared xDS vocabulary: resource types, framed resources, versions.

Translation produces ``Resource`` values, the cache indexes them and the streams send
them; all three speak these names, so they live below all three.
"""

from __future__ import annotations

from xds_server.resources.resource import Resource, make_resource
from xds_server.resources.types import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    SHORT,
    TYPE_ORDER,
)

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "SECRET",
    "SHORT",
    "TYPE_ORDER",
    "Resource",
    "make_resource",
]
