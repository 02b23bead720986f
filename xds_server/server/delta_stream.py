"""The Delta (incremental) xDS subscription state machine of one ADS stream. No I/O.

Same inputs and outputs as :class:`~xds_server.server.stream.SotwStream`, with
the incremental protocol's rules (xDS "Incremental xDS" and ``shared/spec/xds.md``):

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
  only new content goes out again (point 1).
* Envoy sends nothing when it re-warms a changed Cluster (Listener) over Delta,
  so the endpoints (routes) of every changed one are pushed right after it,
  even when they did not change (point 2).
* Removal of a cluster that a held route configuration or listener still names
  waits until that holder has been replaced (point 3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.cache import WILDCARD_TYPES, ConfigCache, Scope
from xds_server.server.stream import RequestOutcome, SyncState
from xds_server.translate.names import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_ORDER
from xds_server.translate.resource import Resource, set_version, string_field

_FOLLOWS = {CLUSTER: ENDPOINT, LISTENER: ROUTE}


def digest_of(name: str, version: str) -> int:
    """The digest :func:`make_resource` gives a resource of this name and version."""
    return int.from_bytes(
        hashlib.blake2b(f"{name}\0{version}".encode(), digest_size=16).digest(), "big"
    )


@dataclass(frozen=True, slots=True)
class DeltaResponse:
    """One DeltaDiscoveryResponse to write."""

    type_url: str
    version: str  # system_version_info: a hash of what the client holds after this
    nonce: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...] = ()

    def wire(self) -> bytes:
        parts = [string_field(1, self.version)]
        for r in self.resources:
            parts += (r.delta_prefix, r.body, r.delta_suffix)
        parts += (string_field(4, self.type_url), string_field(5, self.nonce))
        parts += [string_field(6, name) for name in self.removed]
        return b"".join(parts)

    @property
    def size(self) -> int:
        return sum(len(r.body) for r in self.resources)


@dataclass
class DeltaTypeStatus:
    """What one Delta stream holds of one resource type."""

    started: bool = False
    wildcard: bool = False
    subscribed: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)  # name -> version the client has
    sent: dict[str, Resource] = field(default_factory=dict)  # the resources behind ``held``
    xor: int = 0
    version: str = ""
    nonce: str = ""
    acked: bool = False
    acked_version: str = ""
    nack: str | None = None
    nack_names: tuple[str, ...] = ()
    last_push: float | None = None
    retained: frozenset[str] = frozenset()
    inflight: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def state(self) -> SyncState:
        if not self.nonce and not self.acked:
            return "NOT_SENT"
        if self.nack is not None:
            return "NACKED"
        return "SYNCED" if self.acked else "STALE"

    def hold(self, name: str, version: str, res: Resource | None) -> None:
        old = self.held.get(name)
        if old is not None:
            self.xor ^= digest_of(name, old)
        self.held[name] = version
        self.xor ^= res.digest if res is not None else digest_of(name, version)
        if res is not None:
            self.sent[name] = res
        else:
            self.sent.pop(name, None)

    def drop(self, name: str) -> None:
        old = self.held.pop(name, None)
        if old is not None:
            self.xor ^= digest_of(name, old)
        self.sent.pop(name, None)


class DeltaStream:
    """One Delta ADS stream's subscriptions and what the client holds."""

    protocol = "delta"

    def __init__(self, cache: ConfigCache, clock: Callable[[], float]) -> None:
        self.cache = cache
        self.clock = clock
        self.node_id = ""
        self.node_cluster = ""
        self.scope: Scope | None = None
        self.types: dict[str, DeltaTypeStatus] = {}
        self._nonces = 0
        self.last_outcome: RequestOutcome | None = None

    # -- inputs -------------------------------------------------------------------------

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest) -> list[DeltaResponse]:
        if self.scope is None or (req.HasField("node") and req.node.id):
            if req.HasField("node"):
                self.node_id, self.node_cluster = req.node.id, req.node.cluster
            self.scope = self.cache.scope(self.node_cluster)
        t = req.type_url
        if t not in TYPE_ORDER:
            self.last_outcome = RequestOutcome("unknown_type", t)
            return []
        ts = self.types.setdefault(t, DeltaTypeStatus())
        first = not ts.started
        self._ack_or_nack(t, ts, req, first)
        if first:
            index = self.cache.index[t]
            for name, version in req.initial_resource_versions.items():
                res = index.get(name)
                ts.hold(name, version, res if res is not None and res.version == version else None)
        subs = set(req.resource_names_subscribe)
        unsubs = set(req.resource_names_unsubscribe)
        if t in WILDCARD_TYPES and ((first and not subs) or "*" in subs):
            ts.wildcard = True
        if "*" in unsubs:
            ts.wildcard = False
        subs.discard("*")
        unsubs.discard("*")
        ts.subscribed |= subs
        ts.subscribed -= unsubs
        for name in unsubs:
            if not self._in_scope(t, ts, name):
                ts.drop(name)  # the client forgets what it unsubscribed
        ts.started = True
        wildcard_toggled = (
            "*" in req.resource_names_subscribe or "*" in req.resource_names_unsubscribe
        )
        check = subs
        if first or wildcard_toggled:
            check = self._desired_names(t, ts) | set(ts.held)
        out = self._compute(t, ts, check, announce_missing=subs)
        if first and not out and ts.held:
            # Reconnected holding exactly the current versions (point 4): in sync, nothing sent.
            ts.version = ts.acked_version = set_version(ts.xor)
            ts.acked = True
        return out + self._release_retained()

    def on_change(self, pending: dict[str, set[str]], scopes_changed: bool) -> list[DeltaResponse]:
        if scopes_changed and self.scope is not None:
            self.scope = self.cache.scope(self.node_cluster)
        out: list[DeltaResponse] = []
        force: dict[str, set[str]] = {}
        for t in TYPE_ORDER:
            ts = self.types.get(t)
            if ts is None or not ts.started:
                continue
            check = set(pending.get(t, ())) | force.get(t, set())
            if scopes_changed and ts.wildcard:
                check |= set(self._desired_names(t, ts)) | set(ts.held)
            if not check:
                continue
            resp = self._compute(t, ts, check, force=force.get(t, set()))
            out += resp
            if t in _FOLLOWS and resp:
                # Point 2: over Delta, Envoy re-warms a changed Cluster (Listener) without
                # asking again: push its ClusterLoadAssignment (RouteConfiguration) now.
                changed = {r.name for r in resp[0].resources}
                force[_FOLLOWS[t]] = changed
        return out + self._release_retained()

    # -- internals ------------------------------------------------------------------------

    def _ack_or_nack(
        self, t: str, ts: DeltaTypeStatus, req: discovery_pb2.DeltaDiscoveryRequest, first: bool
    ) -> None:
        nonce = req.response_nonce
        if req.HasField("error_detail"):
            ts.nack = req.error_detail.message or f"code {req.error_detail.code}"
            ts.nack_names = ts.inflight.get(nonce, ())
            ts.acked = False
            self.last_outcome = RequestOutcome("nack", t, ts.nack)
        elif nonce:
            if nonce == ts.nonce:
                ts.acked, ts.acked_version, ts.nack, ts.nack_names = True, ts.version, None, ()
            self.last_outcome = RequestOutcome("ack" if nonce in ts.inflight else "stale", t)
        else:
            self.last_outcome = RequestOutcome("initial" if first else "update", t)
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

    def _held_clusters(self) -> set[str]:
        held: set[str] = set()
        for t in (LISTENER, ROUTE):
            ts = self.types.get(t)
            if ts is not None:
                for res in ts.sent.values():
                    held.update(res.refs)
        return held

    def _compute(
        self,
        t: str,
        ts: DeltaTypeStatus,
        check: set[str],
        *,
        force: set[str] = frozenset(),  # type: ignore[assignment]
        announce_missing: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> list[DeltaResponse]:
        index = self.cache.index[t]
        held_refs = self._held_clusters() if t == CLUSTER else set()
        send: list[Resource] = []
        removed: list[str] = []
        retained = set(ts.retained)
        for name in sorted(check):
            res = index.get(name) if self._in_scope(t, ts, name) else None
            if res is None:
                if name in ts.held:
                    if t == CLUSTER and name in held_refs:
                        retained.add(name)  # still named by a route the client holds
                        continue
                    ts.drop(name)
                    retained.discard(name)
                    removed.append(name)
                elif name in announce_missing:
                    removed.append(name)  # subscribed, but there is no such resource
                continue
            retained.discard(name)
            if ts.held.get(name) == res.version and name not in force:
                continue
            ts.hold(name, res.version, res)
            send.append(res)
        ts.retained = frozenset(retained)
        if not send and not removed:
            return []
        self._nonces += 1
        ts.nonce, ts.version = str(self._nonces), set_version(ts.xor)
        ts.acked, ts.last_push = False, self.clock()
        ts.inflight[ts.nonce] = tuple(r.name for r in send)
        if len(ts.inflight) > 16:  # a client that never ACKs must not grow this forever
            ts.inflight.pop(next(iter(ts.inflight)))
        return [DeltaResponse(t, ts.version, ts.nonce, tuple(send), tuple(removed))]

    def _release_retained(self) -> list[DeltaResponse]:
        ts = self.types.get(CLUSTER)
        if ts is None or not ts.retained:
            return []
        if ts.retained <= self._held_clusters():
            return []
        return self._compute(CLUSTER, ts, set(ts.retained))
