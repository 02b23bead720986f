"""What the SotW and Delta stream state machines share. No I/O.

Both keep per type a small :class:`StatusBase` (no per-resource maps), hold back
changes for a type whose last response is unanswered, and need the clusters
that the route configurations and listeners a client holds still name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from xds_server.cache import ConfigReader, ConfigWatcher, Pending, ScopeView
from xds_server.log_limit import clip
from xds_server.resources.resource import BoundedMemo, Resource
from xds_server.resources.scope import variant_name
from xds_server.resources.types import ENDPOINT, LISTENER, ROUTE, TYPE_ORDER

SyncState = Literal["SYNCED", "STALE", "NACKED", "NOT_SENT"]


OutcomeKind = Literal["initial", "ack", "nack", "stale", "unknown_type", "update"]


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What a request was, for metrics and logs."""

    kind: OutcomeKind
    type_url: str
    message: str = ""


KNOWN_TYPES: dict[str, str] = {t: t for t in TYPE_ORDER}
"""Each type URL meshd serves, to itself: a request's type URL is a new string each time,
and a stream keeps one per type it asks for. Looked up here, every stream keeps the same
few strings instead of copies of its own."""

_OUTCOMES: dict[tuple[OutcomeKind, str], RequestOutcome] = {
    (kind, t): RequestOutcome(kind, t)
    for kind in ("initial", "ack", "stale", "update")
    for t in TYPE_ORDER
}


KEPT_CHARS = 4096
"""How much of a client's NACK text (or unknown type URL) a stream keeps: what
``meshctl proxy-status`` and the admin Watch show. The rest is the client's to repeat."""


class _ErrorDetail(Protocol):
    @property
    def code(self) -> int: ...

    @property
    def message(self) -> str: ...


def holds_back(type_url: str, deferred: Mapping[str, Resource | None]) -> bool:
    """Whether changes deferred for ``type_url``, a type waiting for its answer, hold back
    the types after it in the push order (make before break: a route must not reach a
    proxy before the cluster and assignment it names).

    Assignments the proxy holds already are named by nothing new when they change: a
    route, a listener need not wait behind a burst of endpoint updates (a rolling deploy).
    An assignment it does not hold yet (asked for before it existed) still holds them back.
    """
    if type_url != ENDPOINT:
        return True
    return any(old is None for old in deferred.values())


def nack_text(detail: _ErrorDetail) -> str:
    """A NACK's error text as a stream keeps it: at most :data:`KEPT_CHARS` of it."""
    return (
        clip(detail.message, KEPT_CHARS, one_line=False)
        if detail.message
        else f"code {detail.code}"
    )


def outcome(kind: OutcomeKind, type_url: str) -> RequestOutcome:
    """A request's outcome without a message: shared, since every stream keeps its last
    one (mostly an ACK)."""
    shared = _OUTCOMES.get((kind, type_url))
    return shared if shared is not None else RequestOutcome(kind, type_url)


class ResponseBase:
    """What a SotW and a Delta response share: their bytes, built once per identical
    response through the cache, and the size of the resources they carry."""

    __slots__ = ()
    resources: tuple[Resource, ...]

    def encode(self) -> bytes:
        raise NotImplementedError

    def wire_key(self) -> tuple[object, ...]:
        """What two responses with identical bytes have in common."""
        raise NotImplementedError

    def wire(self, cache: ConfigReader | None = None) -> bytes:
        """The encoded response; identical ones are built once through ``cache``."""
        if cache is None:
            return self.encode()
        return cache.shared_wire(self.wire_key(), self.encode)

    @property
    def size(self) -> int:
        return sum(len(r.body) for r in self.resources)


@dataclass(slots=True)
class StatusBase:
    """What one stream knows of one resource type."""

    started: bool = False
    wildcard: bool = False
    subscribed: frozenset[str] = frozenset()
    version: str = ""  # version of the last response (or the one the client came with)
    nonce: str = ""  # last nonce sent; "" = none yet
    acked: bool = False  # the last response was ACKed
    acked_version: str = ""
    nack: str | None = None  # the proxy's error text for the last response, if it NACKed
    last_push: float | None = None
    retained: dict[str, Resource] = field(default_factory=dict)
    nonce_gen: int = -1
    nonce_seq: int = 0

    @property
    def state(self) -> SyncState:
        if not self.nonce and not self.acked:
            return "NOT_SENT"
        if self.nack is not None:
            return "NACKED"
        return "SYNCED" if self.acked else "STALE"

    @property
    def awaiting(self) -> bool:
        """The last response is neither ACKed nor NACKed yet."""
        return bool(self.nonce) and not self.acked and self.nack is None

    def next_nonce(self, generation: int) -> str:
        """``<type generation>.<n>``: streams in the same position get the same nonce,
        so their responses are byte-identical and encoded once."""
        self.nonce_seq = self.nonce_seq + 1 if self.nonce_gen == generation else 0
        self.nonce_gen = generation
        return _NONCES[generation, self.nonce_seq]


_NONCES: BoundedMemo[tuple[int, int], str] = BoundedMemo(lambda key: f"{key[0]}.{key[1]}")
"""Nonce strings by (generation, n): the streams in one position share one string (each
keeps the last nonce of every type)."""


class _HasNode(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def cluster(self) -> str: ...


class _Request(Protocol):
    @property
    def node(self) -> _HasNode: ...

    @property
    def type_url(self) -> str: ...

    def HasField(self, name: str) -> bool: ...  # noqa: N802 (protobuf's spelling)


S = TypeVar("S", bound=StatusBase)


class StreamBase(Generic[S]):
    """Node identity, scope, per-type status and deferred changes of one stream."""

    __slots__ = (
        "_deferred",
        "_pending",
        "cache",
        "clock",
        "interest_stale",
        "last_outcome",
        "node_cluster",
        "node_id",
        "scope",
        "types",
    )

    def __init__(self, cache: ConfigWatcher, clock: Callable[[], float]) -> None:
        self.cache = cache
        self.clock = clock
        self.node_id = ""
        self.node_cluster = ""
        self.scope: ScopeView | None = None
        self.types: dict[str, S] = {}
        self.last_outcome: RequestOutcome | None = None
        self.interest_stale = True
        """A request may have changed :meth:`interest` since the caller last read it and
        reset this. A Delta ACK that changes no subscription leaves it as it was (most
        requests are such ACKs); every other request sets it."""
        self._pending: Pending = {}  # changes being pushed right now (their old resources)
        self._deferred: Pending = {}  # changes held back until the type's last push is answered

    @property
    def settled(self) -> bool:
        """Nothing held back and every response ACKed: the proxy holds what it should.

        Config convergence is measured from this (``meshd_config_convergence_seconds``);
        a NACKed type is not settled: the proxy does not run the config it was sent.
        """
        if self._deferred:
            return False
        return all(ts.acked or not ts.nonce for ts in self.types.values())

    def _adopt_node(self, req: _Request) -> None:
        """The first request names the node (later ones may repeat it); scope follows it."""
        if self.scope is None or (req.HasField("node") and req.node.id):
            if req.HasField("node"):
                self.node_id, self.node_cluster = req.node.id, req.node.cluster
            self.scope = self.cache.scope(self.node_cluster)

    def _request_type(self, req: _Request, new_status: Callable[[], S]) -> tuple[str, S] | None:
        """How a request starts (all but a Delta ACK's fast path): the node adopted, then
        the request's type and its status, created on first sight; None, with the outcome
        recorded, for a type meshd does not serve."""
        self.interest_stale = True
        self._adopt_node(req)
        t = KNOWN_TYPES.get(req.type_url)
        if t is None:
            self.last_outcome = RequestOutcome(
                "unknown_type", clip(req.type_url, KEPT_CHARS, one_line=False)
            )
            return None
        ts = self.types.get(t)
        if ts is None:
            ts = self.types[t] = new_status()
        return t, ts

    def _realias(self) -> None:
        """After a scope change: the route configurations the client asked for may stand
        for other variants now (a sidecar's upstreams changed). Follow them: the new
        variant goes out under the same name, as a change of the one the client holds."""
        ts = self.types.get(ROUTE)
        scope = self.scope
        if ts is None or not ts.started or not ts.subscribed or scope is None:
            return
        keys = {k: scope.alias(ROUTE, variant_name(k)) for k in ts.subscribed}
        moved = {k: v for k, v in keys.items() if k != v}
        if not moved:
            return
        ts.subscribed = self.cache.intern(keys.values())
        index = self.cache.resources(ROUTE)
        mine = self._deferred.setdefault(ROUTE, {})
        for old_key, new_key in moved.items():
            # What the client holds: the old variant as last sent (a change not sent yet
            # is in the deferred changes with the value before it).
            held = mine.pop(old_key) if old_key in mine else index.get(old_key)
            mine.setdefault(new_key, held)
        self.interest_stale = True

    def _defer(self, pending: Pending) -> None:
        """Merge a cache change into the changes not sent yet."""
        for t, changed in pending.items():
            mine = self._deferred.setdefault(t, {})
            for name, old in changed.items():
                mine.setdefault(name, old)  # the oldest unsent value is what the client holds

    def _held_names(self, t: str, ts: S) -> Iterable[str]:
        """Names of type ``t`` the client holds (listeners and route configurations)."""
        raise NotImplementedError

    def interest(self) -> dict[str, tuple[bool, frozenset[str]]]:
        """Per type asked for: (wildcard, subscribed names), for the cache's change routing."""
        return {t: (ts.wildcard, ts.subscribed) for t, ts in self.types.items() if ts.started}

    def held(self, t: str) -> list[Resource]:
        """The resources of type ``t`` this proxy was last sent, by name (proxy config).

        No per-stream copy exists: what was sent is the cache's current resource, except
        for changes not yet sent (held back or being pushed), whose old value is what the
        proxy has, and clusters retained for make-before-break.
        """
        ts = self.types.get(t)
        if ts is None or not ts.started:
            return []
        index = self.cache.resources(t)
        unsent = {**self._pending.get(t, {}), **self._deferred.get(t, {})}
        out: dict[str, Resource] = {}
        for name in self._held_names(t, ts):
            res = unsent[name] if name in unsent else index.get(name)
            if res is not None:
                out[name] = res
        for name, res in ts.retained.items():
            out.setdefault(name, res)
        return [out[n] for n in sorted(out)]

    def _held_clusters(self) -> set[str]:
        """Clusters named by the route configurations and listeners this stream holds."""
        held: set[str] = set()
        for t in (LISTENER, ROUTE):
            ts = self.types.get(t)
            if ts is None or not ts.started:
                continue
            index = self.cache.resources(t)
            changed = self._pending.get(t, {})
            for name in self._held_names(t, ts):
                # A name changed but not yet re-sent is still held in its old version.
                res = changed[name] if name in changed else index.get(name)
                if res is not None:
                    held.update(res.refs)
        return held
