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
from xds_server.model.secret import parse_secret_ref

TRACING_PROVIDERS = ("zipkin", "opentelemetry")


@dataclass(frozen=True, slots=True)
class Tracing:
    """Distributed tracing on an HTTP listener: spans go to ``service`` (the collector, a
    registered service) with ``provider``'s protocol; ``sampling_percent`` of the requests
    that start a trace here are sampled (a caller's sampling decision is kept)."""

    provider: Literal["zipkin", "opentelemetry"]
    service: ServiceRef
    sampling_percent: int = 1


MAX_CERTIFICATES = 64
"""Certificates one listener may offer (Envoy picks among them by SNI at each handshake)."""


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """TLS termination: the certificates offered (Envoy picks by the client's SNI among
    their SANs; the first when none matches) and, optionally, the CA a client certificate
    must chain to (then a client without one is refused)."""

    certificates: tuple[str, ...]
    """Secrets (``ns/name``) holding ``{"cert", "key"}``."""
    client_ca: str | None = None
    """A secret (``ns/name``) holding ``{"ca"}``."""

    def secret_refs(self) -> tuple[str, ...]:
        """Every secret it names."""
        return self.certificates + ((self.client_ca,) if self.client_ca else ())


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
    tls: ListenerTls | None = None
    """TLS termination with secrets from the registry (None: plaintext)."""

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
    tls_obj = o.obj("tls")
    tls = parse_listener_tls(tls_obj) if tls_obj is not None else None
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
        tls=tls,
    )


def parse_listener_tls(o: Obj) -> ListenerTls:
    """Validate a listener's ``tls`` block: secret references only (whether they are in
    force, and of the right shape, is the registry fold's to judge)."""
    items = o.list_("certificates")
    if not items:
        raise ValidationError(o.field("certificates"), "must list at least one secret")
    if len(items) > MAX_CERTIFICATES:
        raise ValidationError(o.field("certificates"), f"lists more than {MAX_CERTIFICATES}")
    certs: list[str] = []
    for path, item in items:
        if not isinstance(item, str):
            raise ValidationError(path, "must be a string 'namespace/name'")
        ns, name = parse_secret_ref(item, path)
        ref = f"{ns}/{name}"
        if ref in certs:
            raise ValidationError(path, f"names {ref!r} twice")
        certs.append(ref)
    ca = o.opt_str("client_ca")
    client_ca = None
    if ca is not None:
        ns, name = parse_secret_ref(ca, o.field("client_ca"))
        client_ca = f"{ns}/{name}"
    o.done()
    return ListenerTls(tuple(certs), client_ca)


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
