"""Per-client limits of the xDS port, attacked from outside: raw gRPC clients against meshd
as its own process, on a real etcd, its memory read from /proc.

Each test starts meshd with a low limit (a flag) so the attack fits in seconds; one keeps
the default to check that it holds. See docs/xds.md, Limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_abuse import MeshdProcess
from integration.bench_scale import seed
from tests.support.wait import eventually
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.server.ads import ADS_SERVICE
from xds_server.stream_limits import StreamLimits

SOTW = f"/{ADS_SERVICE}/StreamAggregatedResources"
DELTA = f"/{ADS_SERVICE}/DeltaAggregatedResources"
HDS = "/envoy.service.health.v3.HealthDiscoveryService/StreamHealthCheck"


@contextlib.asynccontextmanager
async def meshd(
    etcd: EmbeddedEtcd,
    prefix: str,
    tmp_path: Path,
    *flags: str,
    services: int = 4,
    endpoints: int = 2,
) -> AsyncIterator[MeshdProcess]:
    """meshd as its own process on ``prefix`` of the shared etcd, seeded with ``services``
    services of ``endpoints`` endpoints, serving when this yields."""
    registry = EtcdRegistry(etcd.endpoint, prefix=prefix)
    try:
        revision, _, _ = await seed(registry, services, endpoints)
    finally:
        await registry.close()
    proc = MeshdProcess(etcd.endpoint, prefix, tmp_path, flags)
    try:
        await proc.wait_ready(revision, timeout=60)
        yield proc
    finally:
        proc.stop()


class Raw:
    """One ADS stream whose requests are written as given and responses read as bytes."""

    def __init__(self, channel: grpc.aio.Channel, method: str = SOTW) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        call = channel.stream_stream(method)  # bytes in, bytes out
        self.call = call(self._requests())

    async def _requests(self) -> AsyncIterator[bytes]:
        while (item := await self.queue.get()) is not None:
            yield item

    def send(self, req: Any) -> None:
        self.queue.put_nowait(req.SerializeToString())

    async def read(self, timeout: float = 10.0) -> bytes:
        got = await asyncio.wait_for(self.call.read(), timeout)
        assert got is not grpc.aio.EOF, "the stream ended"
        return bytes(got)

    async def status(self, timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:
        code = await asyncio.wait_for(self.call.code(), timeout)
        return code, await self.call.details()


def _req(type_url: str, names: list[str] | None = None, *, node: str = "", nonce: str = "") -> Any:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce)
    req.resource_names.extend(names or [])
    if node:
        req.node.id, req.node.cluster = node, "gateway"
    return req


def _limited(m: dict[str, float], limit: str) -> float:
    return m.get(f"meshd_xds_limited_total{{limit={limit}}}", 0.0)


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.1)


async def test_a_subscription_over_the_default_name_limit_is_refused_and_costs_no_memory(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """Finding 4: streams each subscribing to 200k unique EDS names. Under the default
    limit (100,000 names per type and stream) each is ended with RESOURCE_EXHAUSTED and
    meshd's memory does not grow by what they asked; a subscription within it is served."""
    assert StreamLimits().max_names == 100_000
    async with meshd(etcd_shared, etcd_prefix, tmp_path) as proc:
        await asyncio.sleep(1.5)  # (the heap trim after start)
        base = proc.rss_kb()
        names = [f"a{i:06d}" for i in range(200_000)]  # (2 MB: within gRPC's 4 MB)
        async with grpc.aio.insecure_channel(proc.target) as channel:
            streams = [Raw(channel) for _ in range(3)]
            for i, s in enumerate(streams):
                s.send(_req(ENDPOINT, [f"{n}-{i}" for n in names], node=f"attacker-{i}"))
            for s in streams:
                code, details = await s.status(30)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
                assert "--xds-max-names" in details and "200000 names" in details, details
            peak = proc.rss_kb()
            # Within the limit: served.
            ok = Raw(channel)
            ok.send(_req(ENDPOINT, ["s0.default", "s1.default"], node="fine"))
            assert await ok.read()
            ok.call.cancel()
        # Each stream would hold ~100 MB of names (interned set, name index) had it been
        # taken; what remains is parsing the request, freed at once.
        assert peak - base < 60_000, f"RSS {base} -> {peak} kB"
        m = await proc.metrics("meshd_xds_limited_total")
        assert _limited(m, "names") == 3, m


async def test_names_limit_by_flag_sotw_and_delta(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """``--xds-max-names 50``: 50 names are served; a 51st, asked at once (SotW) or one
    request after another (Delta), ends the stream with RESOURCE_EXHAUSTED."""
    async with meshd(etcd_shared, etcd_prefix, tmp_path, "--xds-max-names", "50") as proc:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            sotw = Raw(channel)
            sotw.send(_req(ENDPOINT, ["s0.default", *(f"n{i}" for i in range(49))], node="s"))
            await sotw.read()
            sotw.send(_req(ENDPOINT, [f"n{i}" for i in range(51)]))
            code, details = await sotw.status()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 50" in details

            delta = Raw(channel, DELTA)
            first = discovery_pb2.DeltaDiscoveryRequest(
                type_url=ENDPOINT, resource_names_subscribe=[f"n{i}" for i in range(40)]
            )
            first.node.id, first.node.cluster = "d", "gateway"
            delta.send(first)
            await delta.read()
            delta.send(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=ENDPOINT, resource_names_subscribe=[f"m{i}" for i in range(11)]
                )
            )
            code, details = await delta.status()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            assert "51 names" in details and "--xds-max-names" in details, details
        m = await proc.metrics("meshd_xds_limited_total")
        assert _limited(m, "names") == 2, m


async def test_names_that_only_look_over_the_limit_are_counted_exactly(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """A name 26 bytes long has a length byte equal to the names field's tag byte, so 50 of
    them hold 98 such bytes: under ``--xds-max-names 50`` a request of those and a service's
    name is counted exactly (parsed in its turn) and served, SotW and Delta alike; one name
    more is refused."""
    names = ["s0.default", *(f"n{i:02d}." + "x" * 22 for i in range(49))]
    assert {len(n) for n in names[1:]} == {26}
    async with meshd(etcd_shared, etcd_prefix, tmp_path, "--xds-max-names", "50") as proc:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            sotw = Raw(channel)
            sotw.send(_req(ENDPOINT, names, node="s"))
            resp = discovery_pb2.DiscoveryResponse.FromString(await sotw.read())
            assert resp.type_url == ENDPOINT
            delta = Raw(channel, DELTA)
            first = discovery_pb2.DeltaDiscoveryRequest(
                type_url=ENDPOINT, resource_names_subscribe=names
            )
            first.node.id, first.node.cluster = "d", "gateway"
            assert first.SerializeToString().count(b"\x1a") > 50  # (the tag of subscribe)
            delta.send(first)
            assert discovery_pb2.DeltaDiscoveryResponse.FromString(await delta.read())
            over = Raw(channel)
            over.send(_req(ENDPOINT, [*names, "n50." + "x" * 22], node="o"))
            code, details = await over.status()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "51 names" in details, details
            for raw in (sotw, delta):
                raw.call.cancel()
        m = await proc.metrics("meshd_xds_limited_total")
        assert _limited(m, "names") == 1, m


async def test_streams_per_peer_address(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """``--xds-max-streams-per-peer 4``: a fifth ADS or HDS stream from the same address
    is refused; once one closes, a new one is served."""
    flags = ("--xds-max-streams-per-peer", "4")
    async with meshd(etcd_shared, etcd_prefix, tmp_path, *flags) as proc:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            streams = [Raw(channel) for _ in range(4)]
            for i, s in enumerate(streams):
                s.send(_req(CLUSTER, node=f"n{i}"))
                await s.read()
            extra = Raw(channel)
            extra.send(_req(CLUSTER, node="n-extra"))
            code, details = await extra.status()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            assert "--xds-max-streams-per-peer" in details and "127.0.0.1" in details, details
            hds = channel.stream_stream(HDS)(iter(()))
            code = await asyncio.wait_for(hds.code(), 10)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, code

            streams[0].call.cancel()

            async def served() -> bool:
                again = Raw(channel)
                again.send(_req(CLUSTER, node="n-again"))
                try:
                    await again.read(2)
                except (AssertionError, TimeoutError, grpc.aio.AioRpcError):
                    return False
                finally:
                    again.call.cancel()
                return True

            await _until(served, "a new stream served once one closed")
        m = await proc.metrics("meshd_xds_limited_total")
        assert _limited(m, "streams_per_peer") >= 2, m


async def test_a_request_flood_is_paced_not_dropped(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """``--xds-request-rate 20 --xds-request-burst 20``: 80 requests at once are read at 20
    a second; the request after them is answered (nothing dropped), about 3 s later."""
    flags = ("--xds-request-rate", "20", "--xds-request-burst", "20")
    async with meshd(etcd_shared, etcd_prefix, tmp_path, *flags) as proc:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            s = Raw(channel)
            s.send(_req(CLUSTER, node="flood"))
            cds = discovery_pb2.DiscoveryResponse.FromString(await s.read())
            started = time.monotonic()
            for _ in range(80):  # stale ACKs: each costs meshd a read and a lookup
                s.send(_req(CLUSTER, nonce="no-such-nonce"))
            s.send(_req(ENDPOINT, ["s0.default"]))
            await s.read(20)
            took = time.monotonic() - started
            assert took > 2.5, f"80 requests over a 20/s limit answered after {took:.2f} s"
            assert cds.resources
        m = await proc.metrics("meshd_xds_limited_total")
        assert _limited(m, "request_rate") >= 50, m


async def test_a_burst_past_its_first_requests_is_handled_in_turns(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """A proxy's few requests at a time are handled as they come; a client that queues up
    60 at once (within the default burst of 100, so none is paced) has all but the first
    16 handled in turns, each counted, and every one is still handled: the answer to the
    request after them comes. (A rate of 1 a second: the bucket refills by next to nothing
    while the burst is read, so the count is exact to a request or two.)"""
    flags = ("--xds-request-rate", "1")
    async with meshd(etcd_shared, etcd_prefix, tmp_path, *flags) as proc:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            proxy = Raw(channel)
            proxy.send(_req(CLUSTER, node="proxy"))
            await proxy.read()
            for _ in range(8):  # (ACKs a proxy might send after a few pushes)
                proxy.send(_req(CLUSTER, nonce="no-such-nonce"))
            proxy.send(_req(ENDPOINT, ["s0.default"], node=""))
            await proxy.read(20)
            m = await proc.metrics("meshd_xds_limited_total")
            assert _limited(m, "request_burst") == 0, m

            burst = Raw(channel)
            burst.send(_req(CLUSTER, node="burst"))
            await burst.read()
            for _ in range(60):
                burst.send(_req(CLUSTER, nonce="no-such-nonce"))
            burst.send(_req(ENDPOINT, ["s0.default"]))
            assert discovery_pb2.DiscoveryResponse.FromString(await burst.read(20)).resources
        m = await proc.metrics("meshd_xds_limited_total")
        # (the stream's first request and 15 of the 60 went at once; 45 and the last not)
        assert 42 <= _limited(m, "request_burst") <= 46, m
        assert _limited(m, "request_rate") == 0, m


def _flip(i: int, services: int) -> list[str]:
    """Every other service, odd or even: two disjoint subscriptions, each a big answer."""
    return [f"s{j}.default" for j in range(i % 2, services, 2)]


async def test_flipping_subscriptions_keep_no_responses(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """Finding 4: one client flips its EDS subscription over and over without nonces.
    Each answer is new bytes (a new nonce); meshd keeps at most ``--xds-shared-cache-mb``
    of them, and lets them go when the client leaves."""
    flags = ("--xds-shared-cache-mb", "4", "--xds-request-rate", "100000")
    services = 120
    async with meshd(
        etcd_shared, etcd_prefix, tmp_path, *flags, services=services, endpoints=25
    ) as proc:
        await asyncio.sleep(1.5)
        base = proc.rss_kb()
        async with grpc.aio.insecure_channel(proc.target) as channel:
            s = Raw(channel)
            sent = 0
            for i in range(1500):
                req = _req(ENDPOINT, _flip(i, services), node="flipper" if i == 0 else "")
                s.send(req)
                sent += len(await s.read())
            peak = proc.rss_kb()
            s.call.cancel()
        assert sent > 60_000_000, sent  # what an unbounded cache would have kept
        await asyncio.sleep(2.5)  # (the heap trim once quiet)
        after = proc.rss_kb()
        assert peak - base < 40_000, f"RSS {base} -> {peak} kB over {sent} bytes of answers"
        assert after - base < 25_000, f"RSS {base} -> {after} kB after the client left"


async def test_a_client_that_never_reads_is_ended(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """Finding 4: a client that subscribes over and over but reads nothing: the answers
    queue up in meshd until ``--xds-max-queued-responses`` (50), then meshd ends the
    stream (RESOURCE_EXHAUSTED, counted) instead of growing."""
    flags = ("--xds-max-queued-responses", "50", "--xds-request-rate", "100000")
    services = 120
    async with meshd(
        etcd_shared, etcd_prefix, tmp_path, *flags, services=services, endpoints=25
    ) as proc:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            s = Raw(channel)
            for i in range(400):
                s.send(_req(ENDPOINT, _flip(i, services), node="deaf" if i == 0 else ""))

            async def ended() -> bool:
                m = await proc.metrics("meshd_xds_limited_total", "meshd_connected_proxies")
                open_ = sum(v for k, v in m.items() if k.startswith("meshd_connected_proxies"))
                return _limited(m, "queued_responses") == 1 and open_ == 0

            await _until(ended, "meshd ended the stream of the client that does not read")
            s.call.cancel()
        log = proc.log_path.read_text()
        assert "--xds-max-queued-responses" in log


async def test_client_strings_in_logs_are_clipped_and_repeats_held_back(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """Finding 6: a 1 MB unknown type URL and 300 NACKs of 200 KB each: meshd's log stays
    a few KB; each client string shows 200 characters and its size; the repeats are held
    back and counted, and meshd says so."""
    async with meshd(etcd_shared, etcd_prefix, tmp_path) as proc:
        log_before = proc.log_path.stat().st_size
        async with grpc.aio.insecure_channel(proc.target) as channel:
            s = Raw(channel)
            s.send(_req("type.example/" + "u" * 1_000_000, node="noisy"))
            s.send(_req(CLUSTER))
            cds = discovery_pb2.DiscoveryResponse.FromString(await s.read())
            nack = _req(CLUSTER, nonce=cds.nonce)
            nack.error_detail.CopyFrom(status_pb2.Status(code=3, message="e" * 200_000))
            for _ in range(300):
                s.send(nack)
            s.send(_req(ENDPOINT, ["s0.default"]))  # answered once every NACK was handled
            await s.read(30)
            s.call.cancel()
        await asyncio.sleep(0.5)
        text = proc.log_path.read_text()[log_before:]
        size = proc.log_path.stat().st_size - log_before
        assert size < 20_000, f"{size} bytes of log"
        lines = text.splitlines()
        assert max(len(line) for line in lines) < 1_000
        nacks = [line for line in lines if "NACK from node=noisy" in line]
        assert 1 <= len(nacks) <= 5, len(nacks)
        assert nacks[0].endswith("bytes)"), nacks[0]
        assert any("unknown type" in line and line.endswith("bytes)") for line in lines), text
        m = await proc.metrics("meshd_log_lines_held_back_total")
        assert m["meshd_log_lines_held_back_total"] >= 290, m


async def test_subsets_over_the_limit_are_rejected(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """Finding 9: a service with 4,000 subsets is rejected (its status error names
    ``subsets`` and the limit); no gateway gets its clusters; 64 subsets are taken."""
    async with meshd(etcd_shared, etcd_prefix, tmp_path) as proc:
        registry = EtcdRegistry(etcd_shared.endpoint, prefix=etcd_prefix)
        try:
            huge = {f"v{i}": {"version": f"v{i}"} for i in range(4000)}
            fine = {f"v{i}": {"version": f"v{i}"} for i in range(64)}
            await registry.put(
                etcd_prefix + "services/default/huge",
                json.dumps({"port": 80, "subsets": huge}).encode(),
            )
            rev = await registry.put(
                etcd_prefix + "services/default/fine",
                json.dumps({"port": 80, "subsets": fine}).encode(),
            )
            await proc.wait_ready(rev)

            async def status() -> str | None:
                entry = await registry.get(etcd_prefix + "status/errors/services/default/huge")
                return entry.value.decode() if entry is not None else None

            problem: str | None = await eventually(status, "a status error for the service", 10)
            assert problem is not None and "subsets" in problem, problem
            assert "4000 subsets, at most 64" in problem, problem
        finally:
            await registry.close()
        async with grpc.aio.insecure_channel(proc.target) as channel:
            s = Raw(channel)
            s.send(_req(CLUSTER, node="gw"))
            cds = discovery_pb2.DiscoveryResponse.FromString(await s.read())
            s.call.cancel()
        assert len(cds.resources) == 4 + 1 + 64, len(cds.resources)
