"""Pure translation of the validated model into Envoy v3 resources, one module per concern."""

from __future__ import annotations

from xds_server.translate.names import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT, TYPE_ORDER
from xds_server.translate.resource import Resource, make_resource
from xds_server.translate.translator import Delta, Translator

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "SHORT",
    "TYPE_ORDER",
    "Delta",
    "Resource",
    "Translator",
    "make_resource",
]
