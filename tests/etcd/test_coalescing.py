"""Bursts collapse into one push; a lone change goes out at once (no fixed debounce)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.stream_mesh import BASE
from tests.support.xds_client import RawAds, running_meshd, sotw_client
from xds_server.app import MeshApp
from xds_server.resources import ENDPOINT, ROUTE


def eds_pushes(app: MeshApp) -> float:
    value = app.metrics.registry.get_sample_value("meshd_xds_pushes_total", {"type": "EDS"})
    return value or 0.0


async def test_fifty_endpoint_writes_in_one_transaction_are_one_push() -> None:
    async with running_meshd(BASE) as (registry, app), sotw_client(app.xds_port, "gateway"):
        await asyncio.sleep(0.1)
        before, batches = eds_pushes(app), app.controller.batches
        puts = {
            f"/mesh/endpoints/default/api/b{i}": json.dumps({"address": f"10.9.0.{i}"}).encode()
            for i in range(50)
        }
        await registry.txn(puts=puts)
        await asyncio.sleep(0.2)
        assert app.controller.batches == batches + 1
        assert eds_pushes(app) == before + 1
        # A lone change afterwards is pushed without waiting for more.
        start = time.monotonic()
        await registry.put("/mesh/endpoints/default/api/c", b'{"address": "10.9.1.1"}')
        while eds_pushes(app) < before + 2:
            assert time.monotonic() - start < 0.05, "a lone change waited"
            await asyncio.sleep(0.001)


async def test_writes_queued_during_a_batch_are_taken_together() -> None:
    async with running_meshd(BASE) as (registry, app):
        batches = app.controller.batches
        # 30 separate writes issued back to back: they queue while the loop is busy and
        # are translated in far fewer batches than writes.
        for i in range(30):
            await registry.put(f"/mesh/endpoints/default/api/q{i}", b'{"address": "10.8.0.1"}')
        await asyncio.sleep(0.2)
        assert 1 <= app.controller.batches - batches < 30
        cla = app.cache.get(ENDPOINT, "api.default")
        assert cla is not None and b"10.8.0.1" in cla.body


def holds(got: dict[str, Any], type_url: str, needle: bytes) -> bool:
    """Whether the client's last response of ``type_url`` carries ``needle``."""
    resp = got.get(type_url)
    return resp is not None and any(needle in a.value for a in resp.resources)


async def until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` holds (fails after ``timeout``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "never happened"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_a_burst_to_one_service_goes_out_together_after_its_push_is_in_flight() -> None:
    """A rolling deploy: the first endpoint update goes out at once; those that follow while
    its push is in flight (here: within the 1 s window) are held and go out together."""
    window = 1.0
    async with (
        running_meshd(BASE, coalesce_window=window) as (registry, app),
        sotw_client(app.xds_port, "gateway") as got,
    ):
        await asyncio.sleep(0.1)
        before = eds_pushes(app)
        await registry.put("/mesh/endpoints/default/api/a", b'{"address": "10.7.0.1"}')
        assert await until(lambda: holds(got, ENDPOINT, b"10.7.0.1"), 1.0) < 0.3
        pushed_at = time.monotonic()
        for i in range(2, 12):
            key = f"/mesh/endpoints/default/api/r{i}"
            await registry.put(key, json.dumps({"address": f"10.7.0.{i}"}).encode())
        await asyncio.sleep(0.3)
        assert not holds(got, ENDPOINT, b"10.7.0.11"), "held updates went out early"
        assert eds_pushes(app) == before + 1
        await until(lambda: holds(got, ENDPOINT, b"10.7.0.11"), 3.0)
        assert time.monotonic() - pushed_at >= window - 0.05
        assert eds_pushes(app) == before + 2  # the ten held updates: one push
        assert all(holds(got, ENDPOINT, f"10.7.0.{i}".encode()) for i in range(2, 12))


async def test_a_held_burst_holds_back_no_route_and_no_other_service() -> None:
    async with (
        running_meshd(BASE, coalesce_window=2.0) as (registry, app),
        sotw_client(app.xds_port, "gateway") as got,
    ):
        await asyncio.sleep(0.1)
        await registry.put("/mesh/endpoints/default/api/a", b'{"address": "10.7.0.1"}')
        await until(lambda: holds(got, ENDPOINT, b"10.7.0.1"), 1.0)
        await registry.put("/mesh/endpoints/default/api/a", b'{"address": "10.7.0.2"}')
        # api's update is held for 2 s; a route and web's endpoints are not.
        route = {
            "listener": "public",
            "match": {"prefix": "/held"},
            "destinations": [{"service": "api"}],
        }
        await registry.put("/mesh/routes/default/held", json.dumps(route).encode())
        assert await until(lambda: holds(got, ROUTE, b"/held"), 1.0) < 0.5
        await registry.put("/mesh/endpoints/default/web/a", b'{"address": "10.7.1.1"}')
        assert await until(lambda: holds(got, ENDPOINT, b"10.7.1.1"), 1.0) < 0.5
        assert not holds(got, ENDPOINT, b"10.7.0.2")
        await until(lambda: holds(got, ENDPOINT, b"10.7.0.2"), 3.0)


async def test_clients_that_never_answer_hold_back_no_update() -> None:
    """One client that never reads and one that reads but never ACKs (no nonces) hold the
    same service as a well-behaved one: a burst of endpoint updates is paced on the
    well-behaved client alone, each going out about a coalesce window after the last
    (without the pacing looking past them, every update after the first waited for the
    silent ones to be given up on: 2 s)."""
    async with (
        running_meshd(BASE) as (registry, app),
        grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}") as channel,
        sotw_client(app.xds_port, "gateway") as got,
    ):
        silent = [RawAds(channel), RawAds(channel)]
        for i, raw in enumerate(silent):
            req = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["api.default"])
            req.node.id, req.node.cluster = f"silent-{i}", "gateway"
            raw.send(req)
        await silent[1].read()  # (the other never reads)
        await asyncio.sleep(0.2)
        for i in range(1, 6):
            address = f"10.6.0.{i}".encode()
            await registry.put("/mesh/endpoints/default/api/a", b'{"address": "%s"}' % address)
            took = await until(lambda a=address: holds(got, ENDPOINT, a), 3.0)
            assert took < 0.6, f"update {i} took {took:.2f} s"
            await asyncio.sleep(0.05)
        # The next change, a while after the good client answered: it goes out at once
        # (the push counts as answered when the good client answered, not when the next
        # change looked: that would hold it as long again as it came late).
        await asyncio.sleep(0.4)
        await registry.put("/mesh/endpoints/default/api/a", b'{"address": "10.6.1.1"}')
        took = await until(lambda: holds(got, ENDPOINT, b"10.6.1.1"), 3.0)
        assert took < 0.2, f"a change 0.4 s after the last push took {took:.2f} s"
        for raw in silent:
            raw.call.cancel()
