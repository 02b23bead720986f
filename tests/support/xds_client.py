"""A minimal real ADS (SotW) client over grpc.aio that subscribes like Envoy does."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from adapters.memory import MemoryRegistry
from integration.harness import free_port
from xds_server.app import MeshApp, MeshConfig
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE


@contextlib.asynccontextmanager
async def sotw_client(
    port: int, node_cluster: str, node_id: str = "test-1"
) -> AsyncIterator[dict[str, discovery_pb2.DiscoveryResponse]]:
    """Subscribe CDS, EDS (its clusters), LDS, RDS (its listeners), ACK all; yield the last
    response per type while the stream stays open."""
    got: dict[str, discovery_pb2.DiscoveryResponse] = {}
    queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

        async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            while (item := await queue.get()) is not None:
                yield item

        first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        first.node.id, first.node.cluster = node_id, node_cluster
        queue.put_nowait(first)
        queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
        call = stub.StreamAggregatedResources(requests())
        done = asyncio.Event()

        async def read() -> None:
            async for resp in call:
                got[resp.type_url] = resp
                queue.put_nowait(
                    discovery_pb2.DiscoveryRequest(
                        type_url=resp.type_url,
                        version_info=resp.version_info,
                        response_nonce=resp.nonce,
                        resource_names=_names_for(resp.type_url, got),
                    )
                )
                if resp.type_url == CLUSTER and ENDPOINT not in got:
                    queue.put_nowait(
                        discovery_pb2.DiscoveryRequest(
                            type_url=ENDPOINT, resource_names=_names_for(ENDPOINT, got)
                        )
                    )
                if resp.type_url == LISTENER and ROUTE not in got:
                    queue.put_nowait(
                        discovery_pb2.DiscoveryRequest(
                            type_url=ROUTE, resource_names=_names_for(ROUTE, got)
                        )
                    )
                if len(got) == 4:
                    done.set()

        reader = asyncio.create_task(read())
        try:
            await asyncio.wait_for(done.wait(), 10)
            yield got
        finally:
            queue.put_nowait(None)
            reader.cancel()
            call.cancel()


def _names_for(type_url: str, got: dict[str, discovery_pb2.DiscoveryResponse]) -> list[str]:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.listener.v3 import listener_pb2

    if type_url == ENDPOINT and CLUSTER in got:
        return sorted(cluster_pb2.Cluster.FromString(a.value).name for a in got[CLUSTER].resources)
    if type_url == ROUTE and LISTENER in got:
        return sorted(
            listener_pb2.Listener.FromString(a.value).name for a in got[LISTENER].resources
        )
    return []


@contextlib.asynccontextmanager
async def running_meshd(
    entries: Mapping[str, object], *, metrics: bool = False, **config: Any
) -> AsyncIterator[tuple[MemoryRegistry, MeshApp]]:
    """An in-memory registry holding ``entries`` (key without prefix -> JSON value, or raw
    bytes) and a meshd serving it on a free port; stopped afterwards."""
    registry = MemoryRegistry()
    for key, value in entries.items():
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        await registry.put(registry.prefix + key, raw)
    metrics_at = f"127.0.0.1:{free_port()}" if metrics else None
    config = MeshConfig(xds="127.0.0.1:0", metrics=metrics_at, **config)
    app = MeshApp(registry, config)
    await app.start()
    try:
        yield registry, app
    finally:
        await app.stop()


class RawAds:
    """An ADS stream, SotW or Delta, whose every request the test writes itself."""

    def __init__(self, channel: grpc.aio.Channel, *, delta: bool = False) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(self._requests())

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            yield await self.queue.get()

    def send(self, req: Any) -> None:
        """Queue one DiscoveryRequest (DeltaDiscoveryRequest) to write."""
        self.queue.put_nowait(req)

    async def read(self, timeout: float = 10.0) -> Any:
        """The next response; fails when none comes within ``timeout`` seconds."""
        try:
            resp = await asyncio.wait_for(self.call.read(), timeout)
        except TimeoutError:
            raise AssertionError(f"no response within {timeout} s") from None
        assert resp is not grpc.aio.EOF, "the stream ended"
        return resp
