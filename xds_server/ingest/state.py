"""Registry state: what is in force, what is rejected, and what changed.

:meth:`RegistryState.apply` folds one :class:`~xds_server.ingest.registry.RegistryUpdate`
into the state and returns a :class:`ChangeSet` naming exactly what changed in
force, so translation and the cache redo only that work. No I/O happens here.

Two kinds of problems exist:

* schema problems: the key's current raw value is not a valid entry (bad JSON,
  unknown field, value out of range). They stay until the key changes.
* reference problems: the entry is valid but names something that is not in
  force (a route to an unknown service or subset), or breaks a tenancy rule (a
  route on a listener that does not admit its namespace, to a namespace that does
  not export to it, or taking another namespace's host and match: ``refs.py``).
  They are re-checked when what they refer to changes.

Either way the key's last good value stays in force when there is one that
still resolves (``Problem.last_good_kept``), and nothing bad reaches Envoy.

The state is mutated in place by its one owner (the controller task); it is not
copied per revision because for a large registry that would cost more than the
change itself.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from xds_server.errors import ValidationError
from xds_server.ingest.refs import (
    Claim,
    ServiceView,
    age,
    check_listener_secrets,
    check_refs,
    claims,
    contests,
    dependents,
)
from xds_server.ingest.registry import Changes, Entry, RegistryUpdate, Reset
from xds_server.model import (
    Endpoint,
    Entity,
    KeyRef,
    Listener,
    Namespace,
    Problem,
    Route,
    Service,
    ServiceRef,
    parse_entry,
)
from xds_server.model.endpoint import decode_endpoint
from xds_server.model.names import (
    KINDS,
    endpoint_head,
    parse_key,
    service_key,
    service_key_ref,
)
from xds_server.model.policy import Policy
from xds_server.model.secret import Secret
from xds_server.model.service import decode_plain_service
from xds_server.model.view import ChangeSet, Dependent

__all__ = ["RegistryState", "check_refs"]

_KEY = operator.itemgetter(0)
"""An :class:`Entry`'s key."""
_ID = operator.itemgetter(1)
"""An :class:`Endpoint`'s id."""


@dataclass(slots=True)
class _HeldFrom:
    """What services held within one update had in force before it: a hold taken and let
    go in the same update must leave in the ChangeSet only what really changed."""

    problems: dict[str, Problem | None] = field(default_factory=dict)
    endpoints: dict[ServiceRef, dict[str, Endpoint]] = field(default_factory=dict)


@dataclass(slots=True)
class _Dirty:
    """Keys to resolve, by kind, each kind in the order its keys came.

    Sorted by kind as they are stored, not in a pass of their own afterwards: a cold start
    stores every key of the registry, and a second walk would look up each key's kind again.
    Walking them in the order they came, where their values were allocated one after the
    other, takes about half the time it takes in hash order.
    """

    by_kind: dict[str, dict[str, None]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    orphans: dict[str, None] = field(default_factory=dict)  # keys that name no entry
    forgotten: list[str] = field(default_factory=list)  # keys deleted meanwhile
    runs: dict[str, _Run] = field(default_factory=dict)
    """Runs of new endpoint keys of one service stored together (a listing's), by their
    first key, which stands for the run in ``by_kind["endpoints"]``: they are resolved
    together too (:meth:`RegistryState._resolve_run`)."""
    run_keys: set[str] = field(default_factory=set)  # every key of ``runs``

    def add(self, key: str, ref: KeyRef | None) -> None:
        (self.by_kind[ref.kind] if ref is not None else self.orphans)[key] = None

    def split_runs(self) -> None:
        """Turn the runs into keys of their own (their values may change meanwhile), each
        run's keys where its first key stood: keys are resolved in the order they were
        stored, and that order is the order of a service's endpoints."""
        if not self.runs:
            return
        endpoints = self.by_kind["endpoints"]
        ordered: dict[str, None] = {}
        for key in endpoints:
            run = self.runs.get(key)
            if run is None:
                ordered[key] = None
            else:
                ordered.update(dict.fromkeys(run.keys))
        endpoints.clear()
        endpoints.update(ordered)
        self.runs.clear()
        self.run_keys.clear()


@dataclass(slots=True)
class _Run:
    """New endpoint keys of one service, stored together, and their values."""

    service: ServiceRef
    keys: list[str]
    values: list[Endpoint]


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
        # meshd's own keys, no entries: the mesh CA's, and join tokens (hashes only)
        self._ca_prefix = (prefix + "ca/", prefix + "tokens/")
        self.revision = 0
        self.services: dict[ServiceRef, Service] = {}
        self.endpoints: dict[ServiceRef, dict[str, Endpoint]] = {}
        self.routes: dict[str, Route] = {}
        self.listeners: dict[str, Listener] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.policies: dict[str, Policy] = {}
        self.secrets: dict[str, Secret] = {}
        """``ns/name`` -> secret in force."""
        self.problems: dict[str, Problem] = {}
        self._note_ids = False  # the update being resolved notes which endpoints changed
        self._listing: _Listing | None = None
        self._raw: dict[str, int] = {}  # every known key -> mod_revision
        self._latest: dict[str, Entity] = {}  # last schema-valid value per key
        self._schema_problems: dict[str, Problem] = {}
        self._force: dict[str, Entity] = {}
        self._endpoint_keys: dict[ServiceRef, set[str]] = {}
        self._route_keys: set[str] = set()
        self._listener_keys: set[str] = set()
        self._policy_keys: set[str] = set()
        self._held: dict[ServiceRef, Service | None] = {}
        """Services kept in force as they were for routes or listeners that depend on them,
        though the registry deleted them (None) or changed them (their new value)."""
        self._claim_keys: dict[Claim, dict[str, dict[str, None]]] = {}
        """Route keys by the (host, match) their last valid value or value in force takes,
        then by namespace: who may contest whom (tenancy), without a walk over every route
        nor over one namespace's own routes."""
        self._key_claims: dict[str, tuple[str, frozenset[Claim]]] = {}
        """Route key -> its namespace and what it is indexed under in ``_claim_keys``."""

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
                dirty.split_runs()  # (the new listing may name their keys at other values)
                listing = self._listing = _Listing(bool(self._raw), set(), dirty)
            dirty, seen = listing.dirty, listing.seen
            if listing.known:
                seen.update(map(_KEY, update.entries))
            self._store_listed(update.entries, dirty)
            if update.more:
                return ChangeSet(revision=self.revision)
            self._listing = None
            for key in [k for k in self._raw if k not in seen] if listing.known else ():
                self._forget(key, dirty)
        else:
            assert isinstance(update, Changes)
            for ev in update.events:
                if ev.kind == "put":
                    stored = self._store(
                        ev.key, ev.value, ev.revision, ev.lease, ev.create_revision
                    )
                    dirty.add(ev.key, stored)
                else:
                    self._forget(ev.key, dirty)
        self.revision = max(self.revision, update.revision)
        changes = ChangeSet(revision=self.revision)
        # Which endpoints changed is noted for watch events, not for a listing: it names
        # every endpoint of the registry, whose services are translated whole anyway.
        self._note_ids = isinstance(update, Changes)
        self._resolve(dirty, changes)
        return changes

    def _store(
        self, key: str, value: bytes, revision: int, lease: int, created: int = 0
    ) -> KeyRef | None:
        """Parse and keep a key's new value; return the key's ref (None: names no entry).
        ``created``: the revision that created the key (0: unknown, taken as ``revision``
        for a key not known yet, else as it was)."""
        if key.startswith(self._ca_prefix):
            return None  # the mesh CA (identity/ca.py) and join tokens (model/join_token.py)
        if not created:
            known = self._latest.get(key) if key in self._raw else None
            created = known.created if isinstance(known, Route) and known.created else revision
        self._raw[key] = revision
        ref, result = parse_entry(
            key, value, self.prefix, revision=revision, lease=lease, created=created
        )
        if ref is not None:
            if ref.kind == "routes":
                self._route_keys.add(key)
            elif ref.kind == "listeners":
                self._listener_keys.add(key)
            elif ref.kind == "policies":
                self._policy_keys.add(key)
        if isinstance(result, Problem):
            self._schema_problems[key] = result
            return ref
        self._schema_problems.pop(key, None)
        self._latest[key] = result
        if isinstance(result, Route):
            self._reindex(key)
        elif isinstance(result, Endpoint):
            keys = self._endpoint_keys.get(result.service)
            if keys is None:
                keys = self._endpoint_keys[result.service] = set()
            keys.add(key)
        return ref

    def _store_listed(self, entries: Iterable[Entry], dirty: _Dirty) -> None:
        """:meth:`_store` each new or modified key of a listing, noting it in ``dirty``.

        Most keys of a registry are endpoints, and a listing names them service by service
        (etcd lists in key order). A run of new endpoint keys of one service, each value of
        the common shape (:func:`decode_endpoint`), goes into each map of the state in one
        update, in C, instead of key by key; any other key takes :meth:`_store`. The maps
        end up as :meth:`_store` would leave them, in the same order.
        """
        raw, store, prefix = self._raw, self._store, self.prefix
        by_kind, orphans = dirty.by_kind, dirty.orphans
        run_head, run_ref = "", None  # the endpoint key head of the run, and its service
        keys: list[str] = []
        values: list[Endpoint] = []
        revisions: list[int] = []
        for key, value, revision, lease, created in entries:
            known = raw.get(key)
            if known == revision:
                continue
            if known is None:
                head, _, endpoint_id = key.rpartition("/")
                if head != run_head:
                    if keys:
                        self._store_run(run_ref, keys, values, revisions, dirty)
                        keys, values, revisions = [], [], []
                    run_head, run_ref = head, endpoint_head(head, prefix)
                if (
                    run_ref is not None
                    and endpoint_id.isascii()
                    and endpoint_id.isalnum()  # (else _store checks it)
                    and len(endpoint_id) <= 253
                ):
                    endpoint = decode_endpoint(run_ref, endpoint_id, value, lease=lease)
                    if endpoint is not None:
                        keys.append(key)
                        values.append(endpoint)
                        revisions.append(revision)
                        continue
                elif run_ref is None and self._store_new_service(key, value, revision, dirty):
                    continue
            if keys:
                self._store_run(run_ref, keys, values, revisions, dirty)
                keys, values, revisions = [], [], []
            ref = store(key, value, revision, lease, created)
            # (dirty.add, inlined: a listing stores every key of the registry here)
            (by_kind[ref.kind] if ref is not None else orphans)[key] = None
        if keys:
            self._store_run(run_ref, keys, values, revisions, dirty)

    def _store_new_service(self, key: str, value: bytes, revision: int, dirty: _Dirty) -> bool:
        """:meth:`_store` for a new service key whose value is of the common shape
        (:func:`decode_plain_service`), without parsing the key's kind again; False for
        any other key or value (then :meth:`_store` decides)."""
        ref = service_key_ref(key, self.prefix)
        if ref is None:
            return False
        service = decode_plain_service(ref, value)
        if service is None:
            return False
        self._raw[key] = revision
        self._latest[key] = service
        dirty.by_kind["services"][key] = None
        return True

    def _store_run(
        self,
        ref: ServiceRef | None,
        keys: list[str],
        values: list[Endpoint],
        revisions: list[int],
        dirty: _Dirty,
    ) -> None:
        """Store new endpoint keys of service ``ref`` with their decoded values, as
        :meth:`_store` does one by one (a new key has no schema problem to clear), and note
        them in ``dirty`` as a run."""
        assert ref is not None
        self._raw.update(zip(keys, revisions, strict=True))
        self._latest.update(zip(keys, values, strict=True))
        known = self._endpoint_keys.get(ref)
        if known is None:
            self._endpoint_keys[ref] = set(keys)
        else:
            known.update(keys)
        dirty.by_kind["endpoints"][keys[0]] = None
        dirty.runs[keys[0]] = _Run(ref, keys, values)
        dirty.run_keys.update(keys)

    def _ref(self, key: str) -> KeyRef | None:
        """What a key names (None: nothing). Parsed again rather than kept: only deleted
        keys need it, and a map of a ref per key would hold memory in proportion to the registry."""
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
        if isinstance(old, Route):
            self._reindex(key)
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

        before = _HeldFrom()  # what services held meanwhile had before this update
        force, latest, schema, problems = (
            self._force,
            self._latest,
            self._schema_problems,
            self.problems,
        )
        for key in by_kind["services"]:
            service = latest.get(key)
            if (
                type(service) is Service
                and key not in force
                and key not in schema
                and key not in problems
            ):
                # A valid service new in force (a cold start's): no problem to clear,
                # nothing held, no reference to check (:meth:`_resolve_service`, inline).
                force[key] = service
                _index(self.services, service.ref, service, changes.services)
                continue
            self._resolve_service(key, changes, by_kind, before)
        if changes.services:
            # Anything may refer to a service whose presence, port or subsets changed.
            # Endpoints in force are always among _endpoint_keys (a key names its service).
            endpoints, in_runs = by_kind["endpoints"], dirty.run_keys
            for svc in changes.services:
                keys = self._endpoint_keys.get(svc)
                if keys and not endpoints.keys() >= keys:  # (a listing has them all already)
                    missing = keys.difference(endpoints, in_runs) if in_runs else keys
                    endpoints.update(dict.fromkeys(missing))
            by_kind["routes"].update(dict.fromkeys(self._route_keys))
            by_kind["listeners"].update(dict.fromkeys(self._listener_keys))
            by_kind["policies"].update(dict.fromkeys(self._policy_keys))  # (their targets)
        if by_kind["listeners"]:
            # Listeners can clash with each other (same address and port for the same
            # nodes): re-check them all, oldest first, so the outcome is deterministic.
            by_kind["listeners"].update(dict.fromkeys(self._listener_keys))
        self._resolve_endpoints(by_kind["endpoints"], changes, dirty.runs)
        # Routes after what they are judged against: namespaces (export_to) and listeners
        # (allowed_namespaces); a change to either judges every route again. Withdrawn
        # permission is not held like a service: it is what the namespace or listener's
        # owner asked for, so the routes it no longer admits leave force.
        if by_kind["secrets"]:
            for key in by_kind["secrets"]:
                self._resolve_key(key, changes)
            if changes.secrets:  # (listeners, routes naming them may come into force or leave)
                by_kind["listeners"].update(dict.fromkeys(self._listener_keys))
                by_kind["routes"].update(dict.fromkeys(self._route_keys))
        for kind in ("namespaces", "listeners", "routes", "policies"):
            ordered: Iterable[str] = by_kind[kind]
            if kind == "listeners":
                ordered = sorted(ordered, key=lambda k: (self._raw.get(k, 0), k))
            elif kind == "routes":
                if changes.namespaces or changes.listeners:
                    by_kind["routes"].update(dict.fromkeys(self._route_keys))
                ordered = self._contest_order(by_kind["routes"])
            for key in ordered:
                self._resolve_key(key, changes)
        if self._held:
            self._release_held(changes, before)
        for key in dirty.forgotten:
            if key not in self._raw:  # (not put again after)
                self._route_keys.discard(key)
                self._listener_keys.discard(key)
                self._policy_keys.discard(key)

    def _contest_order(self, keys: Iterable[str]) -> list[str]:
        """``keys`` and every route that shares a claim with them, transitively, oldest
        first. Judged in that order, each route meets the final outcome of every older one,
        so one pass settles who holds a contested host and match."""
        found = dict.fromkeys(keys)
        if self._claim_keys:
            stack = list(found)
            while stack:
                ns, held = self._key_claims.get(stack.pop(), ("", frozenset()))
                for claim in held:
                    for other_ns, others in self._claim_keys[claim].items():
                        if other_ns == ns:
                            continue  # (within a namespace, nothing is contested)
                        for other in others:
                            if other not in found:
                                found[other] = None
                                stack.append(other)
        return sorted(found, key=self._route_age)

    def _route_age(self, key: str) -> tuple[int, str]:
        route = self._latest.get(key) or self._force.get(key)
        return (route.created if isinstance(route, Route) else 0), key

    def _reindex(self, key: str) -> None:
        """Index route ``key`` by the claims of its last valid value and its value in force."""
        new: set[Claim] = set()
        ns = ""
        for value in (self._latest.get(key), self._force.get(key)):
            if isinstance(value, Route):
                new.update(claims(value))
                ns = value.namespace  # (the key's: both values are of one key)
        old_ns, old = self._key_claims.get(key, ("", frozenset()))
        if old == new:
            return
        for claim in old - new:
            by_ns = self._claim_keys[claim]
            bucket = by_ns[old_ns]
            del bucket[key]
            if not bucket:
                del by_ns[old_ns]
                if not by_ns:
                    del self._claim_keys[claim]
        for claim in new - old:
            self._claim_keys.setdefault(claim, {}).setdefault(ns, {})[key] = None
        if new:
            self._key_claims[key] = (ns, frozenset(new))
        else:
            self._key_claims.pop(key, None)

    def owner_of(self, route: Route) -> Route | None:
        """The oldest route in force of another namespace that holds one of ``route``'s
        host and match on a listener both attach to, if older than ``route``."""
        best: Route | None = None
        force = self._force
        for claim in claims(route):
            for ns, keys in self._claim_keys.get(claim, {}).items():
                if ns == route.namespace:
                    continue
                for key in keys:
                    other = force.get(key)
                    if (
                        isinstance(other, Route)
                        and contests(route, other)
                        and age(other) < age(route)
                        and (best is None or age(other) < age(best))
                    ):
                        best = other
        return best

    def _resolve_endpoints(
        self, keys: Iterable[str], changes: ChangeSet, runs: Mapping[str, _Run] | None = None
    ) -> None:
        """:meth:`_resolve_key` for endpoint keys, the bulk of a registry (and of a cold
        start): a valid endpoint of a registered service, with no problem to clear, is put
        in force inline; anything else takes :meth:`_resolve_key`. A key of ``runs`` stands
        for its run (:meth:`_resolve_run`)."""
        latest, force, schema, problems = (
            self._latest,
            self._force,
            self._schema_problems,
            self.problems,
        )
        services, endpoints, changed = self.services, self.endpoints, changes.endpoints
        note_ids = self._note_ids
        # Keys come service by service (a listing's order): what is looked up per service
        # is kept for the next key while it is of the same service (``ref``), and looked up
        # again after anything else touched the maps (``ref = None``).
        ref: ServiceRef | None = None
        svc: Service | None = None
        eps: dict[str, Endpoint] | None = None
        for key in keys:
            if runs and key in runs:
                self._resolve_run(runs[key], changes)
                ref = None
                continue
            current = latest.get(key)
            if type(current) is not Endpoint or key in schema or key in problems:
                self._resolve_key(key, changes)
                ref = None
                continue
            if current.service is not ref:
                ref = current.service
                svc, eps = services.get(ref), endpoints.get(ref)
            if svc is None or (current.port is None and svc.port is None):
                self._resolve_key(key, changes)  # (check_refs words the problem)
                ref = None
                continue
            previous = force.get(key)
            if previous is current or (previous is not None and previous == current):
                continue
            force[key] = current
            if eps is None:
                eps = endpoints[ref] = {}
                changed.add(ref)
            elif ref not in changed:
                changed.add(ref)
            eps[current.id] = current
            if note_ids:
                _note_id(changes, ref, current.id)

    def _resolve_run(self, run: _Run, changes: ChangeSet) -> None:
        """Put a run of new endpoint keys in force at once (in C), when each of them would
        be put in force inline by :meth:`_resolve_endpoints`: none has a problem or a value
        in force, and their service is registered with a port for those that name none.
        Otherwise each takes :meth:`_resolve_endpoints`."""
        keys, ref = run.keys, run.service
        svc = self.services.get(ref)
        if (
            svc is None
            or not self._force.keys().isdisjoint(keys)
            or not self._schema_problems.keys().isdisjoint(keys)
            or not self.problems.keys().isdisjoint(keys)
            or (svc.port is None and any(v.port is None for v in run.values))
        ):
            self._resolve_endpoints(keys, changes)
            return
        self._force.update(zip(keys, run.values, strict=True))
        eps = self.endpoints.get(ref)
        if eps is None:
            eps = self.endpoints[ref] = {}
        eps.update(zip(map(_ID, run.values), run.values, strict=True))
        changes.endpoints.add(ref)
        if self._note_ids:
            for value in run.values:
                _note_id(changes, ref, value.id)

    def _resolve_key(self, key: str, changes: ChangeSet) -> None:
        entity, problem = self._decide(key)
        self._set_force(key, entity, changes)
        self._set_problem(key, problem, changes)

    def _decide(self, key: str) -> tuple[Entity | None, Problem | None]:
        """What ``key`` puts in force, and what is wrong with it (None: nothing)."""
        schema_problem = self._schema_problems.get(key)
        current = None if schema_problem else self._latest.get(key)
        previous = self._force.get(key)
        problem: Problem | None
        if current is not None:
            held = previous is not None and (previous is current or previous == current)
            error = self._refs_error(current, held)
            if error is None and isinstance(current, Listener):
                error = self._secret_error(current)
            if error is None:
                if isinstance(current, Secret):
                    return current, self._warning(key, current)
                return current, self._held_problem(key, current) if held else None
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
            if fallback is None or key not in self._raw:
                continue
            if self._refs_error(fallback, fallback is previous) is not None:
                continue
            if isinstance(fallback, Listener) and self._secret_error(fallback) is not None:
                continue
            if problem is not None:
                problem = Problem(
                    problem.key, problem.field, problem.reason, problem.revision, True
                )
            return fallback, problem
        return None, problem

    def _refs_error(self, entity: Entity, in_force: bool) -> tuple[str, str] | None:
        """(field, reason) when ``entity`` refers to something missing. A route or listener
        value in force may lean on services held for it; a new value may not (it is judged
        by the registry as it is), nor may endpoints' be told apart (they go with their
        service, held or not)."""
        services = (
            self.services
            if in_force or not self._held or not isinstance(entity, (Route, Listener))
            else self.registered_services
        )
        return check_refs(
            entity, services, self.listeners, self.namespaces, self.owner_of, self.secrets
        )

    def _secret_error(self, listener: Listener) -> tuple[str, str] | None:
        """(field, reason) when ``listener``'s ``tls`` names a secret not in force or of
        the wrong shape (the rule the admin API's writes apply too)."""
        return check_listener_secrets(listener, self.secrets)

    def _warning(self, key: str, secret: Secret) -> Problem | None:
        """The warning status of a secret in force whose certificate expires soon."""
        reason = secret.expiry_warning()
        if reason is None:
            return None
        field_ = "cert" if secret.kind == "tls" else "ca"
        return Problem(key, field_, reason, self._raw.get(key, 0), warning=True)

    # -- services held in force for their dependents -----------------------------------
    #
    # Traffic that flows is not cut by one etcd edit: a service (or subset) that a route or
    # listener in force needs, deleted or changed away, stays in force as it was until they
    # change or it comes back. Both keys report why (the admin API refuses such a write
    # unless forced).

    @property
    def registered_services(self) -> Mapping[ServiceRef, Service]:
        """:attr:`services` as the registry holds them: those held in force only for their
        dependents appear as they are in the registry (or not at all). New values, here and
        in the admin API, are judged against these."""
        return ServiceView(self.services, self._held) if self._held else self.services

    def dependents(self, ref: ServiceRef, new: Service | None) -> list[Dependent]:
        """Routes and listeners in force that service ``ref`` becoming ``new`` (None:
        deleted) would break, with the field and reason each would be rejected for."""
        return dependents(ref, new, self._users(), self.services, self.listeners)

    def _users(self) -> Iterator[tuple[str, Entity]]:
        """(key, entity) of every route and listener in force."""
        force = self._force
        for key in itertools.chain(self._route_keys, self._listener_keys):
            entity = force.get(key)
            if entity is not None:
                yield key, entity

    def _resolve_service(
        self,
        key: str,
        changes: ChangeSet,
        by_kind: dict[str, dict[str, None]],
        before: _HeldFrom,
    ) -> None:
        entity, problem = self._decide(key)
        previous = self._force.get(key)
        if isinstance(previous, Service):
            ref = previous.ref
            was_held = ref in self._held
            if entity is previous or entity == previous:
                self._held.pop(ref, None)
            else:
                new = entity if isinstance(entity, Service) else None
                broken = self.dependents(ref, new)
                if broken:
                    before.problems.setdefault(key, self.problems.get(key))
                    before.endpoints.setdefault(ref, dict(self.endpoints.get(ref, {})))
                    self._held[ref] = new
                    problem = self._holding_problem(key, new, broken)
                    entity = previous
                else:
                    self._held.pop(ref, None)
            if was_held or ref in self._held:
                # Their problems say whether they hold it: judge them again.
                by_kind["routes"].update(dict.fromkeys(self._route_keys))
                by_kind["listeners"].update(dict.fromkeys(self._listener_keys))
        self._set_force(key, entity, changes)
        self._set_problem(key, problem, changes)

    def _release_held(self, changes: ChangeSet, before: _HeldFrom) -> None:
        """Let the registry's value of a held service into force once nothing in force
        needs the old one (its dependents changed or were deleted). A hold taken and let go
        within one update (a service and its route deleted together) leaves no trace in
        ``changes`` beyond what really changed."""
        for ref, new in list(self._held.items()):
            if self.dependents(ref, new):
                continue
            del self._held[ref]
            key = service_key(self.prefix, ref)
            self._resolve_key(key, changes)
            if key in before.problems and self.problems.get(key) == before.problems[key]:
                changes.problems_set.pop(key, None)
                changes.problems_cleared.discard(key)
            keys = self._endpoint_keys.get(ref)
            if keys and ref in changes.services:
                self._resolve_endpoints(list(keys), changes)
            # Endpoints may have come into force against the held value and left with it.
            if ref in changes.endpoints and self.endpoints.get(ref, {}) == before.endpoints.get(
                ref
            ):
                changes.endpoints.discard(ref)
                changes.endpoint_ids.pop(ref, None)

    def _holding_problem(self, key: str, new: Service | None, broken: list[Dependent]) -> Problem:
        """The problem of a service key held in force for ``broken``."""
        first = broken[0]
        name = first.key.removeprefix(self.prefix)
        what = "deleted" if new is None else "changed"
        who = f"{name} and {len(broken) - 1} more" if len(broken) > 1 else name
        reason = (
            f"{what} while {who} still depend{'' if len(broken) > 1 else 's'} on it "
            f"({name}: {first.field}: {first.reason}); the last good value stays in force "
            "until they change or it is restored"
        )
        return Problem(key, "", reason, self._raw.get(key, self.revision), True)

    def _held_problem(self, key: str, entity: Entity) -> Problem | None:
        """The problem of a route or listener in force that leans on a held service."""
        if not self._held or not isinstance(entity, (Route, Listener)):
            return None
        error = check_refs(
            entity, self.registered_services, self.listeners, self.namespaces, self.owner_of
        )
        if error is None:
            return None
        reason = (
            f"{error[1]} in the registry; the service stays in force as it was for this "
            "entry until it changes or the service is restored"
        )
        return Problem(key, error[0], reason, self._raw.get(key, 0), True)

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
            if self._note_ids:
                _note_id(changes, some.service, some.id)
        elif isinstance(some, Service):
            _index(self.services, some.ref, entity, changes.services)
        elif isinstance(some, Route):
            _index(self.routes, key, entity, changes.routes)
            self._reindex(key)
        elif isinstance(some, Listener):
            _index(self.listeners, some.name, entity, changes.listeners)
        elif isinstance(some, Namespace):
            _index(self.namespaces, some.name, entity, changes.namespaces)
        elif isinstance(some, Secret):
            _index(self.secrets, some.ref, entity, changes.secrets)
        elif isinstance(some, Policy):
            _index(self.policies, key, entity, set())
            changes.policies.add(some.namespace)  # (what translation rebuilds: its services)

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


def _note_id(changes: ChangeSet, ref: ServiceRef, endpoint_id: str) -> None:
    """Note that endpoint ``endpoint_id`` of ``ref`` changed in force (translation then
    re-encodes that endpoint only, not the whole service)."""
    ids = changes.endpoint_ids.get(ref)
    if ids is None:
        changes.endpoint_ids[ref] = {endpoint_id}
    else:
        ids.add(endpoint_id)


_K = TypeVar("_K")


def _index(index: dict[_K, Any], name: _K, entity: Entity | None, changed: set[_K]) -> None:
    """Put ``entity`` under ``name`` in the index of its kind (None: take the name out), and
    note the name as changed."""
    if entity is None:
        index.pop(name, None)
    else:
        index[name] = entity
    changed.add(name)
