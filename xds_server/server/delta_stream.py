"""The Delta (incremental) xDS subscription state machine of one ADS stream. No I/O.

Same inputs and outputs as :class:`~xds_server.server.stream.SotwStream`, with
the incremental protocol's rules (xDS "Incremental xDS"; the numbered points are those
of ``docs/xds.md``):

* Requests are deltas of the subscription: every request's subscribe and
  unsubscribe lists are applied, whatever its nonce; the nonce only says which
  response an ACK or NACK is about.
* Wildcard: an empty first request for Cluster or Listener, or ``*``, means
  "everything in my scope"; unsubscribing ``*`` ends it.
* A subscribed name that does not exist is answered in ``removed_resources``;
  a resource the client holds that leaves its scope is removed the same way.
* ``initial_resource_versions`` on a new stream say what the client holds;
  nothing is sent for a resource whose version is current (point 4).
* A NACKed response is recorded with the names it carried and not resent;
  only new content goes out again (point 1). A NACK whose nonce is not the last
  one sent for its type is stale: its error is ignored.
* Envoy sends nothing when it re-warms a changed Cluster (Listener) over Delta,
  so the endpoints (routes) of every changed one are pushed right after it,
  even when they did not change (point 2).
* Removal of a cluster that a held route configuration or listener still names
  waits until that holder has been replaced (point 3).

Like the SotW stream, it keeps no per-resource map: once synced, the client
holds the index's versions for its scope and subscription, apart from the
names its watcher reports as changed (with the resources they replaced).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.cache import WILDCARD_TYPES, ConfigWatcher, Pending, ScopeView
from xds_server.resources.resource import Resource, set_version, string_field
from xds_server.resources.scope import variant_name
from xds_server.resources.secrets import secret_key, served_secret_name
from xds_server.resources.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TYPE_ORDER
from xds_server.server.base import (
    KNOWN_TYPES,
    RequestOutcome,
    ResponseBase,
    StatusBase,
    StreamBase,
    holds_back,
    nack_text,
    outcome,
)

_FOLLOWS = {CLUSTER: ENDPOINT, LISTENER: ROUTE}
_NAME = operator.attrgetter("name")
_INFLIGHT_MAX = 16


@dataclass(frozen=True, slots=True)
class DeltaResponse(ResponseBase):
    """One DeltaDiscoveryResponse to write."""

    type_url: str
    version: str  # system_version_info: a hash of what the client holds after this
    nonce: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...] = ()

    def encode(self) -> bytes:
        parts = [string_field(1, self.version)]
        for r in self.resources:
            parts += (r.delta_prefix, r.body, r.delta_suffix)
        parts += (string_field(4, self.type_url), string_field(5, self.nonce))
        parts += [string_field(6, name) for name in self.removed]
        return b"".join(parts)

    def wire_key(self) -> tuple[object, ...]:
        names = tuple(r.name for r in self.resources)
        return ("delta", self.type_url, self.version, self.nonce, names, self.removed)


@dataclass(slots=True)
class DeltaTypeStatus(StatusBase):
    """What one Delta stream knows of one resource type (no per-resource maps)."""

    nack_names: tuple[str, ...] = ()
    inflight: dict[str, tuple[str, ...]] = field(default_factory=dict)


class DeltaStream(StreamBase[DeltaTypeStatus]):
    """One Delta ADS stream's subscriptions and what the client holds."""

    protocol = "delta"
    __slots__ = ("_left",)

    def __init__(self, cache: ConfigWatcher, clock: Callable[[], float]) -> None:
        super().__init__(cache, clock)
        # Per wildcard type: names that left the scope, whose removal is not sent yet
        # (None, not an empty dict, on nearly every stream).
        self._left: dict[str, frozenset[str]] | None = None

    # -- inputs -------------------------------------------------------------------------

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest) -> list[DeltaResponse]:
        ts = self.types.get(req.type_url)
        if (
            ts is not None
            and ts.started
            and self.scope is not None
            and not req.resource_names_subscribe
            and not req.resource_names_unsubscribe
            and not req.HasField("node")
        ):
            # An ACK or NACK that changes no subscription (nearly every request of a long
            # stream): of the steps below only its answer to the nonce, and what that may
            # release, apply. Skipping the rest shortens every ACK, which a push pays once
            # per proxy.
            self._ack_or_nack(KNOWN_TYPES[req.type_url], ts, req, False)
            if self._deferred:
                return self._flush()
            return self._release_retained()
        return self._on_request_full(req)

    def _on_request_full(self, req: discovery_pb2.DeltaDiscoveryRequest) -> list[DeltaResponse]:
        """Any request: subscription changes, the node, the first request of a type."""
        found = self._request_type(req, DeltaTypeStatus)
        if found is None:
            return []
        t, ts = found
        first = not ts.started
        self._ack_or_nack(t, ts, req, first)
        subs = set(req.resource_names_subscribe)
        unsubs = set(req.resource_names_unsubscribe)
        secrets = t == SECRET
        if secrets:
            # Every proxy asks for its own certificate as ``default``: the cache keeps each
            # node cluster's under a key of its own (resources/secrets.py).
            # Registry secrets: only those this node cluster's listeners use (its scope).
            usable = self.cache.scope(self.node_cluster).names(SECRET)
            subs = {secret_key(n, self.node_cluster, usable) for n in subs}
            # (an unsubscription drops whichever key the subscription had)
            unsubs = {secret_key(n, self.node_cluster, (n,)) for n in unsubs} | {
                secret_key(n, self.node_cluster) for n in unsubs
            }
        routes = t == ROUTE and self.scope is not None
        if routes:
            # A sidecar that declares its upstreams gets its own variant of a listener's
            # route configuration, under the listener's name (resources/scope.py).
            assert self.scope is not None
            subs = {self.scope.alias(ROUTE, n) for n in subs}
            unsubs = unsubs | {self.scope.alias(ROUTE, n) for n in unsubs}
        toggled = "*" in subs or "*" in unsubs
        if t in WILDCARD_TYPES and ((first and not subs) or "*" in subs):
            ts.wildcard = True
        if "*" in unsubs:
            ts.wildcard = False
        subs.discard("*")
        unsubs.discard("*")
        if subs or unsubs:
            ts.subscribed = self.cache.intern((ts.subscribed | subs) - unsubs)
        ts.started = True
        index = self.cache.resources(t)
        send: list[Resource] = []
        removed: list[str] = []
        if first or toggled:
            # A reconnecting Envoy lists every resource it holds (1,000s at scale): read the
            # map once into a dict and the scope once, visit each desired name once (no
            # union, no sort of them all: only what is sent or removed is sorted).
            held: dict[str, str] = dict(req.initial_resource_versions) if first else {}
            if secrets:
                held = {secret_key(n, self.node_cluster, usable): v for n, v in held.items()}
            elif routes and held:
                assert self.scope is not None
                held = {self.scope.alias(ROUTE, n): v for n, v in held.items()}
            subscribed = ts.subscribed
            scope_names: Collection[str] = (
                self.scope.names(t) if ts.wildcard and self.scope is not None else ()
            )
            for names, skip in ((subscribed, ()), (scope_names, subscribed)):
                for name in names:
                    if name in skip:
                        continue  # (subscribed and in scope: visited once)
                    res = index.get(name)
                    if res is None:
                        if name in held or name in subs:
                            removed.append(name)  # held but gone, or subscribed but missing
                    elif held.get(name) != res.version:
                        send.append(res)
            for name in held:
                if name not in subscribed and name not in scope_names:
                    removed.append(name)  # held, but no longer the client's
            send.sort(key=_NAME)
            removed.sort()
        else:
            for name in sorted(subs):
                res = index.get(name)
                if res is None:
                    removed.append(name)  # subscribed, but there is no such resource
                else:
                    send.append(res)
        out = self._emit(t, ts, send, removed)
        if first and not out and (req.initial_resource_versions or not self._desired_names(t, ts)):
            # Reconnected holding exactly the current versions (point 4): in sync.
            ts.version = ts.acked_version = self._version(t, ts)
            ts.acked = True
        if self._deferred:
            return out + self._flush()  # an answer may unblock changes held back
        return out + self._release_retained()

    def on_change(self, pending: Pending, scopes_changed: bool) -> list[DeltaResponse]:
        old_scope = self.scope
        if scopes_changed and self.scope is not None:
            self.scope = self.cache.scope(self.node_cluster)
        self._defer(pending)
        if scopes_changed and old_scope is not None and self.scope is not None:
            if old_scope is not self.scope:
                for t in WILDCARD_TYPES:
                    ts = self.types.get(t)
                    if ts is not None and ts.wildcard:
                        self._moved(t, old_scope, self.scope)
            self._realias()
        return self._flush()

    def _moved(self, t: str, old_scope: ScopeView, new_scope: ScopeView) -> None:
        """Names of wildcard type ``t`` that entered or left the scope: pushed, or removed
        (those that left are remembered as held until their removal goes out)."""
        old_names, new_names = set(old_scope.names(t)), set(new_scope.names(t))
        mine = self._deferred.setdefault(t, {})
        index = self.cache.resources(t)
        for name in old_names ^ new_names:
            mine.setdefault(name, index.get(name))
        gone = old_names - new_names
        if gone:
            left = self._left if self._left is not None else {}
            left[t] = left.get(t, frozenset()) | gone
            self._left = left

    def _flush(self) -> list[DeltaResponse]:
        """Send deferred changes in type order to types not waiting for an answer.

        At most one unanswered response per type (gRPC buffers every write, so a stuck
        proxy would otherwise make meshd buffer without bound); a waiting type holds back
        the types after it, keeping the push order, unless what it waits to send cannot
        be named by them (:func:`holds_back`).
        """
        out: list[DeltaResponse] = []
        self._pending = self._deferred
        try:
            for t in TYPE_ORDER:
                if not self._deferred.get(t):
                    continue
                ts = self.types.get(t)
                if ts is None or not ts.started:
                    self._deferred.pop(t, None)
                    continue
                if ts.awaiting:
                    if holds_back(t, self._deferred[t]):
                        break
                    continue
                changed = self._deferred.pop(t)
                resp = self._compute(t, ts, changed)
                out += resp
                if t in _FOLLOWS and resp:
                    # Point 2: over Delta, Envoy re-warms a changed Cluster (Listener)
                    # without asking again: push its assignment (routes) too.
                    follow = _FOLLOWS[t]
                    ts_follow = self.types.get(follow)
                    index = self.cache.resources(follow)
                    mine = self._deferred.setdefault(follow, {})
                    for r in resp[0].resources:
                        # (a sidecar's route configuration may be a variant: its key)
                        key = r.name
                        if follow == ROUTE and self.scope is not None:
                            key = self.scope.alias(ROUTE, key)
                        if (
                            changed.get(r.name) is not None
                            and ts_follow is not None
                            and self._in_scope(follow, ts_follow, key)
                        ):
                            mine.setdefault(key, index.get(key))
        finally:
            self._pending = {}
        return out + self._release_retained()

    # -- internals ------------------------------------------------------------------------

    def _ack_or_nack(
        self, t: str, ts: DeltaTypeStatus, req: discovery_pb2.DeltaDiscoveryRequest, first: bool
    ) -> None:
        nonce = req.response_nonce
        nacks = req.HasField("error_detail")
        if nacks and nonce and nonce == ts.nonce:
            ts.nack = nack_text(req.error_detail)
            ts.nack_names = ts.inflight.get(nonce, ())
            ts.acked = False
            self.last_outcome = RequestOutcome("nack", t, ts.nack)
        elif nacks and (nonce or ts.nonce):
            # Stale (xDS "ACK and NACK semantics"): a NACK whose nonce is not the last one
            # sent for this type rejects no response in force (an older one, one never sent
            # here, or none at all). Its subscription changes still apply; the error is
            # neither recorded nor counted as a NACK.
            self.last_outcome = outcome("stale", t)
        elif nonce:
            if nonce == ts.nonce:
                ts.acked, ts.acked_version, ts.nack, ts.nack_names = True, ts.version, None, ()
            self.last_outcome = outcome("ack" if nonce in ts.inflight else "stale", t)
        else:
            # No nonce, nothing sent for the type yet: an error detail NACKs nothing.
            self.last_outcome = outcome("initial" if first else "update", t)
        ts.inflight.pop(nonce, None)

    def _in_scope(self, t: str, ts: DeltaTypeStatus, name: str) -> bool:
        if name in ts.subscribed:
            return True
        return ts.wildcard and self.scope is not None and name in self.scope.names(t)

    def _desired_names(self, t: str, ts: DeltaTypeStatus) -> set[str]:
        names = set(ts.subscribed)
        if ts.wildcard and self.scope is not None:
            names.update(self.scope.names(t))
        return names

    def _version(self, t: str, ts: DeltaTypeStatus) -> str:
        if ts.wildcard and self.scope is not None:
            xor = self.scope.xor(t)
            extra = ts.subscribed.difference(self.scope.names(t))
            if extra:
                xor ^= self.cache.xor_of(t, extra)
        else:
            xor = self.cache.subscription_xor(t, ts.subscribed)
        for res in ts.retained.values():
            xor ^= res.digest
        return set_version(xor)

    def _held_names(self, t: str, ts: DeltaTypeStatus) -> Iterable[str]:
        return self._desired_names(t, ts)

    def _held_in_scope(self, t: str, name: str, old: Resource | None) -> bool:
        """Whether a wildcard client holds ``name`` (not in its scope now, or gone) by its
        scope: it existed, and the scope covered it or it has just left the scope. A name
        of another scope is never sent, not even as a removal."""
        if old is None:
            return False
        left = self._left
        if left is not None and name in left.get(t, ()):
            rest = left[t] - {name}
            if rest:
                left[t] = rest
            else:
                del left[t]
                if not left:
                    self._left = None
            return True
        return self.scope is not None and self.scope.covers(t, name)

    def _compute(
        self, t: str, ts: DeltaTypeStatus, changed: dict[str, Resource | None]
    ) -> list[DeltaResponse]:
        index = self.cache.resources(t)
        held_refs: set[str] | None = None
        send: list[Resource] = []
        removed: list[str] = []
        for name in sorted(changed):
            res = index.get(name) if self._in_scope(t, ts, name) else None
            if res is not None:
                ts.retained.pop(name, None)
                send.append(res)
                continue
            old = changed[name]
            if not (name in ts.subscribed or (ts.wildcard and self._held_in_scope(t, name, old))):
                continue  # the client does not hold it (never had it, or unsubscribed)
            if t == CLUSTER:
                if held_refs is None:
                    held_refs = self._held_clusters()
                if name in held_refs and old is not None:
                    ts.retained[name] = old  # still named by a route the client holds
                    continue
            ts.retained.pop(name, None)
            removed.append(name)
        return self._emit(t, ts, send, removed)

    def _emit(
        self, t: str, ts: DeltaTypeStatus, send: list[Resource], removed: list[str]
    ) -> list[DeltaResponse]:
        if not send and not removed:
            return []
        ts.nonce = ts.next_nonce(self.cache.type_generation[t])
        ts.version = self._version(t, ts)
        ts.acked, ts.last_push = False, self.clock()
        ts.inflight[ts.nonce] = tuple(r.name for r in send)
        if len(ts.inflight) > _INFLIGHT_MAX:  # a client that never ACKs must not grow this
            ts.inflight.pop(next(iter(ts.inflight)))
        if t == SECRET:  # (index keys back to the names the client asked for)
            removed = [served_secret_name(n, self.node_cluster) for n in removed]
        elif t == ROUTE:  # (a variant's key back to the listener's name)
            removed = [variant_name(n) for n in removed]
        return [DeltaResponse(t, ts.version, ts.nonce, tuple(send), tuple(removed))]

    def _release_retained(self) -> list[DeltaResponse]:
        ts = self.types.get(CLUSTER)
        if ts is None or not ts.retained or ts.awaiting:
            return []
        held = self._held_clusters()
        gone = sorted(n for n in ts.retained if n not in held)
        if not gone:
            return []
        for name in gone:
            del ts.retained[name]
        return self._emit(CLUSTER, ts, [], gone)
