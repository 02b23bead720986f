"""A client that stops reading never delays the others (per-stream tasks and inboxes)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

from adapters.memory import MemoryRegistry
from tests.support.wait import eventually
from tests.support.xds_client import sotw_client
from xds_server.app import MeshApp, MeshConfig
from xds_server.resources import CLUSTER

STUCK_CLIENT = """
import sys, time, grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
channel = grpc.insecure_channel("127.0.0.1:" + sys.argv[1])
stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
first = discovery_pb2.DiscoveryRequest(type_url=CDS)
first.node.id, first.node.cluster = "stuck", "gateway"
def requests():
    yield first
    time.sleep(3600)
for response in stub.StreamAggregatedResources(requests()):
    print("subscribed", flush=True)
    time.sleep(3600)
"""

N = 3000  # clusters: each CDS push is ~0.5 MB, far beyond HTTP/2 windows and socket buffers


async def test_stuck_client_does_not_delay_others() -> None:
    registry = MemoryRegistry()
    await registry.put("/mesh/listeners/public", json.dumps({"port": 10000}).encode())
    for i in range(N):
        value = {"port": 80, "circuit_breaker": {"max_connections": 1000 + i}}
        await registry.put(f"/mesh/services/default/s{i}", json.dumps(value).encode())
    app = MeshApp(registry, MeshConfig(xds="127.0.0.1:0", metrics=None))
    await app.start()
    # A real stuck peer: a stopped (SIGSTOP) client process no longer reads its socket,
    # so flow-control windows and socket buffers fill and meshd's writes to it block.
    stuck = subprocess.Popen(
        [sys.executable, "-c", STUCK_CLIENT, str(app.xds_port)], stdout=subprocess.PIPE
    )
    try:
        assert stuck.stdout is not None
        line = await asyncio.to_thread(stuck.stdout.readline)
        assert line.strip() == b"subscribed"
        stuck.send_signal(signal.SIGSTOP)
        async with sotw_client(app.xds_port, "gateway", node_id="healthy") as got:
            for round_ in range(8):
                rev, before = 0, got[CLUSTER].version_info
                for i in range(0, N, N // 10):
                    value = {"port": 80, "circuit_breaker": {"max_connections": 5000 + round_ + i}}
                    key = f"/mesh/services/default/s{i}"
                    rev = await registry.put(key, json.dumps(value).encode())
                while app.revision < rev:  # meshd has taken the change in
                    await asyncio.sleep(0.001)
                version = app.cache.scope("gateway").version(CLUSTER)
                assert version != before
                await eventually(
                    lambda: got[CLUSTER].version_info,
                    f"the healthy client to get CDS version {version} (not held up)",
                    2.0,
                    until=lambda got_version: got_version == version,  # noqa: B023 (awaited here)
                    interval=0.005,
                )
            nonces = {
                c.stream.node_id: c.stream.types[CLUSTER].nonce
                for c in app.streams.connections.values()
            }
        # The stuck stream is still there, and behind: meshd is blocked writing an older
        # push to it, while the healthy client got every round on time.
        assert nonces["stuck"] != nonces["healthy"], nonces
    finally:
        stuck.kill()
        stuck.wait()
        await app.stop(grace=0.1)
