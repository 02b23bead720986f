"""The registry's reference rules: what an entry may refer to, and which entries in force
depend on a service. Pure: no I/O.

Shared by the registry fold (:mod:`xds_server.ingest.state`) and the admin API's validation of
writes, so an etcdctl edit and an API write are judged alike. They include the tenancy rules
of routes (docs/security.md, Tenancy): a route attaches only to listeners that admit its
namespace, sends only to namespaces that export to it, claims no other namespace's default
hosts, and takes no host and match that an older route of another namespace holds.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from xds_server.model import (
    Endpoint,
    Entity,
    Listener,
    Match,
    Namespace,
    Route,
    Service,
    ServiceRef,
)
from xds_server.model.names import service_ref
from xds_server.model.policy import Policy
from xds_server.model.view import Dependent

Claim = tuple[str, Match]
"""What a route takes on the listeners it attaches to: one of its hosts and its match."""

OwnerOf = Callable[[Route], Route | None]
"""Given a route, an older route in force of another namespace that holds one of its
claims on a listener both attach to (None: nobody)."""

_NO_NAMESPACES: Mapping[str, Namespace] = {}


class ServiceView(Mapping[ServiceRef, Service]):
    """``base`` with some services replaced by another value (None: absent)."""

    __slots__ = ("_base", "_replaced")

    def __init__(
        self, base: Mapping[ServiceRef, Service], replaced: Mapping[ServiceRef, Service | None]
    ) -> None:
        self._base = base
        self._replaced = replaced

    def __getitem__(self, ref: ServiceRef) -> Service:
        if ref in self._replaced:
            value = self._replaced[ref]
            if value is None:
                raise KeyError(ref)
            return value
        return self._base[ref]

    def __iter__(self) -> Iterator[ServiceRef]:
        for ref in self._base:
            if ref not in self._replaced:
                yield ref
        for ref, value in self._replaced.items():
            if value is not None:
                yield ref

    def __len__(self) -> int:
        return sum(1 for _ in self)


def uses(entity: Entity, ref: ServiceRef) -> bool:
    """Does a route or listener refer to service ``ref``? (Endpoints belong to theirs.)"""
    if isinstance(entity, Route):
        return any(d.service == ref for d in entity.destinations) or (
            entity.mirror is not None and entity.mirror.service == ref
        )
    if isinstance(entity, Listener):
        return entity.service == ref or (
            entity.tracing is not None and entity.tracing.service == ref
        )
    return False


def dependents(
    ref: ServiceRef,
    new: Service | None,
    in_force: Iterable[tuple[str, Entity]],
    services: Mapping[ServiceRef, Service],
    listeners: Mapping[str, Listener],
) -> list[Dependent]:
    """Routes and listeners of ``in_force`` (key, entity) that resolve against ``services``
    today and would not if service ``ref`` became ``new`` (None: deleted), in key order."""
    changed = ServiceView(services, {ref: new})
    found = []
    for key, entity in in_force:
        if not uses(entity, ref) or check_refs(entity, services, listeners) is not None:
            continue
        problem = check_refs(entity, changed, listeners)
        if problem is not None:
            found.append(Dependent(key, *problem))
    return sorted(found)


def claims(route: Route) -> Iterator[Claim]:
    """The (host, match) pairs a route takes."""
    for host in route.hosts:
        yield host, route.match


def age(route: Route) -> tuple[int, str]:
    """Older first: the revision that created the route's key, then its ``ns/name``."""
    return route.created, route.key_name


def globs_overlap(a: str, b: str) -> bool:
    """Could one name match both globs? (Errs towards yes, as for listener clashes.)"""
    return a == b or fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a)


def contests(a: Route, b: Route) -> bool:
    """Do routes of two namespaces take the same host and match on a listener both attach
    to? (Within one namespace, ``priority`` orders them instead.)"""
    if a.namespace == b.namespace or a.match != b.match:
        return False
    if not globs_overlap(a.listener, b.listener):
        return False
    return not set(a.hosts).isdisjoint(b.hosts)


def _default_host_owner(
    host: str, namespace: str, services: Mapping[ServiceRef, Service]
) -> str | None:
    """Why a route of ``namespace`` may not name ``host``: it is (or, as a suffix wildcard,
    could match) the default host ``<svc>.<ns>`` of a service of another namespace.

    A default host has exactly one dot (labels have none). An exact host is refused when
    such a service is registered (it is judged again when services change). A suffix
    wildcard (``*x``) beats the service's ``<svc>.<ns>:*`` domain in Envoy whatever port a
    client names, so it is refused when it could match another namespace's default host at
    all: it must end with ``.<own namespace>`` or hold a second dot."""
    name, colon, _ = host.partition(":")
    if not name.startswith("*"):
        if name.count(".") != 1 or name.endswith(".*"):
            return None
        svc, _, ns = name.partition(".")
        ref = service_ref(ns, svc)
        owned = services.get(ref)
        if ns == namespace or owned is None or owned.protocol == "tcp":
            return None
        return f"is the default host of service {ref}: only routes of namespace {ns} may name it"
    if name == "*" and not colon:
        return None  # Envoy's catch-all: every exact and wildcard domain wins over it
    tail = name[1:]
    rule = f"a suffix wildcard must end with .{namespace} (or hold two dots)"
    if not colon and tail.isdigit():
        return f"could match any host with a port (<svc>.<ns>:<port>) of every namespace; {rule}"
    dots = tail.count(".")
    if dots >= 2:
        return None
    if dots == 1:
        ns = tail.rpartition(".")[2]
        if ns == namespace:
            return None
        return f"could match default hosts <svc>.{ns} of namespace {ns}; {rule}"
    return f"could match default hosts <svc>.<ns> of namespaces ending in {tail!r}; {rule}"


def check_tenancy(
    route: Route,
    services: Mapping[ServiceRef, Service],
    listeners: Mapping[str, Listener],
    namespaces: Mapping[str, Namespace],
    owner_of: OwnerOf | None,
) -> tuple[str, str] | None:
    """(field, reason) when ``route`` breaks a tenancy rule: a listener it attaches to does
    not admit its namespace; a destination's (or the mirror's) namespace does not export to
    it; it names another namespace's default host; or an older route of another namespace
    holds one of its host and match (``owner_of``)."""
    ns = route.namespace
    for listener in listeners.values():
        if (
            listener.protocol == "http"
            and route.listener_matches(listener.name)
            and not listener.admits(ns)
        ):
            return (
                "listener",
                f"listener {listener.name} does not admit routes of namespace {ns} "
                f"(its allowed_namespaces: {list(listener.allowed_namespaces)})",
            )
    targets = [(f"destinations[{i}].service", d.service) for i, d in enumerate(route.destinations)]
    if route.mirror is not None:
        targets.append(("mirror.service", route.mirror.service))
    for field, ref in targets:
        if ref.namespace == ns:
            continue
        entry = namespaces.get(ref.namespace)
        if entry is not None and not entry.exports_to(ns):
            return (
                field,
                f"namespace {ref.namespace} does not export to namespace {ns} (its "
                f"export_to: {list(entry.export_to)}), so {ref} is not reachable from it",
            )
    for i, host in enumerate(route.hosts):
        why = _default_host_owner(host, ns, services)
        if why is not None:
            return (f"hosts[{i}]", f"{host!r} {why}")
    owner = owner_of(route) if owner_of is not None else None
    if owner is not None:
        shared = next(h for h in route.hosts if h in owner.hosts)
        m = route.match
        return (
            "match",
            f"host {shared!r} with {m.kind} {m.value!r} on listener {route.listener} is held "
            f"by the older route {owner.key_name} of namespace {owner.namespace} (listener "
            f"{owner.listener}); a route of another namespace may add a more specific match",
        )
    return None


class RouteSecret(Protocol):
    """What the reference rules read of a registry secret (``model.secret.Secret``)."""

    @property
    def kind(self) -> str: ...


def check_route_secrets(
    route: Route, secrets: Mapping[str, RouteSecret] | None
) -> tuple[str, str] | None:
    """(field, reason) when a secret ``route`` names (``jwt.jwks.secret``,
    ``api_keys.secret``) is another namespace's, not in force, or of another shape. A
    namespace's secrets are its own: a route may not read another namespace's keys.
    ``secrets`` None: only the namespace rule is judged."""
    wanted: list[tuple[str, str, str]] = []
    if route.jwt is not None and route.jwt.jwks_secret:
        wanted.append(("jwt.jwks.secret", route.jwt.jwks_secret, "jwks"))
    if route.api_keys is not None:
        wanted.append(("api_keys.secret", route.api_keys.secret, "keys"))
    for field, ref, kind in wanted:
        ns = ref.partition("/")[0]
        if ns != route.namespace:
            return (
                field,
                f"secret {ref} is of namespace {ns}: a route reads only its own "
                f"namespace's ({route.namespace}) secrets",
            )
        if secrets is None:
            continue
        secret = secrets.get(ref)
        if secret is None:
            return (field, f"secret {ref} is not in force")
        if secret.kind != kind:
            shape = '{"jwks": ...}' if kind == "jwks" else '{"keys": ...}'
            return (field, f"secret {ref} is a {secret.kind} secret, not {shape}")
    return None


def check_listener_secrets(
    listener: Listener, secrets: Mapping[str, RouteSecret]
) -> tuple[str, str] | None:
    """(field, reason) when ``listener``'s ``tls`` names a secret not in force or of the
    wrong shape: Envoy would wait for it over SDS and never serve the listener."""
    tls = listener.tls
    if tls is None:
        return None
    wanted = [(f"tls.certificates[{i}]", ref, "tls") for i, ref in enumerate(tls.certificates)]
    if tls.client_ca is not None:
        wanted.append(("tls.client_ca", tls.client_ca, "ca"))
    for field, ref, kind in wanted:
        secret = secrets.get(ref)
        if secret is None:
            return field, f"secret {ref!r} is not in force"
        if secret.kind != kind:
            shape = '{"cert", "key"}' if kind == "tls" else '{"ca"}'
            return field, f"secret {ref!r} is a {secret.kind} secret, not {shape}"
    return None


def check_refs(
    entity: Entity,
    services: Mapping[ServiceRef, Service],
    listeners: Mapping[str, Listener],
    namespaces: Mapping[str, Namespace] = _NO_NAMESPACES,
    owner_of: OwnerOf | None = None,
    secrets: Mapping[str, RouteSecret] | None = None,
) -> tuple[str, str] | None:
    """(field, reason) when ``entity`` refers to a service, subset or listener port that
    ``services`` / ``listeners`` do not allow, or (routes) breaks a tenancy rule
    (:func:`check_tenancy`, given the namespace entries in force and who holds what): the
    reference rules of registry.md, shared by the registry fold and the admin API's
    validation of writes. ``secrets`` (those in force): routes' secrets must exist and be
    of the right shape (listeners' ``tls`` secrets too); without it only routes' secrets'
    namespace is judged."""
    if isinstance(entity, Endpoint):
        svc = services.get(entity.service)
        if svc is None:
            return ("", f"service {entity.service} is not registered")
        if entity.port is None and svc.port is None:
            return ("port", f"is required: service {entity.service} has no port")
        return None
    if isinstance(entity, Route):
        for i, d in enumerate(entity.destinations):
            svc = services.get(d.service)
            if svc is None:
                return (f"destinations[{i}].service", f"unknown service {d.service}")
            if d.subset and svc.selector(d.subset) is None:
                return (
                    f"destinations[{i}].subset",
                    f"service {d.service} has no subset {d.subset!r}",
                )
            if svc.protocol == "tcp":
                return (
                    f"destinations[{i}].service",
                    f"service {d.service} speaks tcp, not http",
                )
        m = entity.mirror
        if m is not None:
            svc = services.get(m.service)
            if svc is None:
                return ("mirror.service", f"unknown service {m.service}")
            if m.subset and svc.selector(m.subset) is None:
                return ("mirror.subset", f"service {m.service} has no subset {m.subset!r}")
            if svc.protocol == "tcp":
                return ("mirror.service", f"service {m.service} speaks tcp, not http")
        problem = check_route_secrets(entity, secrets)
        if problem is not None:
            return problem
        return check_tenancy(entity, services, listeners, namespaces, owner_of)
    if isinstance(entity, Policy):
        target = entity.target_ref
        if target is None:
            return None
        svc = services.get(target)
        if svc is None:
            return ("target", f"unknown service {target}")
        if svc.protocol == "tcp":
            # The RBAC filter runs in the HTTP connection manager; a tcp service's inbound
            # has none, so the policy could not be enforced: refuse it rather than ignore it.
            return ("target", f"service {target} speaks tcp; policies apply to HTTP services")
        return None
    if isinstance(entity, Listener):
        if entity.service is not None and entity.service not in services:
            return ("service", f"unknown service {entity.service}")
        if entity.tracing is not None:
            tracing = entity.tracing
            collector = services.get(tracing.service)
            if collector is None:
                return ("tracing.service", f"unknown service {tracing.service}")
            # Zipkin posts JSON over HTTP; OpenTelemetry speaks OTLP over gRPC (HTTP/2).
            wanted = ("grpc", "http2") if tracing.provider == "opentelemetry" else ("http", "http2")
            if collector.protocol not in wanted:
                return (
                    "tracing.service",
                    f"service {tracing.service} speaks {collector.protocol}; "
                    f"{tracing.provider} needs {' or '.join(wanted)}",
                )
        for other in listeners.values():
            if other.name != entity.name and _listeners_clash(entity, other):
                return (
                    "port",
                    f"{entity.address}:{entity.port} is already used by listener "
                    f"{other.name} for the same nodes",
                )
        if secrets is not None:
            return check_listener_secrets(entity, secrets)
    return None


_ANY = frozenset({"0.0.0.0", "::"})


def _listeners_clash(a: Listener, b: Listener) -> bool:
    """Would one Envoy be asked to bind both? Same port, overlapping address and nodes."""
    if a.port != b.port:
        return False
    if a.address != b.address and not ({a.address, b.address} & _ANY):
        return False
    # Node globs overlap if either could match the other (an approximation that errs
    # towards reporting a clash: a rejected listener is reported, a clash would be NACKed).
    return any(
        x == y or fnmatch.fnmatchcase(x, y) or fnmatch.fnmatchcase(y, x)
        for x in a.nodes
        for y in b.nodes
    )
