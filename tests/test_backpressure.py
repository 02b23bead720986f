"""A client that stops reading never delays the others (per-stream tasks and inboxes)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from adapters.memory import MemoryRegistry
from tests.xds_client import sotw_client
from xds_server.app import MeshApp, MeshConfig
from xds_server.translate import CLUSTER


async def test_stuck_client_does_not_delay_others() -> None:
    registry = MemoryRegistry()
    await registry.put("/mesh/listeners/public", json.dumps({"port": 10000}).encode())
    # Enough clusters that one CDS response is far larger than an HTTP/2 flow-control
    # window: a client that never reads blocks meshd's writes to it after the first.
    for i in range(400):
        value = {"port": 80, "circuit_breaker": {"max_connections": 1000 + i}}
        await registry.put(f"/mesh/services/default/s{i}", json.dumps(value).encode())
    app = MeshApp(registry, MeshConfig(xds="127.0.0.1:0", metrics=None))
    await app.start()
    stuck_channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{app.xds_port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )
    try:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(stuck_channel)

        async def stuck_requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
            first.node.id, first.node.cluster = "stuck", "gateway"
            yield first
            await asyncio.Event().wait()  # never ACKs, never reads

        stuck_call = stub.StreamAggregatedResources(stuck_requests())
        async with sotw_client(app.xds_port, "gateway", node_id="healthy") as got:
            for round_ in range(5):
                # Change every cluster: the stuck stream's writes are now blocked.
                for i in range(0, 400, 40):
                    value = {"port": 80, "circuit_breaker": {"max_connections": 5000 + round_ + i}}
                    await registry.put(f"/mesh/services/default/s{i}", json.dumps(value).encode())
                version = app.cache.scope("gateway").version(CLUSTER)
                start = time.monotonic()
                while got[CLUSTER].version_info != version:
                    assert time.monotonic() - start < 2.0, "healthy client was held up"
                    await asyncio.sleep(0.005)
        # The stuck stream is still connected (blocked in its own write), yet nobody waited.
        assert "stuck" in {c.stream.node_id for c in app.streams.connections.values()}
        stuck_call.cancel()
    finally:
        await stuck_channel.close()
        await app.stop(grace=0.1)
