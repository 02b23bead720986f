"""The state-of-the-world subscription state machine of one ADS stream. No I/O.

Feed it requests (:meth:`SotwStream.on_request`) and cache changes
(:meth:`SotwStream.on_change`); it returns the responses to write, in order.

Rules (the numbered points are those of ``docs/xds.md``; see also the xDS protocol's "ACK and NACK
semantics"):

* A request whose ``response_nonce`` is not the last nonce sent for its type is
  stale and ignored entirely (point 1); so is a NACK without a nonce once a
  response was sent. A request without a nonce is otherwise a subscription.
* A request with ``error_detail`` and the last nonce is a NACK: recorded and
  counted; the same content is not sent again, only new content is (point 1).
* After a Cluster (Listener) changes, Envoy re-warms it and sends an EDS (RDS)
  request that looks exactly like an ACK; it is answered with the resources
  (point 2).
* Responses go out clusters, endpoints, listeners, routes; a cluster that a
  route configuration or listener the client still holds points at is kept
  until that holder has been replaced (point 3, make before break).
* When a new stream's first request already carries the current version,
  nothing is sent for that type (point 4).
* Listener and Cluster responses carry the complete set; ClusterLoadAssignment
  and RouteConfiguration responses carry only what changed (point 9).

Memory: a stream holds no per-resource map. Once it has been sent a type, it
is in sync with the cache's index for its subscription, apart from the names
its watcher reports as changed since (with the resources they replaced). The
subscription is an interned set, and the full sets, set versions and encoded
responses it shares with every stream in the same position come from the cache.
Nonces are ``<type generation>.<n>`` so those streams produce identical bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.cache import WILDCARD_TYPES, ConfigWatcher, Pending
from xds_server.resources.resource import Resource, set_version, string_field
from xds_server.resources.secrets import secret_key
from xds_server.resources.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TYPE_ORDER
from xds_server.server.base import (
    RequestOutcome,
    ResponseBase,
    StatusBase,
    StreamBase,
    SyncState,
    holds_back,
    nack_text,
    outcome,
)

__all__ = ["RequestOutcome", "Response", "SotwStream", "SyncState", "TypeStatus"]
_FOLLOWS = {CLUSTER: ENDPOINT, LISTENER: ROUTE}
_NONE: frozenset[str] = frozenset()  # (an empty frozenset is a new object each time)


@dataclass(frozen=True, slots=True)
class Response(ResponseBase):
    """One DiscoveryResponse to write; :meth:`wire` joins the pre-encoded resources."""

    type_url: str
    version: str
    nonce: str
    resources: tuple[Resource, ...]

    def encode(self) -> bytes:
        parts = [string_field(1, self.version)]
        for r in self.resources:
            parts += (r.sotw_prefix, r.body)
        parts += (string_field(4, self.type_url), string_field(5, self.nonce))
        return b"".join(parts)

    def wire_key(self) -> tuple[object, ...]:
        return ("sotw", self.type_url, self.version, self.nonce, *(r.name for r in self.resources))


@dataclass(slots=True)
class TypeStatus(StatusBase):
    """What one SotW stream knows of one resource type (no per-resource maps)."""

    names: frozenset[str] = frozenset()  # wildcard: the complete set last sent
    rewarm: frozenset[str] = frozenset()
    request_key: bytes | None = None  # subscription_key of the request ``subscribed`` is from


class SotwStream(StreamBase[TypeStatus]):
    """One ADS state-of-the-world stream's subscriptions and what it was sent."""

    protocol = "sotw"
    __slots__ = ("_deferred_scope",)

    def __init__(self, cache: ConfigWatcher, clock: Callable[[], float]) -> None:
        super().__init__(cache, clock)
        # Immutable, replaced when it changes (rarely): no empty set per stream.
        self._deferred_scope: frozenset[str] = _NONE

    @property
    def settled(self) -> bool:
        return not self._deferred_scope and super().settled

    # -- inputs -------------------------------------------------------------------------

    def on_request(
        self, req: discovery_pb2.DiscoveryRequest, key: bytes | None = None
    ) -> list[Response]:
        """Handle one DiscoveryRequest; return the responses to send, in order.

        ``key`` is the request's :func:`~xds_server.server.request_key.subscription_key`
        when the caller has the bytes: a repeat of the last key means an unchanged
        subscription, recognised without reading the names.
        """
        found = self._request_type(req, TypeStatus)
        if found is None:
            return []
        t, ts = found
        nonce = req.response_nonce
        nacks = req.HasField("error_detail")
        if nonce != ts.nonce and (nonce or (nacks and ts.nonce)):
            # Stale (xDS "ACK and NACK semantics"): the nonce is not the last one sent for
            # this type on this stream, so it answers a response a newer one has superseded
            # (Envoy will answer the newer one; acting on this would race it), or none sent
            # here at all. A NACK without a nonce once a response was sent is the same: it
            # rejects no response in force, and is neither recorded nor counted as a NACK.
            self.last_outcome = outcome("stale", t)
            return []
        first = not ts.started
        if nacks and nonce:
            ts.nack = nack_text(req.error_detail)
            ts.acked = False
            self.last_outcome = RequestOutcome("nack", t, ts.nack)
        elif nonce:
            # (the version it was sent, as one string with the response's, when it is)
            acked = ts.version if req.version_info == ts.version else req.version_info
            ts.acked, ts.acked_version, ts.nack = True, acked, None
            self.last_outcome = outcome("ack", t)
        else:
            # No nonce: a subscription (the first, or new names). An error detail here NACKs
            # nothing: no response was sent for the type yet (else it was stale above).
            self.last_outcome = outcome("initial" if first else "update", t)
        before = ts.subscribed
        self._subscribe(t, ts, req, first, key)
        if first and req.version_info and self._already_current(t, ts, req.version_info):
            return self._flush() if self._deferred else []
        if ts.wildcard:
            out = self._compute_full(t, ts, {})
        else:
            # First request: everything; later: names newly asked for, plus re-warms.
            wanted = ts.subscribed if first else (ts.subscribed - before) | ts.rewarm
            ts.rewarm = _NONE
            out = self._compute_partial(t, ts, wanted, removed=False)
        if self._deferred or self._deferred_scope:
            return out + self._flush()  # an answer may unblock changes held back
        return out + self._release_retained()

    def on_change(self, pending: Pending, scopes_changed: bool) -> list[Response]:
        """The cache changed: return what this stream must be sent now, in type order."""
        if scopes_changed and self.scope is not None:
            self.scope = self.cache.scope(self.node_cluster)
        self._defer(pending)
        if scopes_changed:
            self._deferred_scope |= WILDCARD_TYPES
            self._realias()
        return self._flush()

    def _flush(self) -> list[Response]:
        """Send deferred changes, in type order, to types not waiting for an ACK.

        At most one unanswered response per type: gRPC accepts every write into its
        buffers, so without this a stuck proxy would make meshd buffer each push without
        bound. Later changes coalesce and go out as the latest state once it answers. A
        type that must wait holds back the types after it, keeping the push order, unless
        what it waits to send cannot be named by them (:func:`holds_back`).
        """
        out: list[Response] = []
        self._pending = self._deferred  # names not sent yet: the client holds the old ones
        try:
            for t in TYPE_ORDER:
                changed = self._deferred.get(t)
                full = t in self._deferred_scope
                if not changed and not full:
                    continue
                ts = self.types.get(t)
                if ts is None or not ts.started:
                    self._deferred.pop(t, None)
                    if full:
                        self._deferred_scope -= {t}
                    continue
                if ts.awaiting:
                    if full or holds_back(t, changed or {}):
                        break
                    continue
                changed = self._deferred.pop(t, None) or {}
                if full:
                    self._deferred_scope -= {t}
                if ts.wildcard:
                    out += self._compute_full(t, ts, changed)
                elif changed:
                    names = ts.subscribed.intersection(changed)
                    index = self.cache.resources(t)
                    gone = any(index.get(n) is None for n in names)
                    out += self._compute_partial(t, ts, names, removed=gone)
        finally:
            self._pending = {}
        return out + self._release_retained()

    # -- subscription ---------------------------------------------------------------------

    def _subscribe(
        self,
        t: str,
        ts: TypeStatus,
        req: discovery_pb2.DiscoveryRequest,
        first: bool,
        key: bytes | None = None,
    ) -> None:
        if key is not None and key == ts.request_key and ts.started:
            return  # byte-identical names (and type, node) as the request before
        ts.request_key = key
        raw: Sequence[str] = req.resource_names
        if t == SECRET:
            # Every proxy asks for its own certificate as ``default``: the cache keeps each
            # node cluster's under a key of its own (resources/secrets.py).
            # Registry secrets: only those this node cluster's listeners use (its scope).
            usable = self.cache.scope(self.node_cluster).names(SECRET)
            raw = [secret_key(n, self.node_cluster, usable) for n in raw]
        elif t == ROUTE and self.scope is not None:
            # A sidecar that declares its upstreams gets its own variant of a listener's
            # route configuration, under the listener's name (resources/scope.py).
            raw = [self.scope.alias(ROUTE, n) for n in raw]
        unchanged = raw and len(raw) == len(ts.subscribed) and ts.subscribed.issuperset(raw)
        if unchanged and not ts.wildcard:
            # Envoy repeats its whole subscription in every ACK (a name per service): when
            # it is unchanged, say so without building and interning a set.
            # ("*" is never in ``subscribed``, so a list holding it takes the slow path.)
            ts.started = True
            return
        names = set(raw)
        if t in WILDCARD_TYPES:
            # Legacy wildcard: an empty first request means "everything"; it stays
            # wildcard while later requests also name nothing. "*" is explicit wildcard.
            ts.wildcard = "*" in names or (not names and (first or ts.wildcard))
            names.discard("*")
        if names != ts.subscribed:
            ts.subscribed = self.cache.intern(names)
        ts.started = True

    def knows_key(self, t: str, key: bytes | None) -> bool:
        """Did the last request of type ``t`` carry this subscription key? Then a request
        with it repeats that subscription, and its names need not be read."""
        ts = self.types.get(t)
        return key is not None and ts is not None and ts.started and key == ts.request_key

    def _already_current(self, t: str, ts: TypeStatus, version: str) -> bool:
        """Point 4: a reconnecting client already holds this version; record, send nothing."""
        if ts.wildcard and self.scope is not None and not ts.subscribed:
            full = self.scope.full(t)
            current, ts.names = full.version, full.names
        else:
            current = set_version(self.cache.subscription_xor(t, ts.subscribed))
        if current != version:
            return False
        ts.version = ts.acked_version = version
        ts.acked = True
        return True

    # -- responses --------------------------------------------------------------------------

    def _emit(
        self, t: str, ts: TypeStatus, version: str, resources: tuple[Resource, ...]
    ) -> Response:
        ts.version, ts.nonce = version, ts.next_nonce(self.cache.type_generation[t])
        ts.acked = False
        ts.last_push = self.clock()
        return Response(t, version, ts.nonce, resources)

    def _compute_full(
        self, t: str, ts: TypeStatus, changed: dict[str, Resource | None]
    ) -> list[Response]:
        """Listener/Cluster: the complete set, when its version differs from what was sent."""
        assert self.scope is not None
        full = self.scope.full(t)
        version, resources, names, xor = full.version, full.resources, full.names, full.xor
        if ts.subscribed - names:  # wildcard plus explicit extra names (rare): build our own
            index = self.cache.resources(t)
            extra = sorted(n for n in ts.subscribed - names if n in index)
            if extra:
                resources = tuple(sorted((*resources, *(index[n] for n in extra)), key=_by_name))
                names = names | frozenset(extra)
                xor ^= self.cache.xor_of(t, extra)
                version = set_version(xor)
        if t == CLUSTER:
            retained = self._retained_clusters(ts, names, changed)
            if retained:
                resources = tuple(sorted((*resources, *retained.values()), key=_by_name))
                for res in retained.values():
                    xor ^= res.digest
                version = set_version(xor)
            ts.retained = retained
        if version == ts.version and (ts.nonce or ts.acked):
            ts.names = names
            return []
        follow = _FOLLOWS.get(t)
        if follow and changed and (ts.nonce or ts.acked):
            # Point 2: a changed Cluster (Listener) is re-warmed; its EDS (RDS) request
            # will look like an ACK and must be answered with the resource. The client
            # holds the old one when it was sent a set, or came with the current one (a
            # reconnect after a restart: nothing sent on this stream yet, no nonce).
            rewarm = {n for n, old in changed.items() if old is not None and n in names}
            if rewarm and follow == ROUTE and self.scope is not None:
                rewarm = {self.scope.alias(ROUTE, n) for n in rewarm}
            if rewarm and follow in self.types:
                ts_follow = self.types[follow]
                ts_follow.rewarm = ts_follow.rewarm | rewarm
        ts.names = names | frozenset(ts.retained)
        return [self._emit(t, ts, version, resources)]

    def _retained_clusters(
        self, ts: TypeStatus, desired: frozenset[str], changed: dict[str, Resource | None]
    ) -> dict[str, Resource]:
        """Removed clusters a held route or listener still names: keep them for now."""
        candidates = dict(ts.retained)
        for name, old in changed.items():
            if old is not None and name not in desired and name in ts.names:
                candidates[name] = old
        candidates = {n: r for n, r in candidates.items() if n not in desired}
        if not candidates:
            return {}
        held = self._held_clusters()
        return {n: r for n, r in candidates.items() if n in held}

    def _compute_partial(
        self, t: str, ts: TypeStatus, names: frozenset[str] | set[str], *, removed: bool
    ) -> list[Response]:
        """Endpoints/routes (or any explicit subscription): only what changed."""
        index = self.cache.resources(t)
        send = tuple(index[n] for n in sorted(names) if n in index)
        if not send and not (removed and t in WILDCARD_TYPES):
            return []
        if t in WILDCARD_TYPES:
            # Listener and Cluster responses carry the client's complete set even for
            # explicit subscriptions (proxyless gRPC): a name missing from one is deleted.
            send = tuple(index[n] for n in sorted(ts.subscribed) if n in index)
        version = set_version(self.cache.subscription_xor(t, ts.subscribed))
        return [self._emit(t, ts, version, send)]

    def _held_names(self, t: str, ts: TypeStatus) -> Iterable[str]:
        return ts.names | ts.subscribed

    def _release_retained(self) -> list[Response]:
        """Once the routes that named a removed cluster are replaced, remove it too."""
        ts = self.types.get(CLUSTER)
        if ts is None or not ts.retained or not ts.wildcard or ts.awaiting:
            return []
        if set(ts.retained) <= self._held_clusters():
            return []
        return self._compute_full(CLUSTER, ts, {})


def _by_name(res: Resource) -> str:
    return res.name
