"""What happens on ADS streams, told to whoever listens: metrics, the log and event bus,
config convergence, heap trimming.

:class:`~xds_server.server.ads.AdsServicer` keeps only the stream plumbing and calls the
hooks of a :class:`StreamObserver` at each step of a stream's life (as go-control-plane's
server calls its ``Callbacks``); the composition root chooses the observers. A hook that
an observer leaves as the protocol's no-op is never called (:class:`StreamHooks`), so an
event costs one call per observer that listens to it, and no hook does per-resource work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from xds_server.cache import ConfigReader, Watcher
from xds_server.events import EventBus
from xds_server.log_limit import LogLimiter, clip
from xds_server.metrics import ConvergenceTracker, Metrics
from xds_server.resources.types import SHORT
from xds_server.server.base import RequestOutcome
from xds_server.server.connections import Connection, XdsResponse, XdsStream

log = logging.getLogger("meshd.ads")


class StreamObserver(Protocol):
    """Hooks called on every ADS stream (SotW and Delta), all on the event loop.

    ``key`` identifies the stream where a hook has no state machine to hand: its cache
    watcher, which is also how the control loop names the streams a change woke.
    Subclass and override the hooks you need; the others cost nothing.
    """

    def opened(self, key: Watcher, generation: int) -> None:
        """The first snapshot is in: the stream will fetch ``generation`` or later."""
        return None

    def request(self, stream: XdsStream, outcome: RequestOutcome | None) -> None:
        """A request was handled; ``outcome`` says what it was (initial, ACK, NACK, stale,
        update, unknown type), None when it was none of them."""
        return None

    def connected(self, conn: Connection) -> None:
        """The stream named its node and is listed as ``conn``."""
        return None

    def pushed(self, stream: XdsStream, resp: XdsResponse, from_change: bool) -> None:
        """``resp`` was written; ``from_change``: a registry change caused it (not a
        request)."""
        return None

    def synced(self, key: Watcher, generation: int) -> None:
        """The proxy holds, ACKed, everything up to cache generation ``generation``."""
        return None

    def closed(self, key: Watcher, stream: XdsStream, conn: Connection | None) -> None:
        """The stream ended (``conn``: its listing, None when it never named its node)."""
        return None


_HOOKS = ("opened", "request", "connected", "pushed", "synced", "closed")


class StreamHooks:
    """The observers' hooks, bound once per event: only those an observer overrides."""

    __slots__ = _HOOKS

    def __init__(self, observers: Iterable[StreamObserver]) -> None:
        observers = tuple(observers)
        for name in _HOOKS:
            noop = getattr(StreamObserver, name)
            bound: tuple[Callable[..., None], ...] = tuple(
                getattr(o, name) for o in observers if getattr(type(o), name, None) is not noop
            )
            setattr(self, name, bound)

    opened: tuple[Callable[[Watcher, int], None], ...]
    request: tuple[Callable[[XdsStream, RequestOutcome | None], None], ...]
    connected: tuple[Callable[[Connection], None], ...]
    pushed: tuple[Callable[[XdsStream, XdsResponse, bool], None], ...]
    synced: tuple[Callable[[Watcher, int], None], ...]
    closed: tuple[Callable[[Watcher, XdsStream, Connection | None], None], ...]


class StreamMetrics(StreamObserver):
    """Requests, NACKs, pushes (count, bytes, latency) and connected proxies."""

    def __init__(self, metrics: Metrics, cache: ConfigReader) -> None:
        self.metrics = metrics
        self.cache = cache
        self._push_children: dict[str, tuple[Any, Any, Any]] = {}
        self._request_children: dict[tuple[str, str], Any] = {}

    def request(self, stream: XdsStream, outcome: RequestOutcome | None) -> None:
        if outcome is None:
            return
        short = SHORT.get(outcome.type_url, "other")
        key = (short, outcome.kind)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.metrics.requests.labels(*key)
        child.inc()
        if outcome.kind == "nack":
            self.metrics.nacks.labels(short).inc()

    def connected(self, conn: Connection) -> None:
        self.metrics.connected_proxies.labels(conn.node_cluster, conn.protocol).inc()

    def pushed(self, stream: XdsStream, resp: XdsResponse, from_change: bool) -> None:
        children = self._push_children.get(resp.type_url)
        if children is None:
            # labels() costs a lock and a dict lookup per call, and a change is pushed to
            # thousands of streams: look the children up once.
            short = SHORT[resp.type_url]
            m = self.metrics
            children = self._push_children[resp.type_url] = (
                m.pushes.labels(short),
                m.push_bytes.labels(short),
                m.push_latency.labels(short),
            )
        pushes, push_bytes, latency = children
        pushes.inc()
        push_bytes.inc(resp.size)
        changed_at = self.cache.changed_at
        if from_change and changed_at:
            latency.observe(time.monotonic() - changed_at)

    def closed(self, key: Watcher, stream: XdsStream, conn: Connection | None) -> None:
        if conn is not None:
            self.metrics.connected_proxies.labels(conn.node_cluster, conn.protocol).dec()


class StreamEvents(StreamObserver):
    """Tells people: connections, NACKs and unknown types in the log, and connections,
    NACKs and pushes on the event bus (the admin API's ``Watch``)."""

    def __init__(self, events: EventBus, on_log_held: Callable[[int], None] | None = None) -> None:
        self.events = events
        self.limiter = LogLimiter(log, on_suppressed=on_log_held)
        """NACK and unknown-type lines are the client's to repeat: a few per stream and
        window, then a count of those held back."""

    def request(self, stream: XdsStream, outcome: RequestOutcome | None) -> None:
        if outcome is None:
            return
        if outcome.kind == "nack":
            short = SHORT.get(outcome.type_url, "other")
            self.limiter.warning(
                ("nack", id(stream)),
                "NACK from node=%s type=%s: %s",
                clip(stream.node_id),
                short,
                clip(outcome.message),
            )
            ts = stream.types.get(outcome.type_url)
            self.events.publish(
                "nack",
                node_id=stream.node_id,
                resource_type=short,
                version=ts.version if ts is not None else "",
                message=outcome.message,
            )
        elif outcome.kind == "unknown_type":
            self.limiter.warning(
                ("unknown_type", id(stream)),
                "node=%s asked for unknown type %s",
                clip(stream.node_id),
                clip(outcome.type_url),
            )

    def connected(self, conn: Connection) -> None:
        stream = conn.stream
        log.info(
            "proxy connected: node=%s cluster=%s protocol=%s peer=%s",
            clip(stream.node_id),
            clip(stream.node_cluster),
            stream.protocol,
            conn.peer,
        )
        self.events.publish(
            "proxy_connected",
            node_id=stream.node_id,
            message=f"cluster={stream.node_cluster} protocol={stream.protocol} peer={conn.peer}",
        )

    def pushed(self, stream: XdsStream, resp: XdsResponse, from_change: bool) -> None:
        if self.events.active:
            self.events.publish(
                "push",
                node_id=stream.node_id,
                resource_type=SHORT[resp.type_url],
                version=resp.version,
                message=f"{len(resp.resources)} resources",
            )

    def closed(self, key: Watcher, stream: XdsStream, conn: Connection | None) -> None:
        if conn is not None:
            log.info("proxy disconnected: node=%s", clip(stream.node_id))
            self.events.publish("proxy_disconnected", node_id=stream.node_id)


class StreamConvergence(StreamObserver):
    """Feeds config convergence (``meshd_config_convergence_seconds``): when each stream
    opens, is in sync with a cache generation, and ends."""

    def __init__(self, tracker: ConvergenceTracker) -> None:
        self.tracker = tracker

    def opened(self, key: Watcher, generation: int) -> None:
        self.tracker.opened(key, generation)

    def synced(self, key: Watcher, generation: int) -> None:
        self.tracker.synced(key, generation)

    def closed(self, key: Watcher, stream: XdsStream, conn: Connection | None) -> None:
        self.tracker.gone(key)


class StreamActivity(StreamObserver):
    """Calls ``poke`` for each request and push, and ``ended`` (default: ``poke``) for each
    closed stream: meshd trims its heap after a burst of them (the buffers of a full config
    sent to each proxy are freed by then)."""

    def __init__(self, poke: Callable[[], None], ended: Callable[[], None] | None = None) -> None:
        self.poke = poke
        self.ended = ended or poke

    def request(self, stream: XdsStream, outcome: RequestOutcome | None) -> None:
        self.poke()

    def pushed(self, stream: XdsStream, resp: XdsResponse, from_change: bool) -> None:
        self.poke()

    def closed(self, key: Watcher, stream: XdsStream, conn: Connection | None) -> None:
        self.ended()


class StreamPresence(StreamObserver):
    """Tells which node clusters have a proxy connected: ``joined(cluster)`` when a stream
    names its node, ``left(cluster)`` when it ends (workload certificates are issued for
    the identities in use)."""

    def __init__(self, joined: Callable[[str], None], left: Callable[[str], None]) -> None:
        self.joined = joined
        self.left = left

    def connected(self, conn: Connection) -> None:
        self.joined(conn.node_cluster)

    def closed(self, key: Watcher, stream: XdsStream, conn: Connection | None) -> None:
        if conn is not None:
            self.left(conn.node_cluster)
