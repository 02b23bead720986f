"""Health transitions as ``health`` events on the :class:`~xds_server.events.EventBus`
(admin ``Watch``, ``meshctl watch``).

:class:`HealthTransitions` sits on the HDS side's change callback: it receives what
every proxy is sent in EDS (endpoint id -> Envoy HealthStatus, UNKNOWN left out) for the
services whose verdicts changed, diffs that with what it saw last, and publishes

- one event per endpoint whose verdict changed (``HEALTHY -> UNHEALTHY``), keyed by the
  endpoint's registry key so that Watch filters it by namespace like registry events;
- one event when every probed endpoint of a service turns UNHEALTHY (Envoy's panic
  threshold then sends to all of them) and one when that ends, keyed by the service's key.

It keeps its own copy of the verdicts even when nobody watches, so a watcher that joins
later is told about changes, not about the state it missed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from xds_server.events import EventBus
from xds_server.model import ServiceRef
from xds_server.model.names import endpoint_key, service_key
from xds_server.model.view import RegistryView

__all__ = ["HealthTransitions"]

_NAMES = {1: "HEALTHY", 2: "UNHEALTHY", 3: "DRAINING"}
"""Envoy ``config.core.v3.HealthStatus`` in EDS -> the aggregate's name (absent: UNKNOWN)."""


def _name(status: int | None) -> str:
    return _NAMES.get(status or 0, "UNKNOWN")


class HealthTransitions:
    """Publishes verdict changes and panic starts / ends as ``health`` events."""

    def __init__(self, events: EventBus, prefix: str, state: Callable[[], RegistryView]) -> None:
        """``prefix`` is the registry prefix (events carry registry keys); ``state`` gives
        the registry state in force (to tell a verdict lost from an endpoint removed)."""
        self.events = events
        self.prefix = prefix
        self.state = state
        self._last: dict[ServiceRef, dict[str, int]] = {}
        self._panic: set[ServiceRef] = set()

    def changed(
        self,
        health: Mapping[ServiceRef, Mapping[str, int]],
        refs: Collection[ServiceRef],
        panicking: Collection[ServiceRef],
    ) -> None:
        """Verdicts of ``refs`` changed; ``health`` is every HDS service's EDS health and
        ``panicking`` the services whose probed endpoints are all UNHEALTHY."""
        state = self.state()
        for ref in sorted(refs, key=lambda r: (r.namespace, r.name)):
            new = dict(health.get(ref, {}))
            old = self._last.get(ref, {})
            endpoints = state.endpoints.get(ref, {})
            for ep_id in sorted(old.keys() | new.keys()):
                before, after = _name(old.get(ep_id)), _name(new.get(ep_id))
                if before == after:
                    continue
                ep = endpoints.get(ep_id)
                if ep is None or ep.draining:
                    continue  # removed or drained: a registry event, not a verdict
                healthy = sum(1 for s in new.values() if s == 1)
                self.events.publish(
                    "health",
                    key=endpoint_key(self.prefix, ref, ep_id),
                    message=(
                        f"{ref}/{ep_id} {before} -> {after} "
                        f"({ref}: {healthy}/{len(endpoints)} healthy)"
                    ),
                )
            if new:
                self._last[ref] = new
            else:
                self._last.pop(ref, None)
            panic = ref in panicking
            if panic and ref not in self._panic:
                self._panic.add(ref)
                self.events.publish(
                    "health",
                    key=service_key(self.prefix, ref),
                    message=(
                        f"{ref}: every endpoint is UNHEALTHY; Envoy's panic threshold keeps "
                        "sending traffic to all of them"
                    ),
                )
            elif not panic and ref in self._panic:
                self._panic.discard(ref)
                self.events.publish(
                    "health",
                    key=service_key(self.prefix, ref),
                    message=f"{ref}: no longer all UNHEALTHY (panic over)",
                )
        # Services that left the registry leave no state behind.
        for ref in [r for r in self._last if r not in state.services]:
            del self._last[ref]
        self._panic &= set(state.services)
