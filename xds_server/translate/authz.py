"""Authorization policies -> Envoy RBAC HTTP filters on a service's inbound listener. Pure."""

from __future__ import annotations

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_server.model import ServiceRef
from xds_server.model.view import RegistryView


def inbound_filters(
    view: RegistryView, service: ServiceRef, trust_domain: str
) -> list[hcm_pb2.HttpFilter]:
    """The RBAC filters (none, one, or a deny filter then an allow filter) that enforce the
    policies selecting ``service`` on its inbound listener, placed before the router."""
    return []
