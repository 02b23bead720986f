"""Authorization on a sidecar's inbound listener: the HTTP filters that decide which callers
may reach a service. Pure.

The sidecar inbound listener (:mod:`xds_server.translate.sidecar`) puts what
:func:`inbound_filters` returns before its router filter. The authorization part of the mesh
fills it (policies compiled to Envoy's RBAC filter); until then it adds nothing, so every
caller that completes the listener's TLS handshake is let through.
"""

from __future__ import annotations

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_server.model import Service
from xds_server.model.view import RegistryView


def inbound_filters(
    service: Service, state: RegistryView, trust_domain: str
) -> list[hcm_pb2.HttpFilter]:
    """The authorization filters of ``service``'s inbound listener, in order (before the
    router); the caller's identity is the URI SAN of its verified certificate."""
    return []
