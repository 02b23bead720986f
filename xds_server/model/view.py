"""The registry as its readers see it: in force, read-only, and what one update changed.

Only ingest holds the mutable :class:`~xds_server.ingest.state.RegistryState` (the
controller folds updates into it). Translation, the admin API, health and topology read
it through :class:`RegistryView`, which names what they may read: the mappings are the
state's own (no copy is made per batch; for a large registry that would cost more than
the change), typed read-only so that no reader writes through them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from xds_server.model import Endpoint, Listener, Namespace, Problem, Route, Service, ServiceRef
from xds_server.model.policy import Policy
from xds_server.model.secret import Secret

__all__ = ["ChangeSet", "Dependent", "RegistryView"]


class Dependent(NamedTuple):
    """An entry in force that a change to a service would break, and how."""

    key: str
    field: str
    reason: str


@dataclass
class ChangeSet:
    """What one update changed in force. Empty sets mean nothing to push."""

    revision: int = 0
    services: set[ServiceRef] = field(default_factory=set)
    endpoints: set[ServiceRef] = field(default_factory=set)
    """Services whose endpoints in force changed."""
    endpoint_ids: dict[ServiceRef, set[str]] = field(default_factory=dict, compare=False)
    """For a service of :attr:`endpoints`: the ids of its endpoints that changed in force
    (added, modified or removed). A service of :attr:`endpoints` not named here may have had
    any of them change (translation then rebuilds all of its assignments). A detail of
    :attr:`endpoints`, left out of comparisons."""
    routes: set[str] = field(default_factory=set)
    listeners: set[str] = field(default_factory=set)
    namespaces: set[str] = field(default_factory=set)
    """Namespaces whose entry changed in force (their services' mTLS default may have)."""
    policies: set[str] = field(default_factory=set)
    """Namespaces where a policy changed in force (their services' authorization did)."""
    secrets: set[str] = field(default_factory=set)
    """Secrets (``ns/name``) that changed in force (their SDS Secret did)."""
    problems_set: dict[str, Problem] = field(default_factory=dict)
    problems_cleared: set[str] = field(default_factory=set)

    @property
    def config_changed(self) -> bool:
        return bool(
            self.services
            or self.endpoints
            or self.routes
            or self.listeners
            or self.namespaces
            or self.policies
            or self.secrets
        )

    def merge(self, later: ChangeSet) -> None:
        """Fold a later ChangeSet into this one (bursts are translated once)."""
        self.revision = max(self.revision, later.revision)
        self.services |= later.services
        self._merge_endpoint_ids(later)
        self.endpoints |= later.endpoints
        self.routes |= later.routes
        self.listeners |= later.listeners
        self.namespaces |= later.namespaces
        self.policies |= later.policies
        self.secrets |= later.secrets
        for key, problem in later.problems_set.items():
            self.problems_set[key] = problem
            self.problems_cleared.discard(key)
        for key in later.problems_cleared:
            self.problems_set.pop(key, None)
            self.problems_cleared.add(key)

    def changed_endpoint_ids(self, ref: ServiceRef) -> set[str] | None:
        """The ids of service ``ref``'s endpoints that changed (None: any may have)."""
        return self.endpoint_ids.get(ref) if ref in self.endpoints else None

    def _merge_endpoint_ids(self, later: ChangeSet) -> None:
        """Fold ``later``'s endpoint ids in (before its services join :attr:`endpoints`): a
        service either side says "any" of stays "any"."""
        mine = self.endpoint_ids
        for ref in later.endpoints:
            ids = mine.get(ref)
            if ref in self.endpoints and ids is None:
                continue  # any already
            theirs = later.endpoint_ids.get(ref)
            if theirs is None:
                mine.pop(ref, None)
            elif ids is None:
                mine[ref] = set(theirs)
            else:
                ids |= theirs


class RegistryView(Protocol):
    """What is in force at :attr:`revision`, and what is rejected."""

    @property
    def prefix(self) -> str:
        """The registry's key prefix (``/mesh/``)."""
        ...

    @property
    def revision(self) -> int:
        """The registry revision folded so far."""
        ...

    @property
    def services(self) -> Mapping[ServiceRef, Service]:
        """Services in force (some may be held for their dependents: see
        :attr:`registered_services`)."""
        ...

    @property
    def endpoints(self) -> Mapping[ServiceRef, Mapping[str, Endpoint]]:
        """Per service, endpoint id -> endpoint in force."""
        ...

    @property
    def routes(self) -> Mapping[str, Route]:
        """Route key -> route in force."""
        ...

    @property
    def listeners(self) -> Mapping[str, Listener]:
        """Listener name -> listener in force."""
        ...

    @property
    def namespaces(self) -> Mapping[str, Namespace]:
        """Namespace name -> its entry in force (most namespaces have none)."""
        ...

    @property
    def policies(self) -> Mapping[str, Policy]:
        """Policy key -> authorization policy in force."""
        ...

    @property
    def secrets(self) -> Mapping[str, Secret]:
        """Secret ``ns/name`` -> secret in force."""
        ...

    @property
    def problems(self) -> Mapping[str, Problem]:
        """Registry key -> why it is rejected (the state's own reasons)."""
        ...

    @property
    def registered_services(self) -> Mapping[ServiceRef, Service]:
        """Services as the registry holds them (new values are judged against these)."""
        ...

    def dependents(self, ref: ServiceRef, new: Service | None) -> list[Dependent]:
        """Routes and listeners in force that service ``ref`` becoming ``new`` would break."""
        ...

    def owner_of(self, route: Route) -> Route | None:
        """The older route in force of another namespace that holds one of ``route``'s
        host and match on a listener both attach to (tenancy), if any."""
        ...
