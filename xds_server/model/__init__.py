"""Validated domain model: frozen dataclasses built from registry values.

Nothing here does I/O. Bad input raises
:class:`~xds_server.errors.ValidationError` inside the parsers and becomes a
:class:`Problem` at :func:`parse_entry`, never an exception out of the loop.
"""

from __future__ import annotations

from xds_server.model.endpoint import Endpoint
from xds_server.model.entries import Entity, Problem, parse_entity, parse_entry
from xds_server.model.listener import Listener
from xds_server.model.names import KeyRef, ServiceRef, parse_key, status_error_key
from xds_server.model.namespace import Namespace
from xds_server.model.route import (
    Destination,
    Fault,
    Match,
    Mirror,
    RateLimit,
    Retries,
    Route,
)
from xds_server.model.service import (
    CircuitBreaker,
    HealthCheck,
    LoadBalancer,
    OutlierDetection,
    Scaling,
    Service,
    SessionAffinity,
    Sidecar,
    Upstreams,
)

__all__ = [
    "CircuitBreaker",
    "Destination",
    "Endpoint",
    "Entity",
    "Fault",
    "HealthCheck",
    "KeyRef",
    "Listener",
    "LoadBalancer",
    "Match",
    "Mirror",
    "Namespace",
    "OutlierDetection",
    "Problem",
    "RateLimit",
    "Retries",
    "Route",
    "Scaling",
    "Service",
    "ServiceRef",
    "SessionAffinity",
    "Sidecar",
    "Upstreams",
    "parse_entity",
    "parse_entry",
    "parse_key",
    "status_error_key",
]
