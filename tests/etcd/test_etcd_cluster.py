"""EtcdRegistry on a real three-member etcd cluster: failover, resumed watches, leases,
and what a member cut off from the leader does (it refuses, it does not stall or read old).

Each test starts its own cluster on loopback (``tests/support/etcd_cluster.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from tests.support.etcd_cluster import EtcdCluster
from tests.support.fixtures_etcd import RegistryView
from xds_server.errors import RegistryUnavailable


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    async with EtcdCluster(tmp_path / "cluster") as started:
        yield started


def _member(cluster: EtcdCluster, endpoint: str | None) -> EmbeddedEtcd:
    assert endpoint is not None, "the registry is not connected"
    return next(m for m in cluster.members if m.endpoint == endpoint)


async def _leader_first(cluster: EtcdCluster) -> str:
    """Every endpoint, the leader's first: a registry given them uses the leader."""
    leader, _ = await cluster.wait_leader()
    return cluster.endpoints_of([leader, *(m for m in cluster.members if m is not leader)])


async def _truth(cluster: EtcdCluster, prefix: str) -> dict[str, bytes]:
    reader = EtcdRegistry(cluster.endpoints)
    try:
        listing = await reader.list_prefix(prefix)
    finally:
        await reader.close()
    return {e.key: e.value for e in listing.entries if not e.key.startswith(prefix + "status/")}


async def test_leader_killed_the_watch_goes_on_from_another_member_without_a_relist(
    cluster: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    registry = EtcdRegistry(await _leader_first(cluster))
    used = _member(cluster, registry.endpoint or registry.endpoints[0])
    # The test's own writer keeps off the member that goes (its failover would log too).
    writer = EtcdRegistry(cluster.endpoints_of(m for m in cluster.members if m is not used))
    for i in range(5):
        await writer.put(f"/mesh/services/default/before-{i}", b"1")
    async with RegistryView(registry) as view:
        await view.wait_for(lambda: registry.connected, "the watch")
        assert registry.endpoint == used.endpoint
        used.kill()
        await cluster.wait_leader(other_than=used)
        # Written after the new leader was elected: each must reach the consumer.
        last = 0
        for i in range(5):
            last = await writer.put(f"/mesh/services/default/after-{i}", b"2")
        await writer.delete("/mesh/services/default/before-0")
        last = await writer.put("/mesh/services/default/last", b"3")
        await view.wait_revision(last, timeout=15)
        assert registry.endpoint not in (None, used.endpoint)
    assert view.data == await _truth(cluster, "/mesh/")
    # Nothing listed again: one Reset, the rest came as Changes from the revision it had.
    assert view.resets == 1
    assert registry.relists_total == 0
    assert registry.failovers_total == 1
    failovers = [r.getMessage() for r in caplog.records if "failover" in r.getMessage()]
    assert len(failovers) == 1, failovers
    assert used.endpoint in failovers[0], failovers  # which member was left, and why
    await registry.close()
    await writer.close()


async def test_a_lease_survives_the_leader_being_killed(cluster: EtcdCluster) -> None:
    registry = EtcdRegistry(await _leader_first(cluster))
    lease = await registry.lease_grant(10)
    await registry.put("/mesh/endpoints/default/web/leased", b"{}", lease=lease)
    used = _member(cluster, registry.endpoint)
    used.kill()
    await cluster.wait_leader(other_than=used)
    # Kept alive through another member: same lease, same key (a lease lives in the
    # cluster, and the new leader renews every lease's TTL).
    assert await registry.lease_keepalive(lease) > 0
    assert registry.endpoint != used.endpoint
    assert await registry.lease_keys(lease) == ["/mesh/endpoints/default/web/leased"]
    await registry.close()


async def test_quorum_lost_the_watch_ends_instead_of_stalling_and_resumes_after(
    cluster: EtcdCluster,
) -> None:
    registry = EtcdRegistry(cluster.endpoints)
    writer = EtcdRegistry(cluster.endpoints)
    before = await writer.put("/mesh/services/default/before", b"1")
    async with RegistryView(registry) as view:
        await view.wait_revision(before)
        await view.wait_for(lambda: registry.connected, "the watch")
        kept = _member(cluster, registry.endpoint)
        others = [m for m in cluster.members if m is not kept]
        for member in others:
            member.stop()
        lost = time.monotonic()
        # The member left alone has no leader: it ends the watch (etcd's hasleader), so
        # meshd knows it is cut off rather than waiting on a stream that says nothing.
        await view.wait_for(lambda: not registry.connected, "the watch to end", timeout=15)
        noticed = time.monotonic() - lost
        # A read now would be served by a member that may miss writes: refused instead.
        with pytest.raises(RegistryUnavailable, match="no leader"):
            await registry.get("/mesh/services/default/before")
        await cluster.start(others)
        after = await writer.put("/mesh/services/default/after", b"2")
        await view.wait_revision(after, timeout=15)
    assert view.data == await _truth(cluster, "/mesh/")
    assert view.resets == 1
    assert registry.relists_total == 0
    print(f"watch on a member without leader ended after {noticed:.1f} s")
    await registry.close()
    await writer.close()


async def test_writes_while_quorum_is_lost_fail_at_once_naming_the_cause(
    cluster: EtcdCluster,
) -> None:
    registry = EtcdRegistry(cluster.endpoints, timeout=2.0)
    await registry.put("/mesh/services/default/x", b"1")
    kept = _member(cluster, registry.endpoint)
    for member in cluster.members:
        if member is not kept:
            member.stop()
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as refused:
        await registry.put("/mesh/services/default/y", b"2")
    took = time.monotonic() - started
    message = str(refused.value)
    assert "no leader" in message, message
    # Bounded by the call's timeout (a wait for some member to serve), not by etcd's own
    # request timeout plus elections.
    assert took < 2.0 * 2 + 1, took
    await registry.close()


async def test_a_member_down_at_the_start_is_skipped(cluster: EtcdCluster) -> None:
    down = cluster.members[0]
    down.stop()
    registry = EtcdRegistry(cluster.endpoints)
    async with RegistryView(registry) as view:
        rev = await registry.put("/mesh/services/default/x", b"1")
        await view.wait_revision(rev)
    assert registry.endpoint != down.endpoint
    await registry.close()
