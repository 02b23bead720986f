"""Mesh events for live monitoring (admin ``Watch``): registry changes, pushes, NACKs,
proxies connecting and leaving, health transitions.

Publishing costs one attribute check when nobody watches, so the push path can call it
unconditionally. Each watcher has a bounded queue: a watcher that falls behind by more
than ``queue_size`` events is cut off (its iterator raises :class:`WatcherOverflow`)
rather than slowing meshd or growing without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

EventType = Literal[
    "registry_put",
    "registry_delete",
    "registry_rejected",
    "push",
    "nack",
    "proxy_connected",
    "proxy_disconnected",
    "health",
]


@dataclass(frozen=True, slots=True)
class MeshEvent:
    """One event. Fields that do not apply to the type are empty."""

    type: EventType
    time: float
    key: str = ""
    node_id: str = ""
    resource_type: str = ""
    version: str = ""
    message: str = ""
    revision: int = 0


class WatcherOverflow(Exception):
    """The watcher fell more than its queue size behind and was dropped."""


class Subscription:
    """A registered watcher: iterate it for events; :meth:`close` when done."""

    __slots__ = ("_bus", "overflowed", "queue", "types")

    def __init__(self, bus: EventBus, types: frozenset[EventType], size: int) -> None:
        self._bus = bus
        self.types = types
        self.queue: asyncio.Queue[MeshEvent] = asyncio.Queue(size)
        self.overflowed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> MeshEvent:
        if self.overflowed and self.queue.empty():
            self.close()
            raise WatcherOverflow(
                f"watcher fell more than {self.queue.maxsize} events behind; reconnect"
            )
        return await self.queue.get()

    def close(self) -> None:
        self._bus._subs.discard(self)


class EventBus:
    """Fan-out of :class:`MeshEvent` to any number of watchers."""

    def __init__(self, clock: Callable[[], float] = time.time, queue_size: int = 10_000) -> None:
        self.clock = clock
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()

    @property
    def active(self) -> bool:
        """Somebody watches: worth building events."""
        return bool(self._subs)

    def publish(self, kind: EventType, **fields: str | int) -> None:
        """Send an event to every watcher that wants its type (no-op without watchers)."""
        if not self._subs:
            return
        event = MeshEvent(kind, self.clock(), **fields)  # type: ignore[arg-type]
        for sub in self._subs:
            if sub.overflowed or (sub.types and kind not in sub.types):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.overflowed = True  # the reader drains what it has, then stops

    def subscribe(self, types: Collection[EventType] = ()) -> Subscription:
        """Register a watcher now (events from this moment on); close it when done."""
        sub = Subscription(self, frozenset(types), self.queue_size)
        self._subs.add(sub)
        return sub

    @property
    def watchers(self) -> int:
        return len(self._subs)
