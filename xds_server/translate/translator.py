"""Incremental translation of the registry state into the global resource index.

Every Envoy resource the mesh serves is global: a Cluster depends only on its
service, a ClusterLoadAssignment on its service and endpoints, a Listener on
its registry entry, a RouteConfiguration on its listener, the routes attached
to it and the services' routing-relevant fields. Node scopes are selections of
names over this one index (see :mod:`xds_server.cache`), so every scope shares
the same serialized bytes.

:meth:`Translator.update` rebuilds only what a :class:`~xds_server.ingest.state.ChangeSet`
touches and returns the resources whose content changed. I/O-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xds_server.model import Problem, Service, ServiceRef, SessionAffinity
from xds_server.model.identity import DEFAULT_TRUST_DOMAIN, sidecar
from xds_server.model.names import cluster_name, entry_key, inbound_name, service_host
from xds_server.model.namespace import effective_mtls
from xds_server.model.secret import secret_sds_name
from xds_server.model.view import ChangeSet, RegistryView
from xds_server.resources.resource import Resource, make_resource
from xds_server.resources.scope import ScopeRule, no_scopes
from xds_server.resources.secrets import REGISTRY_PREFIX, ROOT_SECRET, cluster_secret_key
from xds_server.resources.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TYPE_ORDER
from xds_server.translate.assignments import INCREMENTAL_MIN, ServiceAssignments, incremental
from xds_server.translate.cluster import service_clusters
from xds_server.translate.edge import EdgeSecrets, edge_filters, uses_edge, with_edge_filters
from xds_server.translate.endpoint import service_assignments
from xds_server.translate.grpc_api import Notes, note_reason, proxyless_resources
from xds_server.translate.inputs import NO_INPUTS, Inputs
from xds_server.translate.listener import build_listener, listener_resource
from xds_server.translate.mtls import upstream_socket
from xds_server.translate.rds_wire import route_configuration
from xds_server.translate.scoping import mesh_scopes
from xds_server.translate.secret import bundle_secret, registry_secret, workload_secret
from xds_server.translate.sidecar import sidecar_resources
from xds_server.translate.upstreams import ScopedRoutes


@dataclass
class Delta:
    """Resources changed by one translation: name -> new Resource, or None when removed;
    and the scope rule, when the listeners changed it."""

    changed: dict[str, dict[str, Resource | None]] = field(
        default_factory=lambda: {t: {} for t in TYPE_ORDER}
    )
    scopes: ScopeRule | None = None
    """Which resources each node cluster gets by wildcard from now on (None: unchanged)."""
    rescoped: frozenset[str] | None = None
    """With :attr:`scopes`: the node clusters whose selection it may change (None: any)."""

    @property
    def listeners_changed(self) -> bool:
        return self.scopes is not None

    def __bool__(self) -> bool:
        return any(self.changed.values())

    def count(self) -> int:
        return sum(len(v) for v in self.changed.values())


_RouteSig = tuple[int | None, str, SessionAffinity | None, str]

BULK_SERVICES = 1_000
"""Services whose endpoints one translation re-encodes, from which it bypasses the
endpoint encoding memo (a cold start: every endpoint a miss; see ``eds_wire``)."""


def _route_sig(svc: Service) -> _RouteSig:
    """What of a service route configurations depend on (not clusters or endpoints; the
    algorithm decides whether proxyless clients can be served the routes to it)."""
    lb = svc.load_balancer
    return (svc.port, svc.protocol, lb.session_affinity, lb.algorithm)


Served = Mapping[str, Mapping[str, Resource]]
"""Type URL -> name -> Resource: what is served (the cache's index, read-only here)."""


def _serve(index: dict[str, dict[str, Resource]], delta: Delta) -> None:
    """Apply ``delta`` to a translator's own index (when it serves nothing else)."""
    for type_url, changed in delta.changed.items():
        mine = index[type_url]
        for name, res in changed.items():
            if res is None:
                mine.pop(name, None)
            else:
                mine[name] = res


class Translator:
    """Computes the changes that bring what is served (:attr:`served`) up to the state.

    There is one index, the one served: each :class:`Delta` is computed against
    ``served`` (the cache's, read-only here), and whoever serves must apply it before the
    next :meth:`update`. Without ``served`` (tools and tests that translate without
    serving), the translator keeps its own and applies each delta to it.
    """

    def __init__(
        self, served: Served | None = None, *, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> None:
        self.trust_domain = trust_domain
        """The SPIFFE trust domain of the mesh (outbound SAN checks name it)."""
        self._sidecars: dict[str, str] = {}
        """Node cluster -> inbound Listener/Cluster name, of services with ``sidecar`` set."""
        self._own: dict[str, dict[str, Resource]] | None = None
        if served is None:
            served = self._own = {t: {} for t in TYPE_ORDER}
        self.served: Served = served
        self._by_service: dict[ServiceRef, list[str]] = {}
        self._route_sigs: dict[ServiceRef, _RouteSig] = {}
        self.dns_names: dict[ServiceRef, dict[str, set[str]]] = {}
        """Per service: DNS name -> keys of the endpoints that use it (for resolution)."""
        self.notes: dict[str, Problem] = {}
        """Registry key -> what of it proxyless gRPC clients cannot honour (grpc_api)."""
        self._noted: dict[str, Problem] = {}  # notes put into the registry's problems
        self._certs_seen: object = NO_INPUTS.certificates
        self._bundle = NO_INPUTS.trust_bundle
        self._secret_memo: dict[str, tuple[object, Resource]] = {}
        self._scoped = ScopedRoutes()
        """Route configuration variants of sidecars that declare ``upstreams``."""
        self.scopes: ScopeRule = no_scopes
        """The scope rule in force (the last one a delta carried)."""
        self._assignments: dict[ServiceRef, ServiceAssignments] = {}
        """Big services' assignments, kept endpoint by endpoint (see _put_assignments)."""

    def _put(self, delta: Delta, type_url: str, res: Resource, key: str = "") -> None:
        # What is in force after this update so far: this delta over what is served.
        # (``key``: the index key, when it is not the name: a proxy's ``default`` Secret)
        changed = delta.changed[type_url]
        name = key or res.name
        old = changed[name] if name in changed else self.served[type_url].get(name)
        if old is not None and old.version == res.version:
            return
        changed[name] = res

    def _drop(self, delta: Delta, type_url: str, name: str) -> None:
        changed = delta.changed[type_url]
        old = changed[name] if name in changed else self.served[type_url].get(name)
        if old is not None:
            changed[name] = None

    def update(self, state: RegistryView, changes: ChangeSet, inputs: Inputs = NO_INPUTS) -> Delta:
        """The changes that bring what is served up to date with ``state`` after
        ``changes``, read with ``inputs`` (health verdicts, DNS answers): a function of
        the registry view and the inputs, besides the translator's own memos."""
        delta = Delta()
        listeners_changed = False
        routes_dirty = bool(changes.routes)
        rebuild = changes.services
        if changes.namespaces:  # (their services' mTLS default may have changed)
            rebuild = rebuild | {r for r in state.services if r.namespace in changes.namespaces}
        if changes.policies:  # (authorization is in the inbound routes: only they change)
            for ref in [r for r in state.services if r.namespace in changes.policies]:
                if ref not in rebuild and self._sidecar(state, ref, delta):
                    listeners_changed = True
        for ref in rebuild:
            if self._sidecar(state, ref, delta):
                listeners_changed = True
            if ref not in changes.services:
                self._put_clusters(state, ref, delta)
                continue
            svc = state.services.get(ref)
            old_clusters = self._by_service.pop(ref, [])
            sig = _route_sig(svc) if svc else None
            if sig != self._route_sigs.get(ref):
                routes_dirty = True
            if svc is None:
                self._route_sigs.pop(ref, None)
                for name in old_clusters:
                    self._drop(delta, CLUSTER, name)
                    self._drop(delta, ENDPOINT, name)
                self.dns_names.pop(ref, None)
                self._drop(delta, LISTENER, service_host(ref))
                self._drop(delta, ROUTE, service_host(ref))
                continue
            assert sig is not None
            self._route_sigs[ref] = sig
            clusters = self._put_clusters(state, ref, delta)
            keep = {r.name for r in clusters}
            for name in old_clusters:
                if name not in keep:
                    self._drop(delta, CLUSTER, name)
                    self._drop(delta, ENDPOINT, name)
            self._by_service[ref] = [r.name for r in clusters]
            if svc.protocol != "grpc":  # (a gRPC service's are put with the routes below)
                self._drop(delta, LISTENER, service_host(ref))
                self._drop(delta, ROUTE, service_host(ref))
        refs = changes.endpoints | changes.services
        memo = len(refs) < BULK_SERVICES
        for ref in refs:
            self._put_assignments(state, ref, changes, inputs, memo, delta)
        for name in changes.listeners:
            listener = state.listeners.get(name)
            if listener is None:
                self._drop(delta, LISTENER, name)
                self._drop(delta, ROUTE, name)
                listeners_changed = True
                continue
            self._put(delta, LISTENER, self._listener(state, name))
            listeners_changed = True
            if listener.protocol == "tcp":
                self._drop(delta, ROUTE, name)
            elif not routes_dirty:  # (when dirty, every HTTP listener's is rebuilt below)
                self._put(delta, ROUTE, self._route_config(state, name))
        if changes.secrets:  # (routes' JWKS and API keys may have changed)
            routes_dirty = True
        if routes_dirty:
            for name, listener in state.listeners.items():
                if listener.protocol == "http":
                    self._put(delta, ROUTE, self._route_config(state, name))
                    # (the edge filters of its routes' jwt, api_keys, cors: unchanged bytes
                    # are not put)
                    self._put(delta, LISTENER, self._listener(state, name))
            self._proxyless(state, delta)
        for secret_ref in changes.secrets:  # (only listeners' scopes let a proxy fetch one)
            ns, _, name = secret_ref.partition("/")
            held = state.secrets.get(secret_ref)
            sds = registry_secret(held) if held is not None else None
            if sds is None:
                self._drop(delta, SECRET, secret_sds_name(ns, name))
            else:
                self._put(delta, SECRET, sds)
        self._scope(state, changes, delta, listeners_changed)
        if inputs.certificates is not self._certs_seen or inputs.trust_bundle != self._bundle:
            self._secrets(inputs, delta)
        if self._own is not None:
            _serve(self._own, delta)
        return delta

    def _scope(
        self, state: RegistryView, changes: ChangeSet, delta: Delta, listeners_changed: bool
    ) -> None:
        """The route configuration variants of sidecars scoped to their ``upstreams``
        (:mod:`~xds_server.translate.upstreams`), then the scope rule when it changed: for
        every node cluster when the listeners (or sidecars) did, else for those whose
        upstreams or variants did."""

        def put(res: Resource, key: str) -> None:
            self._put(delta, ROUTE, res, key)

        def drop(key: str) -> None:
            self._drop(delta, ROUTE, key)

        rescoped = self._scoped.update(state, changes, put, drop, _secrets(state))
        if not listeners_changed and rescoped is not None and not rescoped:
            return
        scoped, refs = self._scoped.scoped(), self._scoped.refs()
        rule = mesh_scopes(state.listeners, self._sidecars, scoped, refs)
        if not listeners_changed and rescoped is not None and self.scopes is not no_scopes:
            delta.rescoped = frozenset(rescoped)  # (the first rule is everyone's)
        delta.scopes = self.scopes = rule

    def _secrets(self, inputs: Inputs, delta: Delta) -> None:
        """The SDS Secrets: ``ROOTCA`` (the bundle) and each connected node cluster's
        ``default`` (its identity's certificate), under the cluster's index key; those of
        clusters no longer connected are dropped. A certificate is encoded once."""
        self._certs_seen, self._bundle = inputs.certificates, inputs.trust_bundle
        wanted: dict[str, Resource] = {}
        if inputs.trust_bundle:
            wanted[ROOT_SECRET] = bundle_secret(inputs.trust_bundle)
            memo: dict[str, tuple[object, Resource]] = {}
            for cluster, cert in inputs.certificates.items():
                key = cluster_secret_key(cluster)
                held = self._secret_memo.get(key)
                if held is None or held[0] is not cert:
                    held = (cert, workload_secret(cert.chain_pem, cert.key_pem))
                memo[key] = held
                wanted[key] = held[1]
            self._secret_memo = memo
        else:
            self._secret_memo = {}
        stale = [
            k for k in self.served[SECRET] if k not in wanted and not k.startswith(REGISTRY_PREFIX)
        ]
        for key in stale:  # (registry secrets are the registry's: see update)
            self._drop(delta, SECRET, key)
        for key, res in wanted.items():
            self._put(delta, SECRET, res, key)

    def _put_assignments(
        self,
        state: RegistryView,
        ref: ServiceRef,
        changes: ChangeSet,
        inputs: Inputs,
        memo: bool,
        delta: Delta,
    ) -> None:
        """Put the ClusterLoadAssignments of service ``ref`` in ``delta``. A big service's
        are kept endpoint by endpoint (:class:`ServiceAssignments`): an update re-encodes
        the endpoints ``changes`` names, not the service (a rolling deploy of 10,000
        endpoints is 10,000 updates). A small service's, and every one of a bulk
        translation (``memo`` false: a cold start), are encoded whole."""
        svc = state.services.get(ref)
        if svc is None:
            self._assignments.pop(ref, None)
            return
        eps = state.endpoints.get(ref, {})
        resolve, health = inputs.addresses, inputs.health.get(ref)
        kept = self._assignments.get(ref)
        if kept is not None and ref not in changes.services and kept.fits(svc, resolve, health):
            ids = changes.changed_endpoint_ids(ref)
            if ids is not None and incremental(ids, len(kept)):
                kept.update(eps, ids)
                for res in kept.resources(changed_only=True):
                    self._put(delta, ENDPOINT, res)
                self._dns_names(ref, kept.dns_names)
                return
        if memo and len(eps) >= INCREMENTAL_MIN:
            kept = self._assignments[ref] = ServiceAssignments(svc, eps, resolve, health)
            for res in kept.resources():
                self._put(delta, ENDPOINT, res)
            self._dns_names(ref, kept.dns_names)
            return
        self._assignments.pop(ref, None)
        names: dict[str, set[str]] = {}
        for res in service_assignments(svc, eps, resolve, health, memo=memo, dns_names=names):
            self._put(delta, ENDPOINT, res)
        self._dns_names(ref, names)

    def _dns_names(self, ref: ServiceRef, names: dict[str, set[str]]) -> None:
        if names:
            self.dns_names[ref] = names
        else:
            self.dns_names.pop(ref, None)

    def _put_clusters(self, state: RegistryView, ref: ServiceRef, delta: Delta) -> list[Resource]:
        """Put the Clusters of service ``ref`` (in force) in ``delta``: over mTLS, checking
        the service's SPIFFE id, when its mode (its own, else its namespace's) is not off."""
        svc = state.services[ref]
        tls = None
        if effective_mtls(svc.mtls, state.namespaces.get(ref.namespace)) != "off":
            tls = upstream_socket(sidecar(ref).spiffe_id(self.trust_domain), svc.protocol)
        clusters = service_clusters(svc, tls)
        for res in clusters:
            self._put(delta, CLUSTER, res)
        return clusters

    def _sidecar(self, state: RegistryView, ref: ServiceRef, delta: Delta) -> bool:
        """Put (or drop) service ``ref``'s inbound Listener, local Cluster and inbound
        RouteConfiguration; True when which node clusters have one changed (the scope rule
        with it)."""
        svc = state.services.get(ref)
        name, node_cluster = inbound_name(ref), cluster_name(ref)
        if svc is None or svc.sidecar is None:
            self._drop(delta, LISTENER, name)
            self._drop(delta, CLUSTER, name)
            self._drop(delta, ROUTE, name)
            return self._sidecars.pop(node_cluster, None) is not None
        mode = effective_mtls(svc.mtls, state.namespaces.get(ref.namespace))
        listener, cluster, routes = sidecar_resources(svc, mode, state, self.trust_domain)
        self._put(delta, CLUSTER, cluster)
        if routes is None:
            self._drop(delta, ROUTE, name)
        else:
            self._put(delta, ROUTE, routes)
        self._put(delta, LISTENER, listener)
        had = node_cluster in self._sidecars
        self._sidecars[node_cluster] = name
        return not had

    def _proxyless(self, state: RegistryView, delta: Delta) -> None:
        """Every gRPC service's api_listener and route configuration, or neither when
        gRPC clients could not run them; :attr:`notes` says what they cannot honour."""
        notes: Notes = {}
        for svc in state.services.values():
            if svc.protocol != "grpc":
                continue
            served = proxyless_resources(svc, state.routes.values(), state.services, notes)
            if served is None:
                self._drop(delta, LISTENER, service_host(svc.ref))
                self._drop(delta, ROUTE, service_host(svc.ref))
            else:
                self._put(delta, LISTENER, served[0])
                self._put(delta, ROUTE, served[1])
        out: dict[str, Problem] = {}
        for note, targets in notes.items():
            kind, name, field_ = note
            key = entry_key(state.prefix, kind, name)
            algorithm = ""
            if kind == "services":
                ns, _, svc_name = name.partition("/")
                algorithm = state.services[ServiceRef(ns, svc_name)].load_balancer.algorithm
            reason = note_reason(note, targets, algorithm)
            old = self.notes.get(key)
            # An unchanged note keeps its revision: the status key is not rewritten.
            same = old is not None and (old.field, old.reason) == (field_, reason)
            out[key] = old if same and old else Problem(key, field_, reason, state.revision)
        self.notes = out

    def report_notes(self, problems: dict[str, Problem], changes: ChangeSet) -> None:
        """Show :attr:`notes` among the registry's ``problems`` (status keys, ``meshctl
        errors``) and record in ``changes`` what that changed. A rejection of the key itself
        comes first; a note it hid shows again once the key is valid. Call after each
        :meth:`update`."""
        for key, old in list(self._noted.items()):
            if problems.get(key) is not old:  # replaced by a rejection of the key
                del self._noted[key]
            elif self.notes.get(key) is not old:
                del problems[key], self._noted[key]
                changes.problems_set.pop(key, None)
                changes.problems_cleared.add(key)
        for key, note in self.notes.items():
            if key not in problems:
                problems[key] = self._noted[key] = note
                changes.problems_set[key] = note
                changes.problems_cleared.discard(key)

    def _route_config(self, state: RegistryView, listener: str) -> Resource:
        attached = [r for r in state.routes.values() if r.listener_matches(listener)]
        return route_configuration(listener, attached, state.services, _secrets(state))

    def _listener(self, state: RegistryView, name: str) -> Resource:
        """Listener ``name`` in force, with the edge filters its routes use (jwt, api_keys,
        cors: :func:`~xds_server.translate.edge.edge_filters`) in its HTTP chain."""
        listener = state.listeners[name]
        plain = listener_resource(listener)
        if listener.protocol != "http":
            return plain
        edge = [r for r in state.routes.values() if uses_edge(r) and r.listener_matches(name)]
        filters = edge_filters(edge, _secrets(state)) if edge else []
        if not filters:
            return plain
        msg = with_edge_filters(build_listener(listener), filters)
        return make_resource(LISTENER, name, msg, plain.refs)


def _secrets(state: RegistryView) -> EdgeSecrets:
    """The registry's secrets in force (``ns/name`` -> secret), where routes read JWKS and
    API keys."""
    return state.secrets
