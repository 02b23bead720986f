"""Bursts collapse into one push; a lone change goes out at once (no fixed debounce)."""

from __future__ import annotations

import asyncio
import json
import time

from tests.support.stream_mesh import BASE
from tests.support.xds_client import running_meshd, sotw_client
from xds_server.app import MeshApp
from xds_server.resources import ENDPOINT


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
