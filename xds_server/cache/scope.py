"""A node scope in the cache: the selection a scope rule gave, over the live index."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xds_server.cache.contract import FullSet
from xds_server.resources.resource import set_version
from xds_server.resources.scope import Selection, is_private

if TYPE_CHECKING:
    from xds_server.cache.snapshot import ConfigCache

_NONE: frozenset[str] = frozenset()


class _Public(Collection[str]):
    """Every name of one type in the index but the private ones this scope does not name:
    a view (membership O(1)), never a copy of the index."""

    __slots__ = ("_cache", "_own", "_type")

    def __init__(self, cache: ConfigCache, type_url: str, own: frozenset[str]) -> None:
        self._cache, self._type, self._own = cache, type_url, own

    def __contains__(self, name: object) -> bool:
        index = self._cache.index[self._type]
        if name not in index:
            return False
        return not is_private(name) or name in self._own  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        own = self._own
        for name in self._cache.index[self._type]:
            if not is_private(name) or name in own:
                yield name

    def __len__(self) -> int:
        index = self._cache.index[self._type]
        held = sum(1 for n in self._own if n in index)
        return len(index) - self._cache.private_counts[self._type] + held


@dataclass(eq=False)
class Scope:
    """The wildcard selection of one node scope, shared by the node clusters that have it.

    Versions of types the selection takes whole are the cache's running XORs (less its
    private names', plus this scope's own); the others are XORs over the selected names.
    Complete sets are memoized per type generation.
    """

    selection: Selection
    cache: ConfigCache
    _full: dict[str, tuple[int, FullSet]] = field(default_factory=dict)
    _own: dict[str, frozenset[str]] = field(default_factory=dict)

    def _own_private(self, type_url: str) -> frozenset[str]:
        """The private names this scope's selection names for ``type_url`` (its own)."""
        own = self._own.get(type_url)
        if own is None:
            names = self.selection.names.get(type_url, _NONE)
            own = self._own[type_url] = frozenset(n for n in names if is_private(n))
        return own

    def names(self, type_url: str) -> Collection[str]:
        """The names a wildcard subscriber of ``type_url`` in this scope gets."""
        if type_url in self.selection.every:
            if not self.cache.private_counts[type_url]:
                return self.cache.index[type_url].keys()
            return _Public(self.cache, type_url, self._own_private(type_url))
        return self.selection.names.get(type_url, _NONE)

    def covers(self, type_url: str, name: str) -> bool:
        """Whether ``name`` is in this scope when it exists (whether a client holding the
        scope by wildcard holds it, or held it before it was removed)."""
        return self.selection.covers(type_url, name)

    def alias(self, type_url: str, name: str) -> str:
        """The index key a client of this scope means by ``name`` (a variant's, or itself)."""
        return self.selection.alias(type_url, name)

    def xor(self, type_url: str) -> int:
        """XOR of the digests of those resources."""
        if type_url in self.selection.every:
            xor = self.cache.xors[type_url] ^ self.cache.private_xors[type_url]
            own = self._own_private(type_url)
            return xor ^ self.cache.xor_of(type_url, own) if own else xor
        return self.cache.xor_of(type_url, self.names(type_url))

    def version(self, type_url: str) -> str:
        """The set version of those resources."""
        return set_version(self.xor(type_url))

    def full(self, type_url: str) -> FullSet:
        """The complete set of ``type_url`` here: shared until the type changes."""
        gen = self.cache.type_generation[type_url]
        memo = self._full.get(type_url)
        if memo is not None and memo[0] == gen:
            return memo[1]
        index = self.cache.index[type_url]
        names = sorted(n for n in self.names(type_url) if n in index)
        result = FullSet(self.xor(type_url), tuple(index[n] for n in names), frozenset(names))
        self._full[type_url] = (gen, result)
        return result
