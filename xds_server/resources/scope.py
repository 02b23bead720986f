"""Node scopes as data: which resources a node gets when it subscribes by wildcard.

The rule that decides it belongs to translation (it follows from what the registry's
listeners mean); the cache only applies it. They meet here, below both: translation
hands the cache a :data:`ScopeRule` whenever the rule changes, and the cache asks it
once per node cluster and memoizes the :class:`Selection`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, eq=False)
class Selection:
    """What a wildcard subscriber in one node scope gets, per type URL: every resource of
    the types in ``every``, else the names ``names`` gives for the type (none when absent)."""

    names: Mapping[str, frozenset[str]]
    every: frozenset[str] = _NONE

    def key(self) -> Hashable:
        """Equal for equal selections: node clusters with the same one share a scope."""
        return (frozenset(self.names.items()), self.every)


NO_SELECTION = Selection({})
"""A scope that gets nothing by wildcard (before any rule is known)."""

ScopeRule = Callable[[str], Selection]
"""Node cluster -> the selection of the nodes whose ``cluster`` it is."""


def no_scopes(node_cluster: str) -> Selection:
    """The rule before translation gave one: no node gets anything by wildcard."""
    return NO_SELECTION
