"""Workload identities: who a proxy is, its SPIFFE id, and the short forms policies and
tokens write.

A proxy's identity follows from its node cluster. ``<name>.<ns>`` naming a registered
service is a sidecar of that service, ``spiffe://<td>/ns/<ns>/svc/<name>``; any other
cluster is a gateway, ``spiffe://<td>/gateway/<cluster>``. Policies and tokens write
identities short: ``shop/web`` (a service's sidecars), ``shop/*`` (every sidecar of a
namespace), ``gateway:<cluster>`` (a colon, so no namespace can collide) and ``*``.
"""

from __future__ import annotations

import re
from collections.abc import Container
from typing import Literal, NamedTuple

from xds_server.errors import ValidationError
from xds_server.model.names import ServiceRef, check_label

DEFAULT_TRUST_DOMAIN = "mesh.local"

IdentityKind = Literal["sidecar", "gateway"]

# A trust domain is a DNS-like name (SPIFFE: lowercase letters, digits, '.', '-', '_').
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
# Gateway clusters are chosen by operators (Envoy's --service-cluster): printable, no '/'
# or whitespace, so the SPIFFE path stays one segment.
_GATEWAY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# What could be a service name or namespace (a DNS-1123 label).
_LABEL_LIKE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def check_trust_domain(value: str, field: str = "trust_domain") -> str:
    """A SPIFFE trust domain: lowercase letters, digits, '.', '-', '_'."""
    if not _TRUST_DOMAIN.fullmatch(value):
        raise ValidationError(field, f"{value!r} is not a trust domain ([a-z0-9._-]{{1,255}})")
    return value


class Identity(NamedTuple):
    """A workload identity: the sidecars of one service, or one gateway cluster."""

    kind: IdentityKind
    namespace: str
    """The service's namespace; empty for a gateway."""
    name: str
    """The service's name, or the gateway's node cluster."""

    def spiffe_id(self, trust_domain: str) -> str:
        """The URI SAN of this identity's certificates."""
        if self.kind == "gateway":
            return f"spiffe://{trust_domain}/gateway/{self.name}"
        return f"spiffe://{trust_domain}/ns/{self.namespace}/svc/{self.name}"

    def short(self) -> str:
        """``ns/name`` for a sidecar, ``gateway:<cluster>`` for a gateway."""
        if self.kind == "gateway":
            return f"gateway:{self.name}"
        return f"{self.namespace}/{self.name}"

    @property
    def service(self) -> ServiceRef | None:
        """The service whose sidecars hold this identity (None for a gateway)."""
        return ServiceRef(self.namespace, self.name) if self.kind == "sidecar" else None


def sidecar(ref: ServiceRef) -> Identity:
    """The identity of ``ref``'s sidecars."""
    return Identity("sidecar", ref.namespace, ref.name)


def gateway(cluster: str) -> Identity:
    """The identity of the gateway whose node cluster is ``cluster``."""
    return Identity("gateway", "", cluster)


def identity_of_cluster(cluster: str, services: Container[ServiceRef]) -> Identity:
    """Who a proxy of node cluster ``cluster`` is, given the registered ``services``."""
    name, dot, namespace = cluster.partition(".")
    if dot and "." not in namespace and ServiceRef(namespace, name) in services:
        return Identity("sidecar", namespace, name)
    return gateway(cluster)


def parse_identity(text: str, field: str) -> Identity:
    """One identity written short: ``ns/name`` or ``gateway:<cluster>`` (no wildcards)."""
    if text.startswith("gateway:"):
        cluster = text[len("gateway:") :]
        if not _GATEWAY.fullmatch(cluster):
            raise ValidationError(field, f"{text!r}: a gateway cluster is [A-Za-z0-9._-]{{1,128}}")
        return gateway(cluster)
    namespace, slash, name = text.partition("/")
    if not slash:
        raise ValidationError(field, f"{text!r} is not 'namespace/service' or 'gateway:<cluster>'")
    if name == "*":
        raise ValidationError(field, f"{text!r}: one identity is wanted here, not a pattern")
    return Identity("sidecar", check_label(namespace, field), check_label(name, field))


def check_token_identity(identity: Identity, field: str) -> Identity:
    """``identity``, if a join token may be bound to it.

    A gateway cluster written like a sidecar's, ``<name>.<ns>`` with two DNS labels, is
    refused: it is a gateway only while no service ``ns/name`` is registered, and the proxy
    holding the token would become that service's sidecar (and get its certificate) the
    moment one is."""
    if identity.kind == "gateway":
        name, dot, namespace = identity.name.partition(".")
        if dot and _LABEL_LIKE.fullmatch(name) and _LABEL_LIKE.fullmatch(namespace):
            raise ValidationError(
                field,
                f"{identity.short()!r} would become the sidecar identity {namespace}/{name} "
                f"once a service {namespace}/{name} is registered; name gateway clusters "
                "otherwise than <name>.<ns> (e.g. without a dot, or with two)",
            )
    return identity


class IdentityPattern(NamedTuple):
    """Identities written short, as policies select callers: an identity, ``ns/*``, ``*``."""

    text: str

    def matches(self, identity: Identity) -> bool:
        """Whether ``identity`` is one this pattern selects."""
        if self.text == "*":
            return True
        if self.text.endswith("/*"):
            return identity.kind == "sidecar" and identity.namespace == self.text[:-2]
        return identity.short() == self.text

    def spiffe_prefix(self, trust_domain: str) -> tuple[str, bool]:
        """The SPIFFE id this pattern selects and whether it is a prefix (``ns/*``, ``*``)
        rather than an exact id: what an RBAC principal or a SAN matcher checks."""
        if self.text == "*":
            return f"spiffe://{trust_domain}/", True
        if self.text.endswith("/*"):
            return f"spiffe://{trust_domain}/ns/{self.text[:-2]}/svc/", True
        namespace, _, name = self.text.partition("/")
        if self.text.startswith("gateway:"):
            return gateway(self.text[len("gateway:") :]).spiffe_id(trust_domain), False
        return Identity("sidecar", namespace, name).spiffe_id(trust_domain), False


def parse_identity_pattern(text: str, field: str) -> IdentityPattern:
    """``ns/name``, ``ns/*``, ``gateway:<cluster>`` or ``*``; a clear error otherwise."""
    if text == "*":
        return IdentityPattern(text)
    if text.endswith("/*") and not text.startswith("gateway:"):
        check_label(text[:-2], field)
        return IdentityPattern(text)
    return IdentityPattern(parse_identity(text, field).short())
