"""What the servers may ask of the cache, and what the control loop gives it.

The cache sits between translation and the servers the way go-control-plane's cache
sits behind its ``ConfigWatcher``: streams, CSDS, the admin proxy views and the
servicers read and follow it only through :class:`ConfigWatcher` (reads, scopes,
watchers), and the control loop writes to it only through :class:`ConfigSink`.
:class:`~xds_server.cache.snapshot.ConfigCache` implements both; nothing outside
``cache/`` reaches into how it indexes, scopes or wakes.

Reads hand out the cache's own mappings, typed read-only: a stream looks up many names
per response, and a copy or a call per name would cost the push path.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from xds_server.cache.watch import Interest, Pending, Watcher
from xds_server.resources.resource import Resource, set_version
from xds_server.resources.scope import ScopeRule
from xds_server.resources.types import CLUSTER, LISTENER

__all__ = [
    "WILDCARD_TYPES",
    "ConfigReader",
    "ConfigSink",
    "ConfigWatcher",
    "FullSet",
    "Interest",
    "Pending",
    "ScopeView",
    "TranslatedChanges",
    "Watcher",
]

WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
"""Types a client may subscribe to by wildcard (everything of the type in its scope)."""


@dataclass(frozen=True, slots=True)
class FullSet:
    """The complete set of one type in a scope, as one generation of the cache has it."""

    xor: int
    resources: tuple[Resource, ...]  # sorted by name
    names: frozenset[str]

    @property
    def version(self) -> str:
        return set_version(self.xor)


class ScopeView(Protocol):
    """The wildcard selection of one node scope, shared by every node in it."""

    def names(self, type_url: str) -> Collection[str]:
        """The names a wildcard subscriber of ``type_url`` in this scope gets."""
        ...

    def covers(self, type_url: str, name: str) -> bool:
        """Whether ``name`` is in this scope when it exists."""
        ...

    def alias(self, type_url: str, name: str) -> str:
        """The index key a client of this scope means by ``name`` (a variant's: see
        ``resources/scope.py``), or ``name`` itself."""
        ...

    def xor(self, type_url: str) -> int:
        """XOR of the digests of those resources (see ``set_version``)."""
        ...

    def version(self, type_url: str) -> str:
        """The set version of those resources."""
        ...

    def full(self, type_url: str) -> FullSet:
        """The complete set of ``type_url`` here: shared until the type changes."""
        ...


class ConfigReader(Protocol):
    """Reads of what is served: resources, set versions, scopes and shared memos."""

    @property
    def generation(self) -> int:
        """Counts applied changes: every change up to it is in the watchers' inboxes."""
        ...

    @property
    def type_generation(self) -> Mapping[str, int]:
        """Per type URL, counts the changes that touched the type."""
        ...

    @property
    def changed_at(self) -> float:
        """``time.monotonic()`` when the change being pushed reached meshd (0: unknown)."""
        ...

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        """Every resource of ``type_url`` served now, by name (read-only, not a copy)."""
        ...

    def get(self, type_url: str, name: str) -> Resource | None:
        """One resource served now, if it exists."""
        ...

    def count(self, type_url: str) -> int:
        """How many resources of ``type_url`` are served."""
        ...

    def xor_of(self, type_url: str, names: Iterable[str]) -> int:
        """XOR of the digests of the existing resources among ``names``."""
        ...

    def subscription_xor(self, type_url: str, names: frozenset[str]) -> int:
        """:meth:`xor_of` for an interned subscription, memoized across changes."""
        ...

    def scope(self, node_cluster: str) -> ScopeView:
        """The scope of nodes whose ``cluster`` is ``node_cluster`` (memoized, shared)."""
        ...

    def intern(self, names: Iterable[str]) -> frozenset[str]:
        """One shared frozenset per distinct subscription."""
        ...

    def shared_wire(self, key: tuple[object, ...], build: Callable[[], bytes]) -> bytes:
        """Encoded responses that many streams get identically, built once per generation."""
        ...


class ConfigWatcher(ConfigReader, Protocol):
    """Reads plus change notification: what an xDS stream needs of the cache."""

    def watch(self) -> Watcher:
        """A new inbox that hears every change until :meth:`set_interest` narrows it."""
        ...

    def unwatch(self, w: Watcher) -> None:
        """``w`` hears nothing more."""
        ...

    def set_interest(self, w: Watcher, interest: Interest, node_cluster: str = "") -> None:
        """From now on ``w`` hears only changes to what ``interest`` names (its wildcard
        types: only changes within the scope of ``node_cluster``)."""
        ...

    async def wait_ready(self) -> None:
        """Return once the first snapshot is in (at once after that)."""
        ...


class TranslatedChanges(Protocol):
    """One translation's output as the cache takes it (``translate.Delta`` is one)."""

    @property
    def changed(self) -> Mapping[str, Mapping[str, Resource | None]]:
        """Type URL -> name -> new resource, or None when removed."""
        ...

    @property
    def scopes(self) -> ScopeRule | None:
        """The scope rule from now on, or None when it did not change."""
        ...

    @property
    def rescoped(self) -> Collection[str] | None:
        """With a new rule: the node clusters whose selection it may change (None: any).
        The others keep their scope, and their streams are not woken for it."""
        ...


class ConfigSink(Protocol):
    """What the control loop does with the cache: apply translations, read the outcome."""

    @property
    def generation(self) -> int: ...

    @property
    def last_woken(self) -> Collection[Watcher]:
        """Watchers the last :meth:`apply` woke (valid until the next one)."""
        ...

    def apply(self, changes: TranslatedChanges, revision: int, observed_at: float = 0.0) -> None:
        """Install translated changes and wake the watchers they concern."""
        ...

    def served(self) -> Mapping[str, Mapping[str, Resource]]:
        """Type URL -> name -> resource served now: what translation computes its
        changes against (read-only, not a copy)."""
        ...

    def count(self, type_url: str) -> int: ...

    async def wait_ready(self) -> None: ...
