"""The config cache: the global resource index, node scopes, and change fan-out.

Resources live once in the index (serialized once, shared by every stream).
A :class:`Scope` is what a node whose ``cluster`` matches a set of listeners
gets by wildcard: those listeners, their route configurations, and the
clusters (with endpoints) they need. Scopes are memoized per node cluster and
shared by every node with the same listener set, and their type versions are
XORs of per-resource digests so they update in O(changed).

Streams register a :class:`Watcher`; each change appends the changed names to
every watcher and wakes it. A slow stream only accumulates names; it never
holds up the others (backpressure stays per stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from xds_server.model import Listener
from xds_server.translate.names import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_ORDER, cluster_name
from xds_server.translate.resource import Resource, set_version
from xds_server.translate.translator import Delta

WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


@dataclass
class Scope:
    """The wildcard selection of one node scope (a set of listener names)."""

    listeners: frozenset[str]
    http: frozenset[str]
    tcp_clusters: frozenset[str]
    cache: ConfigCache

    @property
    def all_clusters(self) -> bool:
        # Every HTTP listener routes every service's default host, so it needs every cluster.
        return bool(self.http)

    def names(self, type_url: str) -> Collection[str]:
        """The names a wildcard subscriber of ``type_url`` in this scope gets."""
        if type_url == LISTENER:
            return self.listeners
        if type_url == ROUTE:
            return self.http
        if self.all_clusters:
            return self.cache.index[type_url].keys()
        return self.tcp_clusters

    def xor(self, type_url: str) -> int:
        if type_url in (CLUSTER, ENDPOINT) and self.all_clusters:
            return self.cache.xors[type_url]
        index = self.cache.index[type_url]
        acc = 0
        for name in self.names(type_url):
            res = index.get(name)
            if res is not None:
                acc ^= res.digest
        return acc

    def version(self, type_url: str) -> str:
        return set_version(self.xor(type_url))


@dataclass(eq=False)
class Watcher:
    """A stream's inbox: names changed per type since it last looked, and a wake-up event."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    pending: dict[str, set[str]] = field(default_factory=dict)
    scopes_changed: bool = False

    def take(self) -> tuple[dict[str, set[str]], bool]:
        pending, scopes = self.pending, self.scopes_changed
        self.pending, self.scopes_changed = {}, False
        self.event.clear()
        return pending, scopes


class ConfigCache:
    """Global index of translated resources plus scopes and watchers."""

    def __init__(self) -> None:
        self.index: dict[str, dict[str, Resource]] = {t: {} for t in TYPE_ORDER}
        self.xors: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)
        self.generation = 0
        self.revision = 0
        self.changed_at = 0.0  # time.monotonic() when the change being pushed reached meshd
        self.ready = asyncio.Event()
        self._listeners: Mapping[str, Listener] = {}
        self._scopes: dict[str, Scope] = {}
        self._scope_by_set: dict[frozenset[str], Scope] = {}
        self._watchers: set[Watcher] = set()

    # -- writes -----------------------------------------------------------------------

    def apply(
        self,
        delta: Delta,
        listeners: Mapping[str, Listener],
        revision: int,
        observed_at: float = 0.0,
    ) -> None:
        """Install translated changes and wake every watcher."""
        self.revision = revision
        self.changed_at = observed_at
        for type_url, changed in delta.changed.items():
            index = self.index[type_url]
            for name, res in changed.items():
                old = index.pop(name, None)
                if old is not None:
                    self.xors[type_url] ^= old.digest
                if res is not None:
                    index[name] = res
                    self.xors[type_url] ^= res.digest
        if delta.listeners_changed or not self._listeners:
            self._listeners = dict(listeners)
            self._scopes.clear()
            self._scope_by_set.clear()
        self.generation += 1
        self.ready.set()
        if not delta and not delta.listeners_changed:
            return
        for w in self._watchers:
            for type_url, changed in delta.changed.items():
                if changed:
                    w.pending.setdefault(type_url, set()).update(changed)
            if delta.listeners_changed:
                w.scopes_changed = True
            w.event.set()

    # -- reads ------------------------------------------------------------------------

    def scope(self, node_cluster: str) -> Scope:
        """The scope of nodes whose ``cluster`` is ``node_cluster`` (memoized, shared)."""
        scope = self._scopes.get(node_cluster)
        if scope is not None:
            return scope
        mine = [lst for lst in self._listeners.values() if lst.serves(node_cluster)]
        key = frozenset(lst.name for lst in mine)
        scope = self._scope_by_set.get(key)
        if scope is None:
            scope = Scope(
                listeners=key,
                http=frozenset(lst.name for lst in mine if lst.protocol == "http"),
                tcp_clusters=frozenset(
                    cluster_name(lst.service) for lst in mine if lst.service is not None
                ),
                cache=self,
            )
            self._scope_by_set[key] = scope
        self._scopes[node_cluster] = scope
        return scope

    def get(self, type_url: str, name: str) -> Resource | None:
        return self.index[type_url].get(name)

    def xor_of(self, type_url: str, names: Iterable[str]) -> int:
        index = self.index[type_url]
        acc = 0
        for name in names:
            res = index.get(name)
            if res is not None:
                acc ^= res.digest
        return acc

    def watch(self) -> Watcher:
        w = Watcher()
        self._watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        self._watchers.discard(w)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)
