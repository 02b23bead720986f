"""Listener: an address a set of proxies listens on (registry ``listeners/<name>``)."""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass
from typing import Literal

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj
from xds_server.model.names import DEFAULT_NAMESPACE, ServiceRef, parse_service_ref
from xds_server.model.namespace import matches_any, namespace_globs

TRACING_PROVIDERS = ("zipkin", "opentelemetry")


@dataclass(frozen=True, slots=True)
class Tracing:
    """Distributed tracing on an HTTP listener: spans go to ``service`` (the collector, a
    registered service) with ``provider``'s protocol; ``sampling_percent`` of the requests
    that start a trace here are sampled (a caller's sampling decision is kept)."""

    provider: Literal["zipkin", "opentelemetry"]
    service: ServiceRef
    sampling_percent: int = 1


@dataclass(frozen=True, slots=True)
class Listener:
    """A validated Listener entry. ``service`` is set exactly for ``tcp`` listeners."""

    name: str
    address: str = "0.0.0.0"
    port: int = 0
    protocol: Literal["http", "tcp"] = "http"
    nodes: tuple[str, ...] = ("*",)
    service: ServiceRef | None = None
    tracing: Tracing | None = None
    allowed_namespaces: tuple[str, ...] = ("*",)
    """Globs of the namespaces whose routes may attach (Gateway API's ``allowedRoutes``)."""

    def admits(self, namespace: str) -> bool:
        """May a route of ``namespace`` attach to this listener?"""
        return matches_any(namespace, self.allowed_namespaces)

    def serves(self, node_cluster: str) -> bool:
        """True when a node whose ``cluster`` is ``node_cluster`` gets this listener."""
        return any(fnmatch.fnmatchcase(node_cluster, glob) for glob in self.nodes)


def parse_listener(name: str, o: Obj) -> Listener:
    """Validate a Listener value for the listener named by its key."""
    address = o.str_("address", "0.0.0.0")
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise ValidationError("address", f"{address!r} is not an IP address") from None
    port = o.int_("port", lo=1, hi=65535)
    protocol = o.str_("protocol", "http")
    if protocol not in ("http", "tcp"):
        raise ValidationError("protocol", "must be http or tcp")
    nodes = o.str_list("nodes")
    if nodes is not None and not nodes:
        raise ValidationError("nodes", "must list at least one glob (or be omitted for '*')")
    for i, glob in enumerate(nodes or []):
        if not glob:
            raise ValidationError(f"nodes[{i}]", "must not be empty")
    service_str = o.opt_str("service")
    service = None
    if protocol == "tcp":
        if service_str is None:
            raise ValidationError("service", "is required for protocol tcp")
        service = parse_service_ref(service_str, DEFAULT_NAMESPACE, "service")
    elif service_str is not None:
        raise ValidationError("service", "is only allowed with protocol tcp (use routes for http)")
    tracing_obj = o.obj("tracing")
    tracing = None
    if tracing_obj is not None:
        if protocol != "http":
            raise ValidationError("tracing", "is only allowed with protocol http")
        tracing = parse_tracing(tracing_obj)
    allowed = namespace_globs(o, "allowed_namespaces")
    o.done()
    return Listener(
        name=name,
        address=address,
        port=port,
        protocol=protocol,  # type: ignore[arg-type]
        nodes=tuple(nodes or ("*",)),
        service=service,
        tracing=tracing,
        allowed_namespaces=allowed,
    )


def parse_tracing(o: Obj) -> Tracing:
    """Validate a listener's ``tracing`` block."""
    provider = o.str_("provider", required=True)
    if provider not in TRACING_PROVIDERS:
        raise ValidationError(
            o.field("provider"), f"must be one of {', '.join(TRACING_PROVIDERS)}, not {provider!r}"
        )
    service = parse_service_ref(
        o.str_("service", required=True), DEFAULT_NAMESPACE, o.field("service")
    )
    sampling = o.int_("sampling_percent", 1, lo=0, hi=100)
    o.done()
    return Tracing(provider, service, sampling)  # type: ignore[arg-type]
