"""Every name meshd builds or reads back, each builder beside its parser.

* DNS-1123 labels and ``ns/name`` service references;
* registry keys (``<prefix><kind>/...``): :func:`parse_key` and :func:`registry_key`,
  :func:`service_key`, :func:`endpoint_key`; status keys (:func:`status_error_key`);
* Envoy resource names (stable: docs/registry.md lists them): :func:`cluster_name` and
  :func:`parse_cluster_name`, :func:`service_host`.

A new kind of key or name goes here, with both directions and a round-trip test.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Literal, NamedTuple

from xds_server.errors import ValidationError
from xds_server.resources.scope import PRIVATE_PREFIX, is_private

Kind = Literal["services", "endpoints", "routes", "listeners", "namespaces", "policies", "secrets"]
KINDS: tuple[Kind, ...] = (
    "services",
    "endpoints",
    "routes",
    "listeners",
    "namespaces",
    "policies",
    "secrets",
)

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Endpoint ids are chosen by registrants (pod names, host:port, UUIDs): allow a bit more.
_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._:-]{0,251}[A-Za-z0-9])?$")

DEFAULT_NAMESPACE = "default"


_GOOD_LABELS: set[str] = set()
"""Labels already found valid: keys repeat their namespace and service names (a cold start
checks every service's endpoint keys); cleared when large, so it stays bounded."""


def check_label(value: str, field: str) -> str:
    """A DNS-1123 label: lowercase alphanumerics and '-', at most 63 characters."""
    if value in _GOOD_LABELS:
        return value
    if len(value) > 63 or not _LABEL.fullmatch(value):
        raise ValidationError(
            field, f"{value!r} is not a DNS-1123 label ([a-z0-9]([-a-z0-9]*[a-z0-9])?, max 63)"
        )
    if len(_GOOD_LABELS) >= 1 << 16:
        _GOOD_LABELS.clear()
    _GOOD_LABELS.add(value)
    return value


class ServiceRef(NamedTuple):
    """A reference to a service: namespace and name.

    Service references key most of the state and of the translation's indexes, and a
    cold start looks them up millions of times. A named tuple hashes and compares in C:
    a frozen dataclass's ``__hash__`` is a Python call, even with the hash cached.
    Keys parsed from the registry share one object per service (:func:`service_ref`), so
    those lookups also compare by identity.
    """

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@functools.lru_cache(maxsize=1 << 16)
def service_ref(namespace: str, name: str) -> ServiceRef:
    """The shared :class:`ServiceRef` of a service (any equal one works the same)."""
    return ServiceRef(namespace, name)


def parse_service_ref(value: str, own_namespace: str, field: str) -> ServiceRef:
    """``ns/name``, or ``name`` in the referring entry's own namespace."""
    if value.count("/") > 1:
        raise ValidationError(field, f"{value!r} must be 'name' or 'namespace/name'")
    ns, _, name = value.rpartition("/")
    ns = ns or own_namespace
    check_label(ns, field)
    check_label(name, field)
    return service_ref(ns, name)


class KeyRef(NamedTuple):
    """What a registry key names.

    ``namespace`` is empty for listeners (a namespace entry's is its own name);
    ``service`` is set for endpoints only.
    A named tuple, not a frozen dataclass: a cold start makes one per key of the registry,
    and a tuple is built much faster.
    """

    kind: Kind
    namespace: str
    name: str
    service: str = ""

    @property
    def service_ref(self) -> ServiceRef:
        """The service an endpoint belongs to, or that a service key names."""
        return service_ref(self.namespace, self.service or self.name)


_SHAPES: dict[str, int] = {
    "services": 2,
    "endpoints": 3,
    "routes": 2,
    "listeners": 1,
    "namespaces": 1,
    "policies": 2,
    "secrets": 2,
}


_ENDPOINT_HEADS: dict[str, tuple[str, str, str, ServiceRef]] = {}
"""``<prefix>endpoints/<ns>/<service>`` -> (prefix, ns, service, its ServiceRef), for heads
of endpoint keys already parsed: a service's endpoint keys share one (a cold start parses
every endpoint key of every service). Cleared when large, so it stays bounded."""


def _endpoint_id_ok(value: str) -> bool:
    """``_ENDPOINT_ID.fullmatch``, with plain ASCII letters and digits (most ids) checked
    in C first, much faster than the regex."""
    if value.isascii() and value.isalnum() and len(value) <= 253:
        return True
    return _ENDPOINT_ID.fullmatch(value) is not None


def known_endpoint_key(key: str, prefix: str) -> tuple[KeyRef, ServiceRef] | None:
    """An endpoint key whose ``<prefix>endpoints/<ns>/<service>`` was parsed before, with
    its service; None for any other key (then :func:`parse_key` decides)."""
    head, _, last = key.rpartition("/")
    known = _ENDPOINT_HEADS.get(head)
    if known is not None and known[0] == prefix and _endpoint_id_ok(last):
        # (tuple.__new__: a named tuple's own __new__ is a Python call, slower)
        return tuple.__new__(KeyRef, ("endpoints", known[1], last, known[2])), known[3]
    return None


def endpoint_head(head: str, prefix: str) -> ServiceRef | None:
    """The service of endpoint keys ``<head>/<id>``, when ``head`` is a valid
    ``<prefix>endpoints/<ns>/<service>``; None otherwise. (An id is checked apart.)"""
    known = _ENDPOINT_HEADS.get(head)
    if known is not None:
        return known[3] if known[0] == prefix else None
    start = prefix + "endpoints/"
    if not head.startswith(start):
        return None
    names = head[len(start) :].split("/")
    if len(names) != 2:
        return None
    try:
        ns, service = check_label(names[0], "key"), check_label(names[1], "key")
    except ValidationError:
        return None
    return _remember_head(head, prefix, ns, service)


_SERVICE_HEADS: dict[str, tuple[str, str]] = {}
"""``<prefix>services/<ns>`` -> (prefix, ns), for heads of service keys already parsed: a
cold start parses every service key. Cleared when large, so it stays bounded."""


def service_key_ref(key: str, prefix: str) -> ServiceRef | None:
    """The service a key ``<prefix>services/<ns>/<name>`` names; None for any other key
    (then :func:`parse_key` decides)."""
    head, _, name = key.rpartition("/")
    known = _SERVICE_HEADS.get(head)
    if known is None or known[0] != prefix:
        start = prefix + "services/"
        if not head.startswith(start):
            return None
        try:
            ns = check_label(head[len(start) :], "key")
        except ValidationError:
            return None
        if len(_SERVICE_HEADS) >= 1 << 16:
            _SERVICE_HEADS.clear()
        known = _SERVICE_HEADS[head] = (prefix, ns)
    if name not in _GOOD_LABELS:
        try:
            check_label(name, "key")
        except ValidationError:
            return None
    return service_ref(known[1], name)


def _remember_head(head: str, prefix: str, ns: str, service: str) -> ServiceRef:
    """Note a validated endpoint key head (see ``_ENDPOINT_HEADS``); its service."""
    if len(_ENDPOINT_HEADS) >= 1 << 16:
        _ENDPOINT_HEADS.clear()
    ref = service_ref(ns, service)
    _ENDPOINT_HEADS[head] = (prefix, ns, service, ref)
    return ref


def parse_key(key: str, prefix: str) -> KeyRef:
    """Parse ``<prefix><kind>/...`` into a :class:`KeyRef`; raise ValidationError if malformed."""
    known = known_endpoint_key(key, prefix)
    if known is not None:
        return known[0]
    if not key.startswith(prefix):
        raise ValidationError("", f"key is outside the prefix {prefix!r}")
    parts = key[len(prefix) :].split("/")
    kind, rest = parts[0], parts[1:]
    if kind not in _SHAPES:
        raise ValidationError("", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    want = _SHAPES[kind]
    if len(rest) != want or not all(rest):
        shape = {
            "services": "services/<ns>/<name>",
            "endpoints": "endpoints/<ns>/<service>/<id>",
            "routes": "routes/<ns>/<name>",
            "listeners": "listeners/<name>",
            "namespaces": "namespaces/<ns>",
            "policies": "policies/<ns>/<name>",
            "secrets": "secrets/<ns>/<name>",
        }[kind]
        raise ValidationError("", f"key must look like {prefix}{shape}")
    if kind == "listeners":
        return KeyRef("listeners", "", check_label(rest[0], "key"))
    if kind == "namespaces":
        ns = check_label(rest[0], "key")
        return KeyRef("namespaces", ns, ns)
    ns = check_label(rest[0], "key")
    if kind == "endpoints":
        service = check_label(rest[1], "key")
        if not _endpoint_id_ok(rest[2]):
            raise ValidationError(
                "key", f"endpoint id {rest[2]!r} has characters outside [A-Za-z0-9._:-]"
            )
        _remember_head(key.rpartition("/")[0], prefix, ns, service)
        return KeyRef("endpoints", ns, rest[2], service)
    return KeyRef(kind, ns, check_label(rest[1], "key"))  # type: ignore[arg-type]


def registry_key(prefix: str, ref: KeyRef) -> str:
    """The registry key :func:`parse_key` reads back as ``ref``."""
    if ref.kind == "listeners":
        return f"{prefix}listeners/{ref.name}"
    if ref.kind == "namespaces":
        return namespace_key(prefix, ref.name)
    if ref.kind == "endpoints":
        return f"{prefix}endpoints/{ref.namespace}/{ref.service}/{ref.name}"
    return f"{prefix}{ref.kind}/{ref.namespace}/{ref.name}"


def service_key(prefix: str, ref: ServiceRef) -> str:
    """``<prefix>services/<ns>/<name>``: the key of a service."""
    return f"{prefix}services/{ref.namespace}/{ref.name}"


def namespace_key(prefix: str, namespace: str) -> str:
    """``<prefix>namespaces/<ns>``: the key of a namespace's entry."""
    return f"{prefix}namespaces/{namespace}"


def endpoint_key(prefix: str, service: ServiceRef, endpoint_id: str) -> str:
    """``<prefix>endpoints/<ns>/<service>/<id>``: the key of one endpoint of a service."""
    return f"{prefix}endpoints/{service.namespace}/{service.name}/{endpoint_id}"


def entry_key(prefix: str, kind: str, ns_name: str) -> str:
    """``<prefix><kind>/<ns/name>`` from a kind and an ``ns/name`` (or listener name)."""
    return f"{prefix}{kind}/{ns_name}"


MAX_STATUS_REST = 1024
"""Characters of a rejected key kept in its status key; a longer (invalid) key is cut and
followed by a hash of it, so its status write stays small and distinct."""


def status_error_key(key: str, prefix: str) -> str:
    """``/mesh/status/errors/<kind>/<rest of the key>`` for a rejected entry."""
    rest = key[len(prefix) :] if key.startswith(prefix) else key.lstrip("/")
    if len(rest) > MAX_STATUS_REST:
        digest = hashlib.sha256(rest.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        rest = f"{rest[:MAX_STATUS_REST]}...{digest}"
    return f"{prefix}{STATUS_ERRORS}{rest}"


STATUS_ERRORS = "status/errors/"
"""Below the prefix: one key per rejected entry, its path the rejected key's."""


# -- Envoy resource names ------------------------------------------------------------------


def inbound_name(ref: ServiceRef) -> str:
    """``inbound|<name>.<ns>``: the inbound Listener of a service's sidecars and the local
    Cluster it forwards to (``127.0.0.1:app_port``). The ``|`` keeps it apart from every
    registry listener (a DNS label) and every service cluster (``<name>.<ns>[|subset]``:
    :func:`parse_cluster_name` reads it as no cluster of the mesh)."""
    # (a private name: no scope that takes clusters whole reaches another service's)
    return f"{PRIVATE_PREFIX}{ref.name}.{ref.namespace}"


def is_inbound_name(name: str) -> bool:
    """Whether ``name`` is one :func:`inbound_name` builds (a sidecar's own, not a route's)."""
    return is_private(name)


def cluster_name(ref: ServiceRef, subset: str = "") -> str:
    """``<name>.<ns>`` per service, ``<name>.<ns>|<subset>`` per subset."""
    base = f"{ref.name}.{ref.namespace}"
    return f"{base}|{subset}" if subset else base


class ClusterName(NamedTuple):
    """What an Envoy cluster name of the mesh names: a service, and a subset or ``""``."""

    service: ServiceRef
    subset: str


def parse_cluster_name(cluster: str) -> ClusterName | None:
    """The service and subset of ``<name>.<ns>[|subset]`` (None: not a cluster of the
    mesh, such as the bootstrap's own)."""
    base, _, subset = cluster.partition("|")
    name, sep, ns = base.rpartition(".")
    if not sep or not name or not ns or "." in name:
        return None
    return ClusterName(ServiceRef(ns, name), subset)


def cluster_subset(cluster: str) -> str:
    """The subset a cluster name ends with (``|<subset>``), or ``""``."""
    return cluster.partition("|")[2]


def service_host(ref: ServiceRef) -> str:
    """``<name>.<ns>``: the Host every HTTP listener routes to a service by default, and
    the name proxyless gRPC clients dial (``xds:///<name>.<ns>``)."""
    return f"{ref.name}.{ref.namespace}"
