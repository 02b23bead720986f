"""The registry as its readers see it: in force, read-only.

Only ingest holds the mutable :class:`~xds_server.ingest.state.RegistryState` (the
controller folds updates into it). Translation, the admin API, health and topology read
it through :class:`RegistryView`, which names what they may read: the mappings are the
state's own (no copy is made per batch; for a large registry that would cost more than
the change), typed read-only so that no reader writes through them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from xds_server.model import Endpoint, Listener, Problem, Route, Service, ServiceRef

if TYPE_CHECKING:
    from xds_server.ingest.refs import Dependent

__all__ = ["RegistryView"]


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
