"""The Registry contract, run against every backend: MemoryRegistry and EtcdRegistry.

A new backend joins by adding a case to ``_BACKENDS`` and a branch to ``harness``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aetcd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from adapters.memory import MemoryRegistry
from tests.support.fixtures_etcd import RegistryView
from xds_server.errors import RegistryConflict, RegistryUnavailable
from xds_server.ingest.registry import Changes, Registry, Reset

_BACKENDS = ["memory", "etcd"]


@dataclass
class Harness:
    """A backend plus what the tests need to judge it."""

    registry: MemoryRegistry | EtcdRegistry
    truth: Callable[[], Awaitable[dict[str, bytes]]]
    """The store's own content under the prefix, status keys excepted."""
    force_relist: Callable[[], Awaitable[None]]
    """Make a consumer holding a Reset (and not yet reading on) need a relist."""
    relist_reason: str
    """What ``last_error`` says after that relist (empty: not tracked)."""


@pytest.fixture(params=_BACKENDS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        memory = MemoryRegistry()

        async def memory_truth() -> dict[str, bytes]:
            return memory.snapshot()

        async def memory_relist() -> None:
            memory.force_reset()

        yield Harness(memory, memory_truth, memory_relist, "")
        await memory.close()
        return

    etcd: EmbeddedEtcd = request.getfixturevalue("etcd")
    registry = EtcdRegistry(etcd.endpoint)
    # An independent client (aetcd's own API) tells the truth and compacts.
    client = aetcd.Client(etcd.host, etcd.client_port)

    async def etcd_truth() -> dict[str, bytes]:
        found = await client.get_prefix(registry.prefix.encode())
        return {
            kv.key.decode(): kv.value
            for kv in found
            if not kv.key.startswith(registry.prefix.encode() + b"status/")
        }

    async def etcd_compact() -> None:
        # The consumer's watch starts at the Reset's revision + 1, now compacted away.
        revision = (await client.put(b"/compaction-marker", b"")).header.revision
        await client.compact(revision, physical=True)

    yield Harness(registry, etcd_truth, etcd_compact, "compacted")
    await registry.close()
    await client.close()


async def _next(updates: AsyncIterator[Reset | Changes]) -> Reset | Changes:
    return await asyncio.wait_for(anext(updates), 5)


async def test_first_update_is_a_reset_of_existing_keys(harness: Harness) -> None:
    registry = harness.registry
    await registry.put("/mesh/services/default/b", b"B")
    await registry.put("/mesh/services/default/a", b"A")
    await registry.put("/mesh/status/errors/services/default/a", b"{}")
    await registry.put("/elsewhere/x", b"outside the prefix")
    last = await registry.put("/mesh/routes/default/r", b"R")

    updates = registry.updates()
    first = await _next(updates)
    await updates.aclose()

    assert isinstance(first, Reset)
    assert first.revision >= last
    assert [(e.key, e.value) for e in first.entries] == [
        ("/mesh/routes/default/r", b"R"),
        ("/mesh/services/default/a", b"A"),
        ("/mesh/services/default/b", b"B"),
    ]
    assert first.entries[0].mod_revision == last


async def test_puts_and_deletes_arrive_as_changes_in_order(harness: Harness) -> None:
    registry = harness.registry
    await registry.put("/mesh/services/default/old", b"0")
    async with RegistryView(registry) as view:
        r1 = await registry.put("/mesh/services/default/a", b"1")
        r2 = await registry.put("/mesh/services/default/b", b"2")
        r3 = await registry.delete("/mesh/services/default/old")
        await registry.delete("/mesh/services/default/missing")  # no event, no error
        r4 = await registry.put("/mesh/services/default/a", b"3")
        await view.wait_revision(r4)

    assert r1 < r2 < r3 < r4
    assert [(e.kind, e.key, e.value, e.revision) for e in view.events] == [
        ("put", "/mesh/services/default/a", b"1", r1),
        ("put", "/mesh/services/default/b", b"2", r2),
        ("delete", "/mesh/services/default/old", b"", r3),
        ("put", "/mesh/services/default/a", b"3", r4),
    ]
    assert view.data == await harness.truth()
    assert (await registry.get("/mesh/services/default/a")) is not None
    assert await registry.get("/mesh/services/default/old") is None


async def test_status_keys_are_never_delivered(harness: Harness) -> None:
    registry = harness.registry
    # Neighbours of "status/" in key order must still be delivered, in the Reset and later.
    await registry.put("/mesh/status", b"not a status key")
    await registry.put("/mesh/status/errors/a", b"{}")
    async with RegistryView(registry) as view:
        await registry.put("/mesh/status/errors/b", b"{}")
        await registry.put("/mesh/status.x", b"before status/ in key order")
        await registry.delete("/mesh/status/errors/a")
        last = await registry.put("/mesh/statuses/y", b"after status/ in key order")
        await view.wait_revision(last)

    assert view.data == {
        "/mesh/status": b"not a status key",
        "/mesh/status.x": b"before status/ in key order",
        "/mesh/statuses/y": b"after status/ in key order",
    }


async def test_put_if_and_delete_if_compare_mod_revision(harness: Harness) -> None:
    registry = harness.registry
    key = "/mesh/routes/default/r"
    created = await registry.put_if(key, b"v1", 0)  # 0: must not exist yet
    with pytest.raises(RegistryConflict, match=key):
        await registry.put_if(key, b"again", 0)
    updated = await registry.put_if(key, b"v2", created)
    with pytest.raises(RegistryConflict):
        await registry.put_if(key, b"stale", created)
    with pytest.raises(RegistryConflict):
        await registry.delete_if(key, created)
    entry = await registry.get(key)
    assert entry is not None
    assert (entry.value, entry.mod_revision) == (b"v2", updated)
    await registry.delete_if(key, updated)
    assert await registry.get(key) is None


async def test_txn_is_all_or_nothing_at_one_revision(harness: Harness) -> None:
    registry = harness.registry
    gone = await registry.put("/mesh/services/default/gone", b"x")
    async with RegistryView(registry) as view:
        with pytest.raises(RegistryConflict):
            await registry.txn(
                puts={"/mesh/services/default/a": b"A"}, expect={"/mesh/services/default/gone": 1}
            )
        revision = await registry.txn(
            puts={"/mesh/services/default/a": b"A", "/mesh/services/default/b": b"B"},
            deletes=["/mesh/services/default/gone"],
            expect={"/mesh/services/default/gone": gone, "/mesh/services/default/a": 0},
        )
        await view.wait_revision(revision)

    assert len(view.changes) == 1  # the failed txn wrote nothing
    assert {(e.kind, e.key, e.revision) for e in view.changes[0].events} == {
        ("put", "/mesh/services/default/a", revision),
        ("put", "/mesh/services/default/b", revision),
        ("delete", "/mesh/services/default/gone", revision),
    }


async def test_lease_revoke_deletes_its_keys(harness: Harness) -> None:
    registry = harness.registry
    lease = await registry.lease_grant(30)
    assert await registry.lease_keepalive(lease) > 0
    async with RegistryView(registry) as view:
        put = await registry.put("/mesh/endpoints/default/web/1", b"{}", lease=lease)
        await view.wait_revision(put)
        assert view.events[-1].lease == lease
        await registry.lease_revoke(lease)
        await view.wait_for(lambda: not view.data, "the leased key's deletion")
    await registry.lease_revoke(lease)  # gone already: no error
    with pytest.raises(RegistryConflict):
        await registry.lease_keepalive(lease)
    with pytest.raises(RegistryConflict):
        await registry.put("/mesh/endpoints/default/web/2", b"{}", lease=lease)


async def test_relist_after_missed_changes_loses_and_duplicates_nothing(harness: Harness) -> None:
    registry = harness.registry
    for i in range(6):
        await registry.put(f"/mesh/services/default/s{i}", b"v0")
    view = RegistryView(registry)
    updates = registry.updates()
    view.apply(await _next(updates))
    # The consumer holds its Reset and reads no further while the store moves on ...
    for i in range(3, 9):
        await registry.put(f"/mesh/services/default/s{i}", b"v1")
    await registry.delete("/mesh/services/default/s0")
    await harness.force_relist()
    # ... and on again after the history it would need is gone.
    await registry.put("/mesh/services/default/s9", b"v2")
    last = await registry.delete("/mesh/services/default/s1")
    while view.revision < last:
        view.apply(await _next(updates))
    await updates.aclose()

    assert view.resets == 2
    assert registry.relists_total == 1
    assert view.data == await harness.truth()
    assert harness.relist_reason in (registry.last_error or "").lower()


async def test_close_ends_updates_and_later_calls_fail(harness: Harness) -> None:
    registry = harness.registry
    updates = registry.updates()
    assert isinstance(await _next(updates), Reset)
    waiting = asyncio.ensure_future(_next(updates))
    await asyncio.sleep(0.05)  # let it block inside the watch
    await registry.close()
    with pytest.raises(StopAsyncIteration):
        await waiting
    await registry.close()
    with pytest.raises(RegistryUnavailable):
        await registry.put("/mesh/x", b"")


async def test_backends_satisfy_the_protocol(harness: Harness) -> None:
    registry: Registry = harness.registry
    assert isinstance(registry, Registry)
    assert registry.prefix == "/mesh/"


# -- random operation sequences ---------------------------------------------------------

_KEYS = [
    "services/default/a",
    "services/default/b",
    "routes/default/r",
    "status/errors/routes/default/r",  # written, never delivered
    "statuses/x",  # a neighbour of status/ that is delivered
]
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(_KEYS), st.binary(max_size=6)),
        st.tuples(st.just("delete"), st.sampled_from(_KEYS), st.just(b"")),
        st.tuples(st.just("relist"), st.just(""), st.just(b"")),
    ),
    max_size=25,
)
_HYPOTHESIS_PREFIXES = itertools.count()


async def _converge(
    registry: MemoryRegistry | EtcdRegistry, ops: list[tuple[str, str, bytes]]
) -> None:
    """Apply ``ops`` (half before the consumer starts) and check the consumer ends exact."""
    expected: dict[str, bytes] = {}
    last_visible = 0

    async def apply(kind: str, name: str, value: bytes) -> None:
        nonlocal last_visible
        key = registry.prefix + name
        visible = not name.startswith("status/")
        if kind == "put":
            revision = await registry.put(key, value)
            expected[key] = value
        elif kind == "delete":
            existed = expected.pop(key, None) is not None
            revision = await registry.delete(key)
            visible = visible and existed
        else:
            if isinstance(registry, MemoryRegistry):
                registry.force_reset()
            return
        if visible:
            last_visible = revision

    half = len(ops) // 2
    for op in ops[:half]:
        await apply(*op)
    async with RegistryView(registry) as view:
        for op in ops[half:]:
            await apply(*op)
        await view.wait_revision(last_visible)
    assert view.data == {k: v for k, v in expected.items() if "/status/" not in k}


@pytest.mark.parametrize(
    "backend, examples",
    [("memory", 300), ("etcd", 12)],
)
def test_random_operations_leave_the_consumer_exact(
    backend: str, examples: int, request: pytest.FixtureRequest
) -> None:
    endpoint = request.getfixturevalue("etcd_shared").endpoint if backend == "etcd" else ""

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(ops=_OPS)
    def run(ops: list[tuple[str, str, bytes]]) -> None:
        async def scenario() -> None:
            # A fresh prefix per example: earlier examples' keys must not leak in.
            prefix = f"/hyp/{request.node.name}/{next(_HYPOTHESIS_PREFIXES)}/"
            if backend == "memory":
                registry: MemoryRegistry | EtcdRegistry = MemoryRegistry(prefix)
            else:
                registry = EtcdRegistry(endpoint, prefix)
            try:
                await _converge(registry, ops)
            finally:
                await registry.close()

        asyncio.run(scenario())

    run()
