"""A node scope in the cache: the selection a scope rule gave, over the live index."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xds_server.cache.contract import FullSet
from xds_server.resources.resource import set_version
from xds_server.resources.scope import Selection

if TYPE_CHECKING:
    from xds_server.cache.snapshot import ConfigCache

_NONE: frozenset[str] = frozenset()


@dataclass(eq=False)
class Scope:
    """The wildcard selection of one node scope, shared by the node clusters that have it.

    Versions of types the selection takes whole are the cache's running XORs; the others
    are XORs over the selected names. Complete sets are memoized per type generation.
    """

    selection: Selection
    cache: ConfigCache
    _full: dict[str, tuple[int, FullSet]] = field(default_factory=dict)

    def names(self, type_url: str) -> Collection[str]:
        """The names a wildcard subscriber of ``type_url`` in this scope gets."""
        if type_url in self.selection.every:
            return self.cache.index[type_url].keys()
        return self.selection.names.get(type_url, _NONE)

    def xor(self, type_url: str) -> int:
        """XOR of the digests of those resources."""
        if type_url in self.selection.every:
            return self.cache.xors[type_url]
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
