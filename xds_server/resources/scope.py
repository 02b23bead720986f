"""Node scopes as data: which resources a node gets when it subscribes by wildcard.

The rule that decides it belongs to translation (it follows from what the registry's
listeners mean); the cache only applies it. They meet here, below both: translation
hands the cache a :data:`ScopeRule` whenever the rule changes, and the cache asks it
once per node cluster and memoizes the :class:`Selection`.

Two name conventions are shared by both sides:

- **Private names** (:data:`PRIVATE_PREFIX`, a sidecar's own inbound Listener, Cluster and
  RouteConfiguration): a selection that takes a type whole (``every``) does not reach them;
  only a selection that names one gets it, so no proxy holds another service's inbound
  resources.
- **Variants** (:func:`variant_key`): one resource served under one name by different
  contents, per scope (a listener's RouteConfiguration, cut to what a sidecar declared it
  calls). The cache keeps each variant under an index key of its own,
  ``<name>~<variant>``; a selection's ``aliases`` say which key a name a client asks for
  stands for in that scope, and the resource keeps its name on the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from xds_server.resources.types import ROUTE

_NONE: frozenset[str] = frozenset()

PRIVATE_PREFIX = "inbound|"
"""Names that a selection taking its type whole does not reach (see the module doc)."""

VARIANT_SEP = "~"
"""Between a variant's name and its variant id in its index key (no registry listener, no
service host and no inbound name holds it)."""


ALIASED_TYPES = frozenset({ROUTE})
"""Types a selection may serve variants of (``aliases``): route configurations."""


def is_private(name: str) -> bool:
    """Whether ``name`` is reached only by a selection that names it."""
    return name.startswith(PRIVATE_PREFIX)


def variant_key(name: str, variant: str) -> str:
    """The index key of variant ``variant`` of the resource ``name``."""
    return f"{name}{VARIANT_SEP}{variant}"


def variant_name(key: str) -> str:
    """The name on the wire of the resource at index key ``key`` (a variant's or not)."""
    return key.partition(VARIANT_SEP)[0]


@dataclass(frozen=True, slots=True, eq=False)
class Selection:
    """What a wildcard subscriber in one node scope gets, per type URL: every resource of
    the types in ``every`` but the private ones (:func:`is_private`), plus the names
    ``names`` gives for the type (none when absent). ``aliases``: per type URL, the index
    key a name asked for stands for in this scope (a variant: :func:`variant_key`)."""

    names: Mapping[str, frozenset[str]]
    every: frozenset[str] = _NONE
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def key(self) -> Hashable:
        """Equal for equal selections: node clusters with the same one share a scope."""
        aliases = frozenset((t, frozenset(m.items())) for t, m in self.aliases.items())
        return (frozenset(self.names.items()), self.every, aliases)

    def covers(self, type_url: str, name: str) -> bool:
        """Whether a resource ``name`` of ``type_url`` is in this scope when it exists."""
        if type_url in self.every and not is_private(name):
            return True
        return name in self.names.get(type_url, _NONE)

    def alias(self, type_url: str, name: str) -> str:
        """The index key that the name ``name`` a client asks for stands for here."""
        aliases = self.aliases.get(type_url)
        if aliases is None:
            return name
        return aliases.get(name, name)


NO_SELECTION = Selection({})
"""A scope that gets nothing by wildcard (before any rule is known)."""

ScopeRule = Callable[[str], Selection]
"""Node cluster -> the selection of the nodes whose ``cluster`` it is."""


def no_scopes(node_cluster: str) -> Selection:
    """The rule before translation gave one: no node gets anything by wildcard."""
    return NO_SELECTION
