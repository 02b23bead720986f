"""CSDS (``envoy.service.status.v3``) through a real gRPC stub on meshd's admin port, with
real ADS streams connected: when each type was last sent, and which nodes a request's
``node_matchers`` select."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, struct_pb2, value_pb2

from tests.support.fixtures_admin import AdminMesh, entry, seed
from xds_server.admin.api import admin_pb2 as pb
from xds_server.resources import CLUSTER, LISTENER

MESH = [
    entry(pb.KIND_SERVICE, "web", {"port": 8080}, ns="shop"),
    entry(pb.KIND_ENDPOINT, "e1", {"address": "127.0.0.1"}, ns="shop", service="web"),
    entry(pb.KIND_LISTENER, "public", {"port": 10000}),
]


class Ads:
    """A SotW stream of one node (id, cluster, metadata) whose requests the test writes."""

    def __init__(
        self, channel: grpc.aio.Channel, node_id: str, metadata: Mapping[str, object]
    ) -> None:
        self.node_id, self.metadata = node_id, metadata
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(self._requests())
        self.first = True

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await self.queue.get()

    def send(self, type_url: str, version: str = "", nonce: str = "") -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=version, response_nonce=nonce
        )
        if self.first:  # the node comes with the first request only, as Envoy sends it
            req.node.id, req.node.cluster = self.node_id, "gateway"
            req.node.metadata.update(self.metadata)
            self.first = False
        self.queue.put_nowait(req)

    async def fetch(self, type_url: str) -> discovery_pb2.DiscoveryResponse:
        """Ask for ``type_url`` (wildcard), read the response, ACK it."""
        self.send(type_url)
        resp = await asyncio.wait_for(self.call.read(), 10)
        assert isinstance(resp, discovery_pb2.DiscoveryResponse) and resp.type_url == type_url
        self.send(type_url, resp.version_info, resp.nonce)
        return resp


async def _connected(mesh: AdminMesh, *nodes: str) -> None:
    await mesh.wait_for(
        lambda: {c.stream.node_id for c in mesh.app.streams.connections.values()} >= set(nodes),
        f"streams of {nodes}",
    )


def _role(matcher: value_pb2.ValueMatcher, *path: str) -> struct_pb2.StructMatcher:
    return struct_pb2.StructMatcher(
        path=[struct_pb2.StructMatcher.PathSegment(key=k) for k in path], value=matcher
    )


def _exact(value: str) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(string_match={"exact": value})


async def test_last_updated_is_when_sent_and_unset_when_never_sent(admin_mesh: AdminMesh) -> None:
    await seed(admin_mesh.stub, MESH)
    await admin_mesh.wait_for(lambda: bool(admin_mesh.app.controller.state.listeners), "config")
    csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(admin_mesh.channel)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_mesh.app.xds_port}") as channel:
        before = time.time()
        first = Ads(channel, "gw-1", {})
        lds = await first.fetch(LISTENER)
        await first.fetch(CLUSTER)
        await _connected(admin_mesh, "gw-1")
        out = await csds.FetchClientStatus(csds_pb2.ClientStatusRequest())
        (config,) = out.config
        versions = {(g.type_url, g.name): g.version_info for g in config.generic_xds_configs}
        for cfg in config.generic_xds_configs:
            assert cfg.HasField("last_updated"), cfg.name
            assert before - 1 <= cfg.last_updated.ToNanoseconds() / 1e9 <= time.time() + 1
        first.call.cancel()
        await admin_mesh.wait_for(lambda: not admin_mesh.app.streams.connections, "disconnect")

        # Reconnected with the listeners it holds: meshd sends it nothing for LDS (the
        # version is current), so no time of sending exists on this stream, and 1970 is
        # not one.
        again = Ads(channel, "gw-1", {})
        again.send(LISTENER, lds.version_info)
        await again.fetch(CLUSTER)
        await _connected(admin_mesh, "gw-1")
        out = await csds.FetchClientStatus(csds_pb2.ClientStatusRequest())
        (config,) = out.config
        by_type = {(g.type_url, g.name): g for g in config.generic_xds_configs}
        held = by_type[(LISTENER, "public")]
        assert held.version_info == versions[(LISTENER, "public")]
        assert held.config_status == csds_pb2.SYNCED
        assert not held.HasField("last_updated"), held.last_updated
        assert by_type[(CLUSTER, "web.shop")].last_updated.seconds >= int(before)
        again.call.cancel()


async def test_node_matchers_select_by_node_metadata(admin_mesh: AdminMesh) -> None:
    await seed(admin_mesh.stub, MESH)
    await admin_mesh.wait_for(lambda: bool(admin_mesh.app.controller.state.listeners), "config")
    csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(admin_mesh.channel)
    nodes: dict[str, dict[str, object]] = {
        "edge-1": {"role": "edge", "site": {"zone": "a", "rack": 3}, "canary": True},
        "edge-2": {"role": "edge", "site": {"zone": "b", "rack": 7}},
        "inner-1": {"role": "inner", "tags": ["blue", "green"]},
        "bare-1": {},
    }
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_mesh.app.xds_port}") as channel:
        streams = [Ads(channel, node, meta) for node, meta in nodes.items()]
        for ads in streams:
            await ads.fetch(LISTENER)
        await _connected(admin_mesh, *nodes)

        async def selected(*matchers: node_pb2.NodeMatcher) -> list[str]:
            req = csds_pb2.ClientStatusRequest(
                node_matchers=list(matchers), exclude_resource_contents=True
            )
            return [c.node.id for c in (await csds.FetchClientStatus(req)).config]

        edge = node_pb2.NodeMatcher(node_metadatas=[_role(_exact("edge"), "role")])
        assert await selected(edge) == ["edge-1", "edge-2"]
        # Every node_metadatas entry must hold, and node_id with them (AND).
        zone_a = _role(_exact("a"), "site", "zone")
        assert await selected(
            node_pb2.NodeMatcher(node_metadatas=[edge.node_metadatas[0], zone_a])
        ) == ["edge-1"]
        assert (
            await selected(
                node_pb2.NodeMatcher(node_id={"exact": "edge-2"}, node_metadatas=[zone_a])
            )
            == []
        )
        # Matchers of other kinds: number range, bool, presence, list element, null.
        racks = value_pb2.ValueMatcher(double_match={"range": {"start": 5, "end": 10}})
        assert await selected(
            node_pb2.NodeMatcher(node_metadatas=[_role(racks, "site", "rack")])
        ) == ["edge-2"]
        canary = value_pb2.ValueMatcher(bool_match=True)
        assert await selected(node_pb2.NodeMatcher(node_metadatas=[_role(canary, "canary")])) == [
            "edge-1"
        ]
        present = value_pb2.ValueMatcher(present_match=True)
        assert await selected(node_pb2.NodeMatcher(node_metadatas=[_role(present, "site")])) == []
        assert await selected(node_pb2.NodeMatcher(node_metadatas=[_role(present, "role")])) == [
            "edge-1",
            "edge-2",
            "inner-1",
        ]
        green = value_pb2.ValueMatcher(list_match={"one_of": _exact("green")})
        assert await selected(node_pb2.NodeMatcher(node_metadatas=[_role(green, "tags")])) == [
            "inner-1"
        ]
        # A path into a missing or non-struct value matches nothing, null included.
        null = value_pb2.ValueMatcher(null_match={})
        assert await selected(node_pb2.NodeMatcher(node_metadatas=[_role(null, "nope")])) == []
        assert (
            await selected(node_pb2.NodeMatcher(node_metadatas=[_role(present, "role", "x")])) == []
        )
        # Several matchers: a node any of them selects (OR), each once.
        inner = node_pb2.NodeMatcher(node_metadatas=[_role(_exact("inner"), "role")])
        assert await selected(edge, inner) == ["edge-1", "edge-2", "inner-1"]
        assert await selected() == sorted(nodes)
        for ads in streams:
            ads.call.cancel()
