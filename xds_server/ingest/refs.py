"""The registry's reference rules: what an entry may refer to, and which entries in force
depend on a service. Pure: no I/O.

Shared by the registry fold (:mod:`xds_server.ingest.state`) and the admin API's validation of
writes, so an etcdctl edit and an API write are judged alike.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping

from xds_server.model import Endpoint, Entity, Listener, Route, Service, ServiceRef
from xds_server.model.policy import Policy
from xds_server.model.view import Dependent


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


def check_refs(
    entity: Entity, services: Mapping[ServiceRef, Service], listeners: Mapping[str, Listener]
) -> tuple[str, str] | None:
    """(field, reason) when ``entity`` refers to a service, subset or listener port that
    ``services`` / ``listeners`` do not allow: the reference rules of registry.md, shared
    by the registry fold and the admin API's validation of writes."""
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
        return None
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
