"""DNS resolution for endpoint addresses given as names.

Envoy does not resolve names inside EDS, so meshd resolves them and publishes
the addresses (registry contract). Lookups run off the push path: translation
only reads :meth:`DnsCache.lookup`; names it has not seen are queued and
resolved in the background, and the controller re-translates the services
that use a name when its addresses change. Every name is resolved again after
``refresh_s`` (the system resolver does not expose record TTLs, so the
contract's 30 s bound is used for all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("meshd.dns")

ResolveFn = Callable[[str], Awaitable[tuple[str, ...]]]


async def system_resolve(name: str) -> tuple[str, ...]:
    """All IPv4/IPv6 addresses of ``name`` from the system resolver, sorted."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        name, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return tuple(sorted({str(info[4][0]) for info in infos}))


@dataclass
class _Entry:
    addresses: tuple[str, ...] = ()
    error: str | None = None
    resolved_at: float = 0.0


class DnsCache:
    """Name -> addresses, filled in the background; ``on_change(names)`` fires on changes."""

    def __init__(
        self,
        on_change: Callable[[set[str]], None],
        *,
        resolve: ResolveFn = system_resolve,
        refresh_s: float = 30.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._on_change = on_change
        self._resolve = resolve
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._wanted: set[str] = set()
        self._wake = asyncio.Event()

    def lookup(self, name: str) -> tuple[str, ...]:
        """Addresses known for ``name`` now (empty if unresolved); queues unknown names."""
        entry = self._entries.get(name)
        if entry is None:
            self._entries[name] = _Entry()
            self._wanted.add(name)
            self._wake.set()
            return ()
        return entry.addresses

    def error(self, name: str) -> str | None:
        """Why ``name`` has no addresses, once a lookup failed."""
        entry = self._entries.get(name)
        return entry.error if entry else None

    def forget(self, names: set[str]) -> None:
        """Stop refreshing names no endpoint uses any more."""
        for name in names:
            self._entries.pop(name, None)
            self._wanted.discard(name)

    async def run(self) -> None:
        """Resolve queued names at once and every name every ``refresh_s``; forever."""
        loop = asyncio.get_running_loop()
        now = self._clock or loop.time
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.refresh_s)
            self._wake.clear()
            due = set(self._wanted)
            self._wanted.clear()
            due |= {n for n, e in self._entries.items() if now() - e.resolved_at >= self.refresh_s}
            if not due:
                continue
            results = await asyncio.gather(*(self._one(n) for n in sorted(due)))
            changed = {name for name, did in zip(sorted(due), results, strict=True) if did}
            if changed:
                self._on_change(changed)

    async def _one(self, name: str) -> bool:
        """Resolve one name; True when its addresses or error changed."""
        entry = self._entries.get(name)
        if entry is None:
            return False
        loop = asyncio.get_running_loop()
        try:
            addresses = await asyncio.wait_for(self._resolve(name), self.timeout_s)
            error = None if addresses else "resolves to no address"
        except (OSError, TimeoutError) as exc:
            # Keep serving the last good addresses while DNS is failing.
            addresses, error = entry.addresses, f"does not resolve: {exc}"
        changed = (addresses, error) != (entry.addresses, entry.error)
        if changed and error:
            log.warning("endpoint address %s %s", name, error)
        entry.addresses, entry.error = addresses, error
        entry.resolved_at = (self._clock or loop.time)()
        return changed
