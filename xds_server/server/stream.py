"""The state-of-the-world subscription state machine of one ADS stream. No I/O.

Feed it requests (:meth:`SotwStream.on_request`) and cache changes
(:meth:`SotwStream.on_change`); it returns the responses to write, in order.
It holds names, versions and nonces plus references to the shared
:class:`~xds_server.translate.resource.Resource` objects, never message copies.

Rules (see ``shared/spec/xds.md`` and the xDS protocol's "ACK and NACK
semantics"):

* A request whose ``response_nonce`` is not the last nonce sent for its type is
  stale and ignored entirely (point 1).
* A request with ``error_detail`` is a NACK: recorded and counted; the same
  content is not sent again, only new content is (point 1).
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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.cache import WILDCARD_TYPES, ConfigCache, Scope
from xds_server.translate.names import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_ORDER
from xds_server.translate.resource import Resource, set_version, string_field

SyncState = Literal["SYNCED", "STALE", "NACKED", "NOT_SENT"]


@dataclass(frozen=True, slots=True)
class Response:
    """One DiscoveryResponse to write; :meth:`wire` joins the pre-encoded resources."""

    type_url: str
    version: str
    nonce: str
    resources: tuple[Resource, ...]

    def wire(self) -> bytes:
        parts = [string_field(1, self.version)]
        for r in self.resources:
            parts += (r.sotw_prefix, r.body)
        parts += (string_field(4, self.type_url), string_field(5, self.nonce))
        return b"".join(parts)

    @property
    def size(self) -> int:
        return sum(len(r.body) for r in self.resources)


@dataclass
class TypeStatus:
    """What one stream holds of one resource type."""

    started: bool = False
    wildcard: bool = False
    subscribed: set[str] = field(default_factory=set)
    sent: dict[str, Resource] = field(default_factory=dict)
    xor: int = 0
    version: str = ""  # version_info of the last response (or the one the client came with)
    nonce: str = ""  # last nonce sent; "" = none yet
    acked: bool = False  # the last response was ACKed
    acked_version: str = ""
    nack: str | None = None  # Envoy's error text for the last response, if it NACKed
    last_push: float | None = None
    rewarm: set[str] = field(default_factory=set)
    retained: frozenset[str] = frozenset()

    @property
    def state(self) -> SyncState:
        if not self.nonce and not self.acked:
            return "NOT_SENT"
        if self.nack is not None:
            return "NACKED"
        return "SYNCED" if self.acked else "STALE"


@dataclass
class RequestOutcome:
    """What a request was, for metrics and logs."""

    kind: Literal["initial", "ack", "nack", "stale", "unknown_type", "update"]
    type_url: str
    message: str = ""


class SotwStream:
    """One ADS state-of-the-world stream's subscriptions and what it was sent."""

    protocol = "sotw"

    def __init__(self, cache: ConfigCache, clock: Callable[[], float]) -> None:
        self.cache = cache
        self.clock = clock
        self.node_id = ""
        self.node_cluster = ""
        self.scope: Scope | None = None
        self.types: dict[str, TypeStatus] = {}
        self._nonces = 0
        self.last_outcome: RequestOutcome | None = None

    # -- inputs -------------------------------------------------------------------------

    def on_request(self, req: discovery_pb2.DiscoveryRequest) -> list[Response]:
        """Handle one DiscoveryRequest; return the responses to send, in order."""
        if self.scope is None or (req.HasField("node") and req.node.id):
            if req.HasField("node"):
                self.node_id, self.node_cluster = req.node.id, req.node.cluster
            self.scope = self.cache.scope(self.node_cluster)
        t = req.type_url
        if t not in TYPE_ORDER:
            self.last_outcome = RequestOutcome("unknown_type", t)
            return []
        ts = self.types.setdefault(t, TypeStatus())
        if req.response_nonce and req.response_nonce != ts.nonce:
            # Stale: answers a response that a newer one has superseded. Envoy will
            # send a fresh request for the newer one; acting on this one would race it.
            self.last_outcome = RequestOutcome("stale", t)
            return []
        first = not ts.started
        if req.HasField("error_detail"):
            ts.nack = req.error_detail.message or f"code {req.error_detail.code}"
            ts.acked = False
            self.last_outcome = RequestOutcome("nack", t, ts.nack)
        elif req.response_nonce:
            ts.acked, ts.acked_version, ts.nack = True, req.version_info, None
            self.last_outcome = RequestOutcome("ack", t)
        else:
            self.last_outcome = RequestOutcome("initial" if first else "update", t)
        self._subscribe(t, ts, req, first)
        if first and req.version_info and self._already_current(t, ts, req.version_info):
            return []
        out = self._compute(t, ts, None, use_rewarm=True)
        return out + self._release_retained()

    def on_change(self, pending: dict[str, set[str]], scopes_changed: bool) -> list[Response]:
        """The cache changed: return what this stream must be sent now, in type order."""
        if scopes_changed and self.scope is not None:
            self.scope = self.cache.scope(self.node_cluster)
        out: list[Response] = []
        for t in TYPE_ORDER:
            ts = self.types.get(t)
            if ts is None or not ts.started:
                continue
            if ts.wildcard:
                if t in pending or scopes_changed:
                    out += self._compute_full(t, ts)
            elif t in pending:
                out += self._compute(t, ts, pending[t], use_rewarm=False)
        return out + self._release_retained()

    # -- subscription ---------------------------------------------------------------------

    def _subscribe(
        self, t: str, ts: TypeStatus, req: discovery_pb2.DiscoveryRequest, first: bool
    ) -> None:
        names = set(req.resource_names)
        if t in WILDCARD_TYPES:
            # Legacy wildcard: an empty first request means "everything"; it stays
            # wildcard while later requests also name nothing. "*" is explicit wildcard.
            ts.wildcard = "*" in names or (not names and (first or ts.wildcard))
            names.discard("*")
        for gone in ts.subscribed - names:
            res = ts.sent.pop(gone, None)
            if res is not None and not ts.wildcard:
                ts.xor ^= res.digest
        ts.subscribed = names
        ts.started = True

    def _already_current(self, t: str, ts: TypeStatus, version: str) -> bool:
        """Point 4: a reconnecting client already holds this version; record, send nothing."""
        desired = self._desired(t, ts)
        xor = 0
        for res in desired.values():
            xor ^= res.digest
        if set_version(xor) != version:
            return False
        ts.sent, ts.xor, ts.version = dict(desired), xor, version
        ts.acked, ts.acked_version = True, version
        return True

    def _desired(self, t: str, ts: TypeStatus) -> dict[str, Resource]:
        index = self.cache.index[t]
        names: set[str] = set(ts.subscribed)
        if ts.wildcard and self.scope is not None:
            names.update(self.scope.names(t))
        return {n: index[n] for n in names if n in index}

    # -- responses --------------------------------------------------------------------------

    def _next_nonce(self) -> str:
        self._nonces += 1
        return str(self._nonces)

    def _emit(self, t: str, ts: TypeStatus, version: str, resources: list[Resource]) -> Response:
        ts.version, ts.nonce = version, self._next_nonce()
        ts.acked = False
        ts.last_push = self.clock()
        return Response(t, version, ts.nonce, tuple(resources))

    def _compute(
        self, t: str, ts: TypeStatus, candidates: set[str] | None, *, use_rewarm: bool
    ) -> list[Response]:
        if ts.wildcard:
            return self._compute_full(t, ts)
        return self._compute_partial(t, ts, candidates, use_rewarm)

    def _compute_full(self, t: str, ts: TypeStatus) -> list[Response]:
        """Listener/Cluster: the complete set, when its version differs from what was sent."""
        desired = self._desired(t, ts)
        retained: dict[str, Resource] = {}
        if t == CLUSTER:
            held = self._held_clusters()
            retained = {n: r for n, r in ts.sent.items() if n not in desired and n in held}
        xor = 0
        for res in desired.values():
            xor ^= res.digest
        for res in retained.values():
            xor ^= res.digest
        version = set_version(xor)
        ts.retained = frozenset(retained)
        if version == ts.version and ts.nonce:
            return []
        if t in (CLUSTER, LISTENER):
            # Point 2: a changed Cluster (Listener) is re-warmed; its EDS (RDS) request
            # will look like an ACK and must be answered with the resource.
            follow = ENDPOINT if t == CLUSTER else ROUTE
            changed = {
                n for n, r in desired.items() if n in ts.sent and ts.sent[n].version != r.version
            }
            if changed:
                self.types.setdefault(follow, TypeStatus()).rewarm.update(changed)
        ts.sent = {**desired, **retained}
        ts.xor = xor
        resources = [ts.sent[n] for n in sorted(ts.sent)]
        return [self._emit(t, ts, version, resources)]

    def _compute_partial(
        self, t: str, ts: TypeStatus, candidates: set[str] | None, use_rewarm: bool
    ) -> list[Response]:
        """Endpoints/routes (or any explicit subscription): only what changed."""
        index = self.cache.index[t]
        names = ts.subscribed if candidates is None else candidates & ts.subscribed
        rewarm = ts.rewarm & ts.subscribed if use_rewarm else set()
        send: list[Resource] = []
        removed = False
        for n in sorted(names | rewarm):
            res = index.get(n)
            old = ts.sent.get(n)
            if res is None:
                if old is not None:
                    del ts.sent[n]
                    ts.xor ^= old.digest
                    removed = True
                continue
            if old is not None and old.version == res.version and n not in rewarm:
                continue
            if old is not None:
                ts.xor ^= old.digest
            ts.sent[n] = res
            ts.xor ^= res.digest
            send.append(res)
        if use_rewarm:
            ts.rewarm -= rewarm
        if not send and not (removed and t in WILDCARD_TYPES):
            return []
        if t in WILDCARD_TYPES:
            # Listener and Cluster responses carry the client's complete set even for
            # explicit subscriptions (proxyless gRPC): a name missing from one is deleted.
            send = [ts.sent[n] for n in sorted(ts.sent)]
        return [self._emit(t, ts, set_version(ts.xor), send)]

    def _held_clusters(self) -> set[str]:
        """Clusters named by the route configurations and listeners this stream holds."""
        held: set[str] = set()
        for t in (LISTENER, ROUTE):
            ts = self.types.get(t)
            if ts is not None:
                for res in ts.sent.values():
                    held.update(res.refs)
        return held

    def _release_retained(self) -> list[Response]:
        """Once the routes that named a removed cluster are replaced, remove it too."""
        ts = self.types.get(CLUSTER)
        if ts is None or not ts.retained or not ts.wildcard:
            return []
        if ts.retained & self._held_clusters() == ts.retained:
            return []
        return self._compute_full(CLUSTER, ts)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, TypeStatus]:
        return self.types
