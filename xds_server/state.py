"""Registry state: what is in force, what is rejected, and what changed.

:meth:`RegistryState.apply` folds one :class:`~xds_server.registry.RegistryUpdate`
into the state and returns a :class:`ChangeSet` naming exactly what changed in
force, so translation and the cache redo only that work. No I/O happens here.

Two kinds of problems exist:

* schema problems: the key's current raw value is not a valid entry (bad JSON,
  unknown field, value out of range). They stay until the key changes.
* reference problems: the entry is valid but names something that is not in
  force (a route to an unknown service or subset). They are re-checked when
  what they refer to changes.

Either way the key's last good value stays in force when there is one that
still resolves (``Problem.last_good_kept``), and nothing bad reaches Envoy.

The state is mutated in place by its one owner (the controller task); it is not
copied per revision because a registry of 100,000 endpoints would make that
cost more than the change itself.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from xds_server.errors import ValidationError
from xds_server.model import (
    Endpoint,
    Entity,
    KeyRef,
    Listener,
    Problem,
    Route,
    Service,
    ServiceRef,
    parse_entry,
)
from xds_server.model.names import KINDS, parse_key
from xds_server.registry import Changes, RegistryUpdate, Reset


@dataclass
class ChangeSet:
    """What one update changed in force. Empty sets mean nothing to push."""

    revision: int = 0
    services: set[ServiceRef] = field(default_factory=set)
    endpoints: set[ServiceRef] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)
    listeners: set[str] = field(default_factory=set)
    problems_set: dict[str, Problem] = field(default_factory=dict)
    problems_cleared: set[str] = field(default_factory=set)

    @property
    def config_changed(self) -> bool:
        return bool(self.services or self.endpoints or self.routes or self.listeners)

    def merge(self, later: ChangeSet) -> None:
        """Fold a later ChangeSet into this one (bursts are translated once)."""
        self.revision = max(self.revision, later.revision)
        self.services |= later.services
        self.endpoints |= later.endpoints
        self.routes |= later.routes
        self.listeners |= later.listeners
        for key, problem in later.problems_set.items():
            self.problems_set[key] = problem
            self.problems_cleared.discard(key)
        for key in later.problems_cleared:
            self.problems_set.pop(key, None)
            self.problems_cleared.add(key)


@dataclass(slots=True)
class _Dirty:
    """Keys to resolve, by kind, each kind in the order its keys came.

    Sorted by kind as they are stored, not in a pass of their own afterwards: a cold start
    stores 110,000 keys, and a second walk to look up each key's kind was ~4% of its fold.
    Walking them in the order they came, where their values were allocated one after the
    other, takes about half the time it takes in hash order.
    """

    by_kind: dict[str, dict[str, None]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    orphans: dict[str, None] = field(default_factory=dict)  # keys that name no entry
    forgotten: list[str] = field(default_factory=list)  # keys deleted meanwhile

    def add(self, key: str, ref: KeyRef | None) -> None:
        (self.by_kind[ref.kind] if ref is not None else self.orphans)[key] = None


@dataclass(slots=True)
class _Listing:
    """A listing being received in parts."""

    known: bool  # the state held keys when it began: what it does not name is deleted
    seen: set[str]  # keys it named (only tracked when ``known``)
    dirty: _Dirty  # keys stored from it, to resolve at the end


class RegistryState:
    """The registry as validated and resolved at :attr:`revision`."""

    def __init__(self, prefix: str = "/mesh/") -> None:
        self.prefix = prefix
        self.revision = 0
        self.services: dict[ServiceRef, Service] = {}
        self.endpoints: dict[ServiceRef, dict[str, Endpoint]] = {}
        self.routes: dict[str, Route] = {}
        self.listeners: dict[str, Listener] = {}
        self.problems: dict[str, Problem] = {}
        self._listing: _Listing | None = None
        self._raw: dict[str, int] = {}  # every known key -> mod_revision
        self._latest: dict[str, Entity] = {}  # last schema-valid value per key
        self._schema_problems: dict[str, Problem] = {}
        self._force: dict[str, Entity] = {}
        self._endpoint_keys: dict[ServiceRef, set[str]] = {}
        self._route_keys: set[str] = set()
        self._listener_keys: set[str] = set()

    # -- folding updates ---------------------------------------------------------------

    @property
    def listing(self) -> bool:
        """A listing is being received in parts: what is in force is not its result yet."""
        return self._listing is not None

    def apply(self, update: RegistryUpdate) -> ChangeSet:
        """Fold one update in; return what changed in force and in problems."""
        dirty = _Dirty()
        if isinstance(update, Reset):
            # A listing: store what is new or modified, forget what is gone. Parts of a
            # listing are stored as they come (entries in force do not change yet); the
            # last part forgets what the listing did not name and resolves it all.
            listing = self._listing
            if listing is None or update.part == 0:
                # A part 0 restarting a broken-off listing keeps what that one stored (it
                # is still to be resolved) but not what it saw.
                dirty = listing.dirty if listing is not None else dirty
                listing = self._listing = _Listing(bool(self._raw), set(), dirty)
            raw, seen, dirty = self._raw, listing.seen, listing.dirty
            store, by_kind, orphans = self._store, dirty.by_kind, dirty.orphans
            for e in update.entries:
                if listing.known:
                    seen.add(e.key)
                if raw.get(e.key) != e.mod_revision:
                    ref = store(e.key, e.value, e.mod_revision, e.lease)
                    # (dirty.add, inlined: a cold start stores 110,000 keys here)
                    (by_kind[ref.kind] if ref is not None else orphans)[e.key] = None
            if update.more:
                return ChangeSet(revision=self.revision)
            self._listing = None
            for key in [k for k in raw if k not in seen] if listing.known else ():
                self._forget(key, dirty)
        else:
            assert isinstance(update, Changes)
            for ev in update.events:
                if ev.kind == "put":
                    dirty.add(ev.key, self._store(ev.key, ev.value, ev.revision, ev.lease))
                else:
                    self._forget(ev.key, dirty)
        self.revision = max(self.revision, update.revision)
        changes = ChangeSet(revision=self.revision)
        self._resolve(dirty, changes)
        return changes

    def _store(self, key: str, value: bytes, revision: int, lease: int) -> KeyRef | None:
        """Parse and keep a key's new value; return the key's ref (None: names no entry)."""
        self._raw[key] = revision
        ref, result = parse_entry(key, value, self.prefix, revision=revision, lease=lease)
        if ref is not None:
            if ref.kind == "routes":
                self._route_keys.add(key)
            elif ref.kind == "listeners":
                self._listener_keys.add(key)
        if isinstance(result, Problem):
            self._schema_problems[key] = result
            return ref
        self._schema_problems.pop(key, None)
        self._latest[key] = result
        if isinstance(result, Endpoint):
            keys = self._endpoint_keys.get(result.service)
            if keys is None:
                keys = self._endpoint_keys[result.service] = set()
            keys.add(key)
        return ref

    def _ref(self, key: str) -> KeyRef | None:
        """What a key names (None: nothing). Parsed again rather than kept: only deleted
        keys need it, and a map of 110,000 refs held ~14 MB."""
        try:
            return parse_key(key, self.prefix)
        except ValidationError:
            return None

    def _forget(self, key: str, dirty: _Dirty) -> None:
        """Drop a deleted key's value; note it in ``dirty`` to resolve, and as forgotten."""
        dirty.add(key, self._ref(key))
        dirty.forgotten.append(key)
        self._raw.pop(key, None)
        self._schema_problems.pop(key, None)
        old = self._latest.pop(key, None)
        if isinstance(old, Endpoint):
            keys = self._endpoint_keys.get(old.service)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._endpoint_keys[old.service]

    # -- resolving references --------------------------------------------------------

    def _resolve(self, dirty: _Dirty, changes: ChangeSet) -> None:
        by_kind = dirty.by_kind  # (each kind in the order its keys came: see _Dirty)
        for key in dirty.orphans:
            self._set_problem(key, self._schema_problems.get(key), changes)

        for key in by_kind["services"]:
            self._resolve_key(key, changes)
        if changes.services:
            # Anything may refer to a service whose presence, port or subsets changed.
            # Endpoints in force are always among _endpoint_keys (a key names its service).
            endpoints = by_kind["endpoints"]
            for svc in changes.services:
                keys = self._endpoint_keys.get(svc)
                if keys and not endpoints.keys() >= keys:  # (a listing has them all already)
                    endpoints.update(dict.fromkeys(keys))
            by_kind["routes"].update(dict.fromkeys(self._route_keys))
            by_kind["listeners"].update(dict.fromkeys(self._listener_keys))
        if by_kind["listeners"]:
            # Listeners can clash with each other (same address and port for the same
            # nodes): re-check them all, oldest first, so the outcome is deterministic.
            by_kind["listeners"].update(dict.fromkeys(self._listener_keys))
        self._resolve_endpoints(by_kind["endpoints"], changes)
        for kind in ("routes", "listeners"):
            ordered: Iterable[str] = by_kind[kind]
            if kind == "listeners":
                ordered = sorted(ordered, key=lambda k: (self._raw.get(k, 0), k))
            for key in ordered:
                self._resolve_key(key, changes)
        for key in dirty.forgotten:
            if key not in self._raw:  # (not put again after)
                self._route_keys.discard(key)
                self._listener_keys.discard(key)

    def _resolve_endpoints(self, keys: Iterable[str], changes: ChangeSet) -> None:
        """:meth:`_resolve_key` for endpoint keys, the bulk of a registry (100,000 at a cold
        start): a valid endpoint of a registered service, with no problem to clear, is put
        in force inline; anything else takes :meth:`_resolve_key`."""
        latest, force, schema, problems = (
            self._latest,
            self._force,
            self._schema_problems,
            self.problems,
        )
        services, endpoints, changed = self.services, self.endpoints, changes.endpoints
        for key in keys:
            current = latest.get(key)
            if type(current) is not Endpoint or key in schema or key in problems:
                self._resolve_key(key, changes)
                continue
            svc = services.get(current.service)
            if svc is None or (current.port is None and svc.port is None):
                self._resolve_key(key, changes)  # (check_refs words the problem)
                continue
            previous = force.get(key)
            if previous is current or (previous is not None and previous == current):
                continue
            force[key] = current
            eps = endpoints.get(current.service)
            if eps is None:
                eps = endpoints[current.service] = {}
            eps[current.id] = current
            changed.add(current.service)

    def _resolve_key(self, key: str, changes: ChangeSet) -> None:
        schema_problem = self._schema_problems.get(key)
        current = None if schema_problem else self._latest.get(key)
        previous = self._force.get(key)
        problem: Problem | None
        if current is not None:
            error = check_refs(current, self.services, self.listeners)
            if error is None:
                if previous is not current:
                    self._set_force(key, current, changes)
                if key in self.problems:
                    self._set_problem(key, None, changes)
                return
            problem = Problem(key, error[0], error[1], self._raw.get(key, 0))
        else:
            problem = schema_problem
        # The current value cannot be served: keep the last good one if it resolves. That
        # is the value in force, or, when the current raw value is invalid and the key had
        # dropped out (say its service was deleted meanwhile), its last schema-valid value.
        fallbacks = [previous]
        if schema_problem is not None:
            fallbacks.append(self._latest.get(key))
        for fallback in fallbacks:
            if fallback is None or key not in self._raw or self._check_refs(fallback) is not None:
                continue
            if problem is not None:
                problem = Problem(
                    problem.key, problem.field, problem.reason, problem.revision, True
                )
            self._set_force(key, fallback, changes)
            self._set_problem(key, problem, changes)
            return
        self._set_force(key, None, changes)
        self._set_problem(key, problem, changes)

    def _check_refs(self, entity: Entity) -> tuple[str, str] | None:
        """(field, reason) when ``entity`` refers to something not in force."""
        return check_refs(entity, self.services, self.listeners)

    # -- bookkeeping -----------------------------------------------------------------------

    def _set_force(self, key: str, entity: Entity | None, changes: ChangeSet) -> None:
        old = self._force.get(key)
        if old is entity or (old is not None and old == entity):
            return
        if entity is None:
            del self._force[key]
        else:
            self._force[key] = entity
        some = entity if entity is not None else old
        if type(some) is Endpoint:  # the common kind first
            eps = self.endpoints.get(some.service)
            if eps is None:
                eps = self.endpoints[some.service] = {}
            if entity is not None:
                eps[some.id] = some
            else:
                eps.pop(some.id, None)
                if not eps:
                    del self.endpoints[some.service]
            changes.endpoints.add(some.service)
        elif isinstance(some, Service):
            ref = some.ref
            if isinstance(entity, Service):
                self.services[ref] = entity
            else:
                self.services.pop(ref, None)
            changes.services.add(ref)
        elif isinstance(some, Route):
            if isinstance(entity, Route):
                self.routes[key] = entity
            else:
                self.routes.pop(key, None)
            changes.routes.add(key)
        elif isinstance(some, Listener):
            if isinstance(entity, Listener):
                self.listeners[some.name] = entity
            else:
                self.listeners.pop(some.name, None)
            changes.listeners.add(some.name)

    def _set_problem(self, key: str, problem: Problem | None, changes: ChangeSet) -> None:
        old = self.problems.get(key)
        if old == problem:
            return
        if problem is None:
            del self.problems[key]
            changes.problems_cleared.add(key)
            changes.problems_set.pop(key, None)
        else:
            self.problems[key] = problem
            changes.problems_set[key] = problem
            changes.problems_cleared.discard(key)


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
