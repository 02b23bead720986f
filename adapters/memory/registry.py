"""The Registry protocol in memory: same contract and extras as EtcdRegistry, for unit tests.

It mimics etcd where a consumer could tell: revisions start at 1 and grow by one per write
that changes something (a delete of a missing key does not), a transaction or a lease
revocation is one revision, writes over ``max_request_bytes`` are refused, unknown leases
make writes fail. Leases never expire by time: tests call :meth:`MemoryRegistry.expire_lease`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from xds_server.errors import RegistryConflict, RegistryUnavailable, ValidationError
from xds_server.ingest.registry import (
    Changes,
    ConditionalWrites,
    Entry,
    Event,
    RegistryUpdate,
    Reset,
    check_txn,
)

__all__ = ["MemoryRegistry"]

# Queue markers: "relist now" and "registry closed".
_RESET: Final = "reset"
_CLOSED: Final = "closed"
_Item = Changes | str


@dataclass(slots=True)
class _Lease:
    ttl: int
    keys: set[str] = field(default_factory=set)


class MemoryRegistry(ConditionalWrites):
    """In-memory registry. Same observable state as EtcdRegistry for metrics tests.

    Set ``unavailable = True`` to make every read and write raise RegistryUnavailable (an
    etcd outage as callers of put/get see it); :meth:`force_reset` makes every running
    :meth:`updates` iterator relist, as EtcdRegistry does after a compaction or reconnect.
    """

    def __init__(self, prefix: str = "/mesh/", *, max_request_bytes: int = 1536 * 1024) -> None:
        """Empty registry at revision 1 (etcd's first revision)."""
        if not prefix.endswith("/"):
            raise ValueError(f"prefix must end with '/': {prefix!r}")
        self.prefix = prefix
        self.max_request_bytes = max_request_bytes
        self.revision = 1
        self.connected = True
        self.errors_total = 0
        self.last_error: str | None = None
        self.unavailable = False
        self.relists_total = 0  # Resets after the first, as on EtcdRegistry
        self._status_prefix = prefix + "status/"
        self._data: dict[str, Entry] = {}
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._subscribers: set[asyncio.Queue[_Item]] = set()
        self._closed = False

    # -- reading -----------------------------------------------------------------------

    async def updates(self) -> AsyncGenerator[RegistryUpdate, None]:
        """Reset of the current content, then one Changes per write; a Reset per relist."""
        self._check()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        # Snapshot and subscription happen without an await in between: nothing is missed.
        self._subscribers.add(queue)
        try:
            reset = self._snapshot()
            last = reset.revision
            yield reset
            while True:
                item = await queue.get()
                if item == _CLOSED:
                    return
                if item == _RESET:
                    reset = self._snapshot()
                    last = reset.revision
                    yield reset
                elif isinstance(item, Changes) and item.revision > last:
                    # Changes queued before a relist are in its Reset already: skip them.
                    last = item.revision
                    yield item
        finally:
            self._subscribers.discard(queue)

    async def get(self, key: str) -> Entry | None:
        """Read one key (any key, also outside the prefix), or ``None``."""
        self._check()
        return self._data.get(key)

    async def list_prefix(self, prefix: str) -> Reset:
        """Every key starting with ``prefix`` (any prefix, status keys included), in key order."""
        self._check()
        entries = sorted((e for e in self._data.values() if e.key.startswith(prefix)), key=_by_key)
        return Reset(self.revision, tuple(entries))

    def snapshot(self) -> dict[str, bytes]:
        """Every key under the prefix but status keys -> value (the truth, for assertions)."""
        return {e.key: e.value for e in self._snapshot().entries}

    # -- writing -----------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key`` and return the new revision (RegistryConflict: unknown lease)."""
        return await self.txn(puts={key: value}, lease=lease)

    async def delete(self, key: str) -> int:
        """Delete ``key`` (no error when missing) and return the revision."""
        return await self.txn(deletes=(key,))

    async def txn(
        self,
        *,
        puts: Mapping[str, bytes] | None = None,
        deletes: Collection[str] = (),
        expect: Mapping[str, int] | None = None,
        lease: int = 0,
    ) -> int:
        """Apply ``puts`` and ``deletes`` atomically at one revision (see EtcdRegistry.txn)."""
        self._check()
        puts = puts or {}
        expect = expect or {}
        check_txn(puts, deletes)
        if sum(len(k) + len(v) for k, v in puts.items()) > self.max_request_bytes:
            raise ValidationError("", "request is too large")  # what etcd says, too
        moved = [
            f"{k} is at revision {self._mod_revision(k)}, not {r}"
            for k, r in expect.items()
            if self._mod_revision(k) != r
        ]
        if moved:
            raise RegistryConflict("; ".join(moved))
        if lease and puts and lease not in self._leases:
            raise RegistryConflict(f"lease {lease:x} not found")
        return self._commit(puts, [k for k in deletes if k in self._data], lease)

    # -- leases ------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> int:
        """Create a lease and return its id (it lives until revoked or expired by a test)."""
        self._check()
        if lease_id and lease_id in self._leases:
            raise RegistryUnavailable(f"lease {lease_id:x} already exists")
        lease_id = lease_id or next(self._lease_ids)
        self._leases[lease_id] = _Lease(ttl)
        return lease_id

    async def lease_keys(self, lease_id: int) -> list[str] | None:
        """The keys held under a lease (None: no such lease)."""
        self._check()
        lease = self._leases.get(lease_id)
        return None if lease is None else sorted(lease.keys)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Return the lease's TTL; RegistryConflict when it is gone."""
        self._check()
        if lease_id not in self._leases:
            raise RegistryConflict(f"lease {lease_id:x} expired or does not exist")
        return self._leases[lease_id].ttl

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys at one revision. A missing lease is no error."""
        self._check()
        self.expire_lease(lease_id)

    def expire_lease(self, lease_id: int) -> None:
        """Simulate the TTL running out (synchronous, for tests)."""
        lease = self._leases.pop(lease_id, None)
        if lease is not None and lease.keys:
            self._commit({}, sorted(lease.keys), 0)

    # -- test controls -----------------------------------------------------------------

    def force_reset(self) -> None:
        """Make every running updates() iterator relist, as after a compaction or reconnect.

        Changes not yet read are dropped (a broken watch loses them too); the next update
        is a Reset of the content at that moment.
        """
        if self._closed:
            return
        for queue in self._subscribers:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(_RESET)
        self.relists_total += len(self._subscribers)

    async def close(self) -> None:
        """End every updates() iterator; later calls raise RegistryUnavailable. Idempotent."""
        self._closed = True
        self.connected = False
        for queue in self._subscribers:
            queue.put_nowait(_CLOSED)

    # -- internals ---------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise RegistryUnavailable("registry closed")
        if self.unavailable:
            self.errors_total += 1
            self.last_error = "UNAVAILABLE: simulated outage"
            raise RegistryUnavailable("memory registry: simulated outage")

    def _mod_revision(self, key: str) -> int:
        entry = self._data.get(key)
        return entry.mod_revision if entry else 0

    def _visible(self, key: str) -> bool:
        return key.startswith(self.prefix) and not key.startswith(self._status_prefix)

    def _snapshot(self) -> Reset:
        entries = sorted((e for e in self._data.values() if self._visible(e.key)), key=_by_key)
        return Reset(self.revision, tuple(entries))

    def _commit(self, puts: Mapping[str, bytes], deletes: Collection[str], lease: int) -> int:
        if not puts and not deletes:
            return self.revision  # etcd does not spend a revision on a no-op
        self.revision += 1
        rev = self.revision
        events: list[Event] = []
        # Puts, then deletes: the order EtcdRegistry.txn sends them, hence etcd's event order.
        for key, value in puts.items():
            old = self._data.get(key)
            if old is not None:
                self._detach(old)
            created = old.create_revision if old is not None else rev
            self._data[key] = Entry(key, value, rev, lease, created)
            if lease:
                self._leases[lease].keys.add(key)
            events.append(Event("put", key, value, rev, lease, created))
        for key in deletes:
            self._detach(self._data.pop(key))
            events.append(Event("delete", key, b"", rev))
        visible = tuple(e for e in events if self._visible(e.key))
        if visible:
            changes = Changes(rev, visible)
            for queue in self._subscribers:
                queue.put_nowait(changes)
        return rev

    def _detach(self, entry: Entry) -> None:
        if entry.lease and entry.lease in self._leases:
            self._leases[entry.lease].keys.discard(entry.key)


def _by_key(entry: Entry) -> str:
    return entry.key
