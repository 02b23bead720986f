"""The Registry protocol that every backend under ``adapters/`` implements.

A backend turns its storage into a stream of :class:`RegistryUpdate` values:

* :class:`Reset` -- the complete content under the prefix at one revision (possibly
  in parts, see :class:`Reset`). The first update is always a Reset; a backend sends
  another one after it had to relist (watch compacted, connection lost, backend
  restarted). The consumer reconciles by diffing, so nothing is dropped or applied
  twice.
* :class:`Changes` -- the events of one or more revisions, in order, all newer
  than the last update's revision.

Keys are full keys (prefix included) as ``str``; values are raw ``bytes`` (the
model decides what they mean). Keys under ``<prefix>status/`` are meshd's own
output and are never delivered by :meth:`Registry.updates`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from xds_server.errors import ValidationError


class Entry(NamedTuple):
    """One key as stored: value, the revision that last modified it, its lease (0 = none),
    and the revision that created it (0: the backend does not say; routes' age, the
    tenancy rules' tie-break, falls back to the revision the key was first seen at).

    A named tuple (immutable, and built much faster than a frozen dataclass): a listing
    makes one per key of the registry.
    """

    key: str
    value: bytes
    mod_revision: int
    lease: int = 0
    create_revision: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """A put or delete of one key at ``revision``. ``value`` is empty for deletes;
    ``create_revision`` (puts) is the revision that created the key (0: not known)."""

    kind: Literal["put", "delete"]
    key: str
    value: bytes
    revision: int
    lease: int = 0
    create_revision: int = 0


@dataclass(frozen=True, slots=True)
class Reset:
    """Everything under the prefix at ``revision`` (replaces all earlier knowledge).

    A backend may deliver one listing in parts, all at the same revision, as it reads
    them (etcd: page by page), so the consumer folds one part while the next is read.
    ``part`` counts from 0 (a part 0 starts a listing, and also restarts one that broke
    off); ``more`` says further parts follow. The listing is complete, and only then
    replaces earlier knowledge, with the part whose ``more`` is false.
    """

    revision: int
    entries: tuple[Entry, ...]
    part: int = 0
    more: bool = False


@dataclass(frozen=True, slots=True)
class Changes:
    """Events up to and including ``revision``, oldest first."""

    revision: int
    events: tuple[Event, ...]


RegistryUpdate = Reset | Changes


@runtime_checkable
class Registry(Protocol):
    """A registry backend. ``prefix`` ends with ``/`` (default ``/mesh/``)."""

    prefix: str

    def updates(self) -> AsyncIterator[RegistryUpdate]:
        """Yield a Reset, then Changes (and a new Reset after any relist), forever.

        Never raises on transient backend failures: it retries with back-off and
        relists. The consumer keeps serving its last state in the meantime.
        Cancelling the iterating task stops it.
        """
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key`` and return the new revision."""
        ...

    async def delete(self, key: str) -> int:
        """Delete ``key`` (no error when missing) and return the revision."""
        ...

    async def get(self, key: str) -> Entry | None:
        """Read one key, or ``None``."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...


@runtime_checkable
class WritableRegistry(Registry, Protocol):
    """What the admin API needs beyond :class:`Registry`: ranges, transactions, leases.

    Both adapters implement it (EtcdRegistry, MemoryRegistry).
    """

    async def list_prefix(self, prefix: str) -> Reset:
        """Every key starting with ``prefix``, in key order, at one revision."""
        ...

    async def txn(
        self,
        *,
        puts: Mapping[str, bytes] | None = None,
        deletes: Collection[str] = (),
        expect: Mapping[str, int] | None = None,
        lease: int = 0,
    ) -> int:
        """Atomic puts and deletes; ``expect`` maps keys to mod_revisions (0: absent).

        Raises RegistryConflict (naming the key) when an expectation fails.
        """
        ...

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> int:
        """Create a lease of ``ttl`` seconds; returns its id (``lease_id``: this one, 0:
        the backend's next)."""
        ...

    async def lease_keys(self, lease_id: int) -> list[str] | None:
        """The keys held under a lease; None when there is no such lease."""
        ...

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease; returns its TTL. RegistryConflict when it expired."""
        ...

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete its keys."""
        ...


class ConditionalWrites:
    """``put_if`` and ``delete_if`` as one-key transactions of a backend's own ``txn``
    (EtcdRegistry and MemoryRegistry inherit them)."""

    txn: Callable[..., Awaitable[int]]

    async def put_if(self, key: str, value: bytes, mod_revision: int, *, lease: int = 0) -> int:
        """Write only if ``key`` is still at ``mod_revision`` (0: must not exist).

        Returns the new revision; raises RegistryConflict when the key moved on.
        """
        return await self.txn(puts={key: value}, expect={key: mod_revision}, lease=lease)

    async def delete_if(self, key: str, mod_revision: int) -> int:
        """Delete only if ``key`` is still at ``mod_revision``; RegistryConflict otherwise."""
        return await self.txn(deletes=(key,), expect={key: mod_revision})


def check_txn(puts: Mapping[str, bytes], deletes: Collection[str]) -> None:
    """Refuse a transaction that both puts and deletes a key (etcd rejects one touching a
    key twice; a backend says so before doing anything)."""
    both = set(puts).intersection(deletes)
    if both:
        raise ValidationError("", f"keys both put and deleted in one txn: {sorted(both)}")
