"""EtcdRegistry and EmbeddedEtcd against real etcd processes: outages, paging, limits, latency."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path

import aetcd
import pytest
from aetcd import rpc

from adapters.etcd import EmbeddedEtcd, EmbeddedEtcdError, EtcdRegistry
from tests.support.fixtures_etcd import RegistryView
from xds_server.errors import RegistryUnavailable, ValidationError
from xds_server.ingest.registry import Reset


async def _truth(etcd: EmbeddedEtcd, prefix: str, revision: int = 0) -> dict[str, bytes]:
    """Everything under ``prefix`` but status keys, read in one range by aetcd's own stubs."""
    async with aetcd.Client(etcd.host, etcd.client_port) as client:
        request = rpc.RangeRequest(
            key=prefix.encode(), range_end=prefix[:-1].encode() + b"0", revision=revision
        )
        resp = await client.kvstub.Range(request)
    status = (prefix + "status/").encode()
    return {kv.key.decode(): kv.value for kv in resp.kvs if not kv.key.startswith(status)}


def test_embedded_etcd_restarts_on_its_ports_with_its_data(tmp_path: Path) -> None:
    etcd = EmbeddedEtcd(tmp_path / "e", unsafe_no_fsync=True)
    with etcd:
        host, port = etcd.endpoint.split(":")
        assert host == "127.0.0.1"
        assert etcd.running
        asyncio.run(_put(etcd.endpoint, "/mesh/kept", b"1"))
        etcd.restart_sync()
        assert etcd.endpoint == f"127.0.0.1:{port}"
        entry = asyncio.run(_get(etcd.endpoint, "/mesh/kept"))
        assert entry == b"1"
    assert not etcd.running
    assert etcd.pid is None
    etcd.stop()  # idempotent
    assert "starting" in etcd.log_path.read_text()
    assert etcd.log_path.parent == tmp_path / "e"


async def _put(endpoint: str, key: str, value: bytes) -> None:
    registry = EtcdRegistry(endpoint)
    await registry.put(key, value)
    await registry.close()


async def _get(endpoint: str, key: str) -> bytes | None:
    registry = EtcdRegistry(endpoint)
    entry = await registry.get(key)
    await registry.close()
    return entry.value if entry else None


async def test_embedded_etcd_failure_says_why(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedEtcdError, match="bogus-flag"):
        await EmbeddedEtcd(tmp_path / "bad", extra_args=["--bogus-flag"]).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = EmbeddedEtcd(tmp_path / "busy", client_port=port)
        with pytest.raises(EmbeddedEtcdError, match="address already in use"):
            await busy.start()
        assert not busy.running


async def test_updates_survive_etcd_down_for_two_seconds(etcd: EmbeddedEtcd) -> None:
    registry = EtcdRegistry(etcd.endpoint)
    impatient = EtcdRegistry(etcd.endpoint, timeout=0.3)  # a writer that gives up quickly
    await registry.put("/mesh/services/default/before", b"1")
    async with RegistryView(registry) as view:
        await view.wait_for(lambda: registry.connected, "the watch")
        etcd.stop()
        stopped = time.monotonic()
        await view.wait_for(lambda: not registry.connected, "the outage to be noticed", 2)
        with pytest.raises(RegistryUnavailable):
            await impatient.put("/mesh/services/default/lost", b"x")
        await asyncio.sleep(2 - (time.monotonic() - stopped))
        await etcd.restart()
        last = await registry.put("/mesh/services/default/after", b"2")
        await view.wait_revision(last)
        assert registry.connected
    assert view.data == await _truth(etcd, "/mesh/")
    assert set(view.data) == {"/mesh/services/default/before", "/mesh/services/default/after"}
    assert registry.errors_total >= 1
    # The same store came back: the watch went on from the revision after the last one
    # seen, nothing listed again.
    assert registry.relists_total == 0
    assert view.resets == 1
    assert impatient.errors_total == 1
    await registry.close()
    await impatient.close()


async def test_updates_wait_for_an_etcd_that_is_not_up_yet(etcd: EmbeddedEtcd) -> None:
    etcd.stop()
    registry = EtcdRegistry(etcd.endpoint, timeout=0.1)  # each list attempt gives up soon

    async def start_later() -> None:
        await asyncio.sleep(0.3)
        await etcd.restart()

    starter = asyncio.ensure_future(start_later())
    async with RegistryView(registry) as view:
        assert view.resets == 1
        assert registry.connected
    await starter
    assert registry.errors_total >= 1
    assert "DEADLINE_EXCEEDED" in (registry.last_error or "")
    await registry.close()


async def test_paged_list_is_one_revision_while_writes_go_on(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str
) -> None:
    registry = EtcdRegistry(etcd_shared.endpoint, etcd_prefix, page_size=50)
    keys = [f"{etcd_prefix}endpoints/default/web/{i:05d}" for i in range(5000)]
    for start in range(0, len(keys), 1000):
        await registry.txn(puts={k: b"initial" for k in keys[start : start + 1000]})

    writes: list[tuple[float, int]] = []  # (completed at, revision)

    async def writer() -> None:
        i = 0
        while True:  # change keys all over the key space, pages not yet read among them
            key = keys[(i * 997) % len(keys)]
            op = registry.delete(key) if i % 3 == 0 else registry.put(key, b"w%d" % i)
            writes.append((time.monotonic(), await op))
            i += 1

    writing = asyncio.ensure_future(writer())
    await asyncio.sleep(0.02)
    updates = registry.updates()
    parts = [await asyncio.wait_for(anext(updates), 10)]
    while isinstance(parts[-1], Reset) and parts[-1].more:
        parts.append(await asyncio.wait_for(anext(updates), 10))
    listed_at = time.monotonic()
    writing.cancel()
    await updates.aclose()

    # One listing, delivered page by page as Reset parts, all at one revision.
    assert all(isinstance(p, Reset) for p in parts)
    assert [p.part for p in parts] == list(range(len(parts)))  # type: ignore[union-attr]
    assert len({p.revision for p in parts}) == 1
    reset = Reset(parts[0].revision, tuple(e for p in parts for e in p.entries))  # type: ignore[union-attr]
    # A part per non-empty page (the range after the status keys is one more, empty, page).
    assert all(0 < len(p.entries) <= 50 for p in parts)  # type: ignore[union-attr]
    assert registry.last_list_pages >= len(parts) >= len(reset.entries) / 50
    during = [rev for done, rev in writes if rev > reset.revision and done < listed_at]
    assert during, "no write landed while the pages were read"
    listed = {e.key: e.value for e in reset.entries}
    assert listed == await _truth(etcd_shared, etcd_prefix, reset.revision)
    await registry.close()


async def test_values_beyond_grpc_default_limit(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str
) -> None:
    registry = EtcdRegistry(etcd_shared.endpoint, etcd_prefix)
    big = b"x" * (1024 * 1024)
    for i in range(6):  # 6 MiB in one page: over gRPC's default 4 MiB receive limit
        await registry.put(f"{etcd_prefix}services/default/s{i}", big)
    # Over etcd's 1.5 MiB request limit, then over its gRPC server's message limit.
    with pytest.raises(ValidationError, match="request is too large"):
        await registry.put(f"{etcd_prefix}services/default/huge", big + big[: 600 * 1024])
    with pytest.raises(ValidationError, match="larger than max"):
        await registry.put(f"{etcd_prefix}services/default/huge", big * 2)
    async with RegistryView(registry) as view:
        assert len(view.data) == 6
        last = await registry.put(f"{etcd_prefix}services/default/s6", big)
        await view.wait_revision(last)
    assert len(view.data) == 7
    await registry.close()


async def test_first_reachable_endpoint_is_used(etcd_shared: EmbeddedEtcd) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    registry = EtcdRegistry(f"{dead}, http://{etcd_shared.endpoint}")
    assert await registry.get("/mesh/none") is None
    assert registry.endpoint == etcd_shared.endpoint
    await registry.close()
    with pytest.raises(ValueError, match="no etcd endpoint"):
        EtcdRegistry(" , ")


async def test_put_reaches_the_consumer_in_milliseconds(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str
) -> None:
    registry = EtcdRegistry(etcd_shared.endpoint, etcd_prefix)
    updates = registry.updates()
    await anext(updates)
    await registry.put(f"{etcd_prefix}warm-up", b"")
    await anext(updates)
    latencies = []
    for i in range(200):
        started = time.perf_counter()
        await registry.put(f"{etcd_prefix}services/default/s{i % 10}", b"%d" % i)
        await asyncio.wait_for(anext(updates), 5)
        latencies.append((time.perf_counter() - started) * 1000)
    await updates.aclose()
    await registry.close()
    latencies.sort()
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nput -> consumer over 200 puts: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    # Generous bound: this catches a poll or sleep on the hot path, not a slow machine.
    assert p50 < 25
