"""Proxy status, proxy config, CSDS and Watch, with real ADS streams on a real meshd."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2
from google.rpc import status_pb2

from tests.support.fixtures_admin import AdminMesh, entry, seed
from tests.support.xds_client import sotw_client
from xds_server.admin.api import admin_pb2 as pb
from xds_server.resources import CLUSTER, LISTENER, ROUTE

MESH = [
    entry(pb.KIND_SERVICE, "web", {"port": 8080}, ns="shop"),
    entry(pb.KIND_ENDPOINT, "e1", {"address": "127.0.0.1"}, ns="shop", service="web"),
    entry(pb.KIND_LISTENER, "public", {"port": 10000}),
]


class RawAds:
    """An ADS SotW stream whose ACKs and NACKs the test writes itself."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        self.node_id = node_id
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(self._requests())

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await self.queue.get()

    def send(
        self,
        type_url: str,
        resp: discovery_pb2.DiscoveryResponse | None = None,
        *,
        names: list[str] | None = None,
        nack: str = "",
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names or [])
        req.node.id, req.node.cluster = self.node_id, "gateway"
        if resp is not None:
            req.response_nonce = resp.nonce
            req.version_info = "" if nack else resp.version_info
            if nack:
                req.error_detail.CopyFrom(status_pb2.Status(code=3, message=nack))
        self.queue.put_nowait(req)

    async def read(self) -> discovery_pb2.DiscoveryResponse:
        resp = await asyncio.wait_for(self.call.read(), 10)
        assert isinstance(resp, discovery_pb2.DiscoveryResponse)
        return resp


def _types(status: pb.ProxyStatus) -> dict[str, pb.TypeStatus]:
    return {t.type: t for t in status.types}


async def _status(mesh: AdminMesh, node: str) -> pb.ProxyStatus:
    out = await mesh.stub.GetProxyStatus(pb.GetProxyStatusRequest(node_id=node))
    assert len(out.proxies) == 1, out
    return out.proxies[0]


async def test_proxy_status_synced_stale_nacked_and_config(admin_mesh: AdminMesh) -> None:
    await seed(admin_mesh.stub, MESH)
    await admin_mesh.wait_for(lambda: bool(admin_mesh.app.controller.state.listeners), "config")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_mesh.app.xds_port}") as channel:
        ads = RawAds(channel, "gw-1")
        ads.send(LISTENER)
        lds = await ads.read()
        await admin_mesh.wait_for(lambda: bool(admin_mesh.app.streams.connections), "the stream")
        types = _types(await _status(admin_mesh, "gw-1"))
        assert types["LDS"].state == pb.SYNC_STATE_STALE  # sent, not answered
        assert types["LDS"].sent_version == lds.version_info and types["LDS"].resources == 1
        assert types["CDS"].state == pb.SYNC_STATE_NOT_SENT

        ads.send(LISTENER, lds, nack="listener public: invalid filter chain")
        ads.send(ROUTE, names=["public"])
        rds = await ads.read()
        assert rds.type_url == ROUTE
        await admin_mesh.wait_for(lambda: True, "")
        status = await _status(admin_mesh, "gw-1")
        types = _types(status)
        assert types["LDS"].state == pb.SYNC_STATE_NACKED
        assert types["LDS"].error == "listener public: invalid filter chain"
        assert types["LDS"].acked_version == ""
        assert status.node_cluster == "gateway" and status.protocol == "sotw"

        ads.send(ROUTE, rds, names=["public"])  # ACK (repeating the subscription, as Envoy does)
        ads.send(CLUSTER)
        cds = await ads.read()
        ads.send(CLUSTER, cds)
        await asyncio.sleep(0.1)
        types = _types(await _status(admin_mesh, "gw-1"))
        assert types["RDS"].state == pb.SYNC_STATE_SYNCED
        assert types["RDS"].acked_version == rds.version_info
        assert types["CDS"].state == pb.SYNC_STATE_SYNCED and types["CDS"].resources == 1
        assert types["RDS"].last_push.seconds > 0

        cfg = await admin_mesh.stub.GetProxyConfig(
            pb.GetProxyConfigRequest(node_id="gw-1", type="cds")
        )
        assert [(r.type, r.name) for r in cfg.resources] == [("CDS", "web.shop")]
        cluster = json.loads(cfg.resources[0].json)
        assert cluster["@type"] == CLUSTER and cluster["name"] == "web.shop"
        full = await admin_mesh.stub.GetProxyConfig(pb.GetProxyConfigRequest(node_id="gw-1"))
        assert {(r.type, r.name) for r in full.resources} == {
            ("CDS", "web.shop"),
            ("LDS", "public"),
            ("RDS", "public"),
        }
        for bad, code in [
            (pb.GetProxyConfigRequest(node_id="nobody"), grpc.StatusCode.NOT_FOUND),
            (
                pb.GetProxyConfigRequest(node_id="gw-1", type="XDS"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (pb.GetProxyConfigRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin_mesh.stub.GetProxyConfig(bad)
            assert info.value.code() == code

        # The same facts over the standard CSDS service.
        csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(admin_mesh.channel)
        out = await csds.FetchClientStatus(csds_pb2.ClientStatusRequest())
        assert [c.node.id for c in out.config] == ["gw-1"]
        by_name = {(g.type_url, g.name): g for g in out.config[0].generic_xds_configs}
        assert by_name[(LISTENER, "public")].config_status == csds_pb2.ERROR
        assert by_name[(LISTENER, "public")].error_state.details.startswith("listener public")
        assert by_name[(ROUTE, "public")].config_status == csds_pb2.SYNCED
        assert by_name[(CLUSTER, "web.shop")].xds_config.type_url == CLUSTER
        none = await csds.FetchClientStatus(
            csds_pb2.ClientStatusRequest(
                node_matchers=[node_pb2.NodeMatcher(node_id={"prefix": "sidecar-"})],
                exclude_resource_contents=True,
            )
        )
        assert list(none.config) == []
        ads.call.cancel()
    await admin_mesh.wait_for(lambda: not admin_mesh.app.streams.connections, "disconnect")
    out = await admin_mesh.stub.GetProxyStatus(pb.GetProxyStatusRequest())
    assert list(out.proxies) == []


async def test_watch_streams_registry_and_proxy_events(admin_mesh: AdminMesh) -> None:
    stub = admin_mesh.stub
    call = stub.Watch(pb.WatchRequest())
    await call.initial_metadata()  # subscribed from here on
    await seed(stub, MESH)
    await admin_mesh.put_json("services/shop/bad", {"port": -1})
    seen: list[pb.WatchResponse] = []

    async def until(pred: object) -> pb.WatchResponse:
        while True:
            ev = await asyncio.wait_for(call.read(), 10)
            assert isinstance(ev, pb.WatchResponse)
            seen.append(ev)
            if pred(ev):  # type: ignore[operator]
                return ev

    put = await until(lambda e: e.type == pb.EVENT_TYPE_REGISTRY_PUT)
    assert put.key.startswith(admin_mesh.prefix) and put.revision > 0
    rejected = await until(lambda e: e.type == pb.EVENT_TYPE_REGISTRY_REJECTED)
    assert rejected.key == f"{admin_mesh.prefix}services/shop/bad"
    assert "port" in rejected.message
    async with sotw_client(admin_mesh.app.xds_port, "gateway", node_id="gw-7"):
        conn = await until(lambda e: e.type == pb.EVENT_TYPE_PROXY_CONNECTED)
        assert conn.node_id == "gw-7"
        push = await until(lambda e: e.type == pb.EVENT_TYPE_PUSH)
        assert push.node_id == "gw-7" and push.resource_type in {"CDS", "EDS", "LDS", "RDS"}
    gone = await until(lambda e: e.type == pb.EVENT_TYPE_PROXY_DISCONNECTED)
    assert gone.node_id == "gw-7"
    call.cancel()

    # A filtered watch gets only what it asked for.
    only = stub.Watch(pb.WatchRequest(types=[pb.EVENT_TYPE_REGISTRY_DELETE]))
    await only.initial_metadata()
    await admin_mesh.registry.put(f"{admin_mesh.prefix}services/shop/x", b'{"port": 1}')
    await admin_mesh.registry.delete(f"{admin_mesh.prefix}services/shop/x")
    ev = await asyncio.wait_for(only.read(), 10)
    assert ev.type == pb.EVENT_TYPE_REGISTRY_DELETE
    only.cancel()
    bad = stub.Watch(pb.WatchRequest(types=[99]))  # type: ignore[list-item]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bad.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
