"""Envoy resource names of the mesh (stable: docs/registry.md lists them)."""

from __future__ import annotations

from xds_server.model import ServiceRef


def cluster_name(ref: ServiceRef, subset: str = "") -> str:
    """``<name>.<ns>`` per service, ``<name>.<ns>|<subset>`` per subset."""
    base = f"{ref.name}.{ref.namespace}"
    return f"{base}|{subset}" if subset else base


def service_host(ref: ServiceRef) -> str:
    """The Host every HTTP listener routes to a service by default."""
    return f"{ref.name}.{ref.namespace}"
