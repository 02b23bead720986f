"""A stream's inbox in the cache: the names changed per type since it last looked, and a
wake-up. The cache fills it (:meth:`ConfigCache.apply`); the stream's writer drains it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from xds_server.resources.resource import Resource

Pending = dict[str, dict[str, Resource | None]]
"""Type URL -> changed name -> the resource before the change (None: it did not exist)."""

Interest = Mapping[str, tuple[bool, frozenset[str]]]
"""What a stream listens to, per type URL: (wildcard, explicitly subscribed names)."""


class Wakeup:
    """An :class:`asyncio.Event` for one waiter (a stream's writer), far smaller than an
    Event (which holds a deque of waiters): thousands of streams each have one."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        """Return once set (at once if it is)."""
        if self._set:
            return
        if self._waiter is not None:
            raise RuntimeError("Wakeup has one waiter at a time")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


@dataclass(eq=False, slots=True)
class Watcher:
    """A stream's inbox: names changed per type (with their old resource), and a wake-up.

    ``interest`` is None until the stream declares one (``set_interest``): such a watcher
    hears every change. Once declared, it hears only changes of names it subscribed to and,
    of types it watches as a wildcard, of the names its node cluster's scope covers, so an
    endpoint change wakes the streams that hold that cluster and no others.
    """

    event: Wakeup = field(default_factory=Wakeup)
    pending: Pending = field(default_factory=dict)
    scopes_changed: bool = False
    interest: Interest | None = None
    node_cluster: str = ""
    """The node cluster whose scope its wildcard types follow (set with ``interest``)."""

    def take(self) -> tuple[Pending, bool]:
        """What changed since the last take (and whether scopes did); clears the inbox."""
        pending, scopes = self.pending, self.scopes_changed
        self.pending, self.scopes_changed = {}, False
        self.event.clear()
        return pending, scopes


def merge_pending(w: Watcher, type_url: str, before: dict[str, Resource | None]) -> None:
    """Add one type's changed names to ``w``'s inbox, keeping each name's oldest unseen
    value: that is what the client holds."""
    mine = w.pending.setdefault(type_url, {})
    if not mine:
        mine.update(before)
    else:
        for name, old in before.items():
            mine.setdefault(name, old)
