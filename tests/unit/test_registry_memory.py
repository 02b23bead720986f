"""MemoryRegistry's test controls: simulated outage, relist, lease expiry, etcd-like revisions."""

from __future__ import annotations

import pytest

from adapters.memory import MemoryRegistry
from tests.support.fixtures_etcd import RegistryView
from xds_server.errors import RegistryUnavailable, ValidationError
from xds_server.ingest.registry import Changes, Reset


async def test_revisions_move_like_etcd(memory_registry: MemoryRegistry) -> None:
    assert memory_registry.revision == 1
    assert await memory_registry.put("/mesh/a", b"") == 2
    assert await memory_registry.delete("/mesh/missing") == 2  # nothing changed
    assert await memory_registry.txn(puts={"/mesh/b": b"", "/mesh/c": b""}) == 3
    assert await memory_registry.delete("/mesh/a") == 4


async def test_unavailable_makes_calls_fail_and_counts(memory_registry: MemoryRegistry) -> None:
    memory_registry.unavailable = True
    with pytest.raises(RegistryUnavailable):
        await memory_registry.put("/mesh/a", b"")
    with pytest.raises(RegistryUnavailable):
        await memory_registry.get("/mesh/a")
    assert memory_registry.errors_total == 2
    memory_registry.unavailable = False
    assert await memory_registry.put("/mesh/a", b"") == 2


async def test_force_reset_replaces_unread_changes(memory_registry: MemoryRegistry) -> None:
    updates = memory_registry.updates()
    assert isinstance(await anext(updates), Reset)
    await memory_registry.put("/mesh/a", b"1")
    await memory_registry.put("/mesh/b", b"2")
    memory_registry.force_reset()
    last = await memory_registry.put("/mesh/c", b"3")
    relist = await anext(updates)
    assert isinstance(relist, Reset)
    assert [e.key for e in relist.entries] == ["/mesh/a", "/mesh/b", "/mesh/c"]
    assert relist.revision == last  # the put after the relist is inside it, not repeated
    await memory_registry.put("/mesh/d", b"4")
    after = await anext(updates)
    assert isinstance(after, Changes)
    assert [e.key for e in after.events] == ["/mesh/d"]
    assert memory_registry.relists_total == 1
    await updates.aclose()


async def test_expire_lease_deletes_its_keys_at_one_revision(
    memory_registry: MemoryRegistry,
) -> None:
    lease = await memory_registry.lease_grant(10)
    await memory_registry.put("/mesh/endpoints/default/web/1", b"", lease=lease)
    await memory_registry.put("/mesh/endpoints/default/web/2", b"", lease=lease)
    await memory_registry.put("/mesh/endpoints/default/web/2", b"no lease now")
    async with RegistryView(memory_registry) as view:
        memory_registry.expire_lease(lease)
        await view.wait_for(lambda: len(view.data) == 1, "expiry")
    assert view.data == {"/mesh/endpoints/default/web/2": b"no lease now"}
    assert len(view.changes) == 1


async def test_oversized_and_contradictory_writes_are_refused(
    memory_registry: MemoryRegistry,
) -> None:
    with pytest.raises(ValidationError, match="too large"):
        await memory_registry.put("/mesh/big", b"x" * (1536 * 1024))
    with pytest.raises(ValidationError, match="both put and deleted"):
        await memory_registry.txn(puts={"/mesh/a": b""}, deletes=["/mesh/a"])
    assert memory_registry.revision == 1
