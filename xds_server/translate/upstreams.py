"""Sidecars scoped to their upstreams: the route configuration variants they are served.

A service may declare what its sidecars call (``upstreams``: services and whole
namespaces). Its sidecars (node cluster ``<name>.<ns>``) then get, on each HTTP listener
they are served, a variant of the listener's RouteConfiguration: every route attached to
the listener, as everyone gets it, but the default hosts (``<svc>.<ns>``) of the declared
upstreams only, instead of every service's. The clusters and endpoints they get are then
what those variants and their other listeners name (:mod:`~xds_server.translate.scoping`):
the upstreams' default clusters, and whatever the listener's routes send to.

A variant is made once per (listener, declaration): sidecars of services that declare
the same upstreams share it, its bytes and its index key, ``<listener>~<variant id>``
(``resources/scope.py``); the name on the wire stays the listener's.

:class:`ScopedRoutes` keeps them up to date incrementally: a change rebuilds only the
variants it touches (a service joining or leaving a declaration, a change of what an
upstream's default host looks like, a route on the listener), and reports the node
clusters whose scope moved with it, so only their streams hear of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from xds_server.model import Route, Service, ServiceRef, SessionAffinity, Upstreams
from xds_server.model.names import cluster_name
from xds_server.model.view import ChangeSet, RegistryView
from xds_server.resources.resource import Resource
from xds_server.resources.scope import variant_key
from xds_server.translate.edge import EdgeSecrets
from xds_server.translate.rds_wire import route_configuration

K = TypeVar("K")
_HostSig = tuple[int | None, str, SessionAffinity | None]

Put = Callable[[Resource, str], None]
"""Put a RouteConfiguration under an index key (the translator's, into its delta)."""
Drop = Callable[[str], None]
"""Drop the RouteConfiguration at an index key."""


def _host_sig(svc: Service) -> _HostSig:
    """What of a service its default host (and a route's hash policy toward it) is made of."""
    return (svc.port, svc.protocol, svc.load_balancer.session_affinity)


def _route_services(route: Route) -> set[ServiceRef]:
    """The services a route's entry reads (its destinations' affinity, its mirror)."""
    out = {d.service for d in route.destinations}
    if route.mirror is not None:
        out.add(route.mirror.service)
    return out


@dataclass
class _Declaration:
    """One distinct ``upstreams`` declaration: who declares it, what it resolves to."""

    upstreams: Upstreams
    users: set[str]  # node clusters of the services that declare it
    members: set[ServiceRef]  # the services in force it covers
    listeners: frozenset[str] = frozenset()  # HTTP listeners some user is served


class ScopedRoutes:
    """The route configuration variants of sidecars that declare ``upstreams``, and what
    the scope rule needs of them (:meth:`scoped`, :meth:`refs`).

    Without a declaration in force it costs a change (a cold start's included) a lookup
    per changed service and nothing else: only services some declaration covers, or some
    route sends to, are followed."""

    def __init__(self) -> None:
        self._declared: dict[ServiceRef, str] = {}  # service -> its declaration's variant id
        self._decls: dict[str, _Declaration] = {}  # variant id -> declaration
        self._by_service: dict[ServiceRef, set[str]] = {}  # exact entry -> variant ids
        self._by_namespace: dict[str, set[str]] = {}  # ``ns/*`` entry -> variant ids
        self._sigs: dict[ServiceRef, _HostSig] = {}  # covered services, as last rendered
        self._targets: dict[ServiceRef, SessionAffinity | None] = {}  # routes' destinations
        self._routes: dict[str, Route] = {}  # route key -> route in force, as last seen
        self._refs: dict[str, frozenset[str]] = {}  # variant key -> clusters it names

    # -- what the scope rule reads ---------------------------------------------------------

    def scoped(self) -> dict[str, str]:
        """Node cluster -> variant id of its declaration (a copy, for one rule)."""
        return {cluster_name(ref): variant for ref, variant in self._declared.items()}

    def refs(self) -> dict[str, frozenset[str]]:
        """Variant key -> the clusters it names (a copy, for one rule)."""
        return dict(self._refs)

    # -- update ------------------------------------------------------------------------------

    def update(
        self,
        state: RegistryView,
        changes: ChangeSet,
        put: Put,
        drop: Drop,
        secrets: EdgeSecrets,
    ) -> set[str] | None:
        """Bring the variants up to date with ``state`` after ``changes``; return the node
        clusters whose scope this may have moved (None: the listeners changed, any may
        have; an empty set: none)."""
        if not (changes.services or changes.routes or changes.listeners or changes.secrets):
            return set()  # (endpoints, policies, namespaces: no variant reads them)
        dirty: set[str] = set()  # variant ids to rebuild on every listener
        dirty_listeners: set[str] = set()  # listeners to rebuild every variant of
        rescoped: set[str] = set()
        by_service, by_namespace, targets = self._by_service, self._by_namespace, self._targets
        if by_service or by_namespace or targets:
            for ref in changes.services:
                if ref in by_service or ref.namespace in by_namespace or ref in targets:
                    self._service(state, ref, dirty, dirty_listeners)
        services, declared = state.services, self._declared
        namespaces: dict[str, set[ServiceRef]] | None = None  # (built once, when needed)
        for ref in changes.services:
            svc = services.get(ref)
            upstreams = svc.upstreams if svc is not None else None
            if upstreams is None and ref not in declared:
                continue
            if upstreams is not None and upstreams.namespaces and namespaces is None:
                namespaces = {}
                for other in services:
                    namespaces.setdefault(other.namespace, set()).add(other)
            self._declare(ref, upstreams, state, namespaces or {}, rescoped, dirty)
        for key in changes.routes:
            old, new = self._routes.pop(key, None), state.routes.get(key)
            if new is not None:
                self._routes[key] = new
                for target in _route_services(new):
                    held = services.get(target)
                    affinity = held.load_balancer.session_affinity if held else None
                    targets.setdefault(target, affinity)
            for route in (old, new):
                if route is not None:
                    dirty_listeners.update(n for n in state.listeners if route.listener_matches(n))
        if changes.secrets:  # (routes' API keys are in the route configurations)
            dirty_listeners.update(state.listeners)
        everything = bool(changes.listeners)
        if everything:
            for variant in self._decls:
                self._place(variant, state)
            dirty.update(self._decls)
        if not self._decls and not self._refs:
            return None if everything else rescoped
        attached: dict[str, list[Route]] = {}
        wanted: set[str] = set()
        for variant, decl in self._decls.items():
            for listener in decl.listeners:
                key = variant_key(listener, variant)
                wanted.add(key)
                if variant not in dirty and listener not in dirty_listeners and key in self._refs:
                    continue
                routes = attached.get(listener)
                if routes is None:
                    routes = attached[listener] = [
                        r for r in state.routes.values() if r.listener_matches(listener)
                    ]
                res = route_configuration(
                    listener, routes, state.services, secrets, hosted=decl.members
                )
                put(res, key)
                if self._refs.get(key) != res.refs:
                    self._refs[key] = res.refs
                    rescoped.update(decl.users)
        for key in [k for k in self._refs if k not in wanted]:
            del self._refs[key]
            drop(key)
        return None if everything else rescoped

    def _service(
        self, state: RegistryView, ref: ServiceRef, dirty: set[str], dirty_listeners: set[str]
    ) -> None:
        """A service that a declaration covers, or a route sends to, changed: the
        declarations covering it gain, lose or re-render it; the listeners whose routes
        carry its hash policy render again when its affinity changed."""
        svc = state.services.get(ref)
        covering = [*self._by_service.get(ref, ()), *self._by_namespace.get(ref.namespace, ())]
        if covering:
            sig = _host_sig(svc) if svc is not None else None
            # Membership is checked on its own, not inferred from the signature: a service
            # deleted and re-created while no declaration covered it left its old signature
            # behind, equal to the new one, and would never have joined a later variant.
            host_changed = sig != self._sigs.get(ref)
            for variant in covering:
                members = self._decls[variant].members
                if svc is None:
                    if ref in members:
                        members.discard(ref)
                        dirty.add(variant)
                elif ref not in members:
                    members.add(ref)
                    dirty.add(variant)
                elif host_changed:
                    dirty.add(variant)
            if sig is None:
                self._sigs.pop(ref, None)
            else:
                self._sigs[ref] = sig
        if ref in self._targets:
            affinity = svc.load_balancer.session_affinity if svc is not None else None
            if affinity != self._targets[ref]:
                self._targets[ref] = affinity
                # A route's entry carries its destinations' hash policies.
                for route in state.routes.values():
                    if ref in _route_services(route):
                        dirty_listeners.update(
                            n for n in state.listeners if route.listener_matches(n)
                        )

    def _declare(
        self,
        ref: ServiceRef,
        upstreams: Upstreams | None,
        state: RegistryView,
        namespaces: Mapping[str, set[ServiceRef]],
        rescoped: set[str],
        dirty: set[str],
    ) -> None:
        """Service ``ref``'s declaration is now ``upstreams`` (None: none); ``namespaces``:
        the services in force by namespace (when the declaration has ``ns/*`` entries)."""
        variant = upstreams.variant if upstreams is not None else None
        old = self._declared.get(ref)
        if old == variant:
            return
        node_cluster = cluster_name(ref)
        rescoped.add(node_cluster)
        if old is not None:
            was = self._decls[old]
            was.users.discard(node_cluster)
            if not was.users:
                self._forget(old)
            else:
                self._place(old, state)  # (whether its listeners still serve a user)
        if variant is None or upstreams is None:
            self._declared.pop(ref, None)
            return
        self._declared[ref] = variant
        decl = self._decls.get(variant)
        if decl is None:
            members = {r for r in upstreams.services if r in state.services}
            for ns in upstreams.namespaces:
                members |= namespaces.get(ns, set())
            for member in members:
                self._sigs[member] = _host_sig(state.services[member])
            decl = self._decls[variant] = _Declaration(upstreams, set(), members)
            for covered in upstreams.services:
                self._by_service.setdefault(covered, set()).add(variant)
            for ns in upstreams.namespaces:
                self._by_namespace.setdefault(ns, set()).add(variant)
            dirty.add(variant)
        decl.users.add(node_cluster)
        mine = _http_listeners(state, node_cluster)
        if not mine <= decl.listeners:
            decl.listeners = decl.listeners | mine

    def _place(self, variant: str, state: RegistryView) -> None:
        """Which HTTP listeners the users of ``variant`` are served (all of them again)."""
        decl = self._decls[variant]
        decl.listeners = frozenset(
            lst.name
            for lst in state.listeners.values()
            if lst.protocol == "http" and any(lst.serves(nc) for nc in decl.users)
        )

    def _forget(self, variant: str) -> None:
        decl = self._decls.pop(variant)
        for ref in decl.upstreams.services:
            _discard(self._by_service, ref, variant)
        for ns in decl.upstreams.namespaces:
            _discard(self._by_namespace, ns, variant)


def _http_listeners(state: RegistryView, node_cluster: str) -> frozenset[str]:
    """The HTTP listeners served to ``node_cluster``."""
    return frozenset(
        lst.name
        for lst in state.listeners.values()
        if lst.protocol == "http" and lst.serves(node_cluster)
    )


def _discard(index: dict[K, set[str]], key: K, v: str) -> None:
    held = index.get(key)
    if held is not None:
        held.discard(v)
        if not held:
            del index[key]


def scoped_clusters(keys: Iterable[str], refs: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The clusters the variants at ``keys`` name."""
    out: set[str] = set()
    for key in keys:
        out |= refs.get(key, frozenset())
    return frozenset(out)
