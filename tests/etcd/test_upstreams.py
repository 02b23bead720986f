"""A service's ``upstreams`` through the real paths: meshctl and the admin API write and
show it, a bad entry is refused naming the field (at write time, and in status when written
straight to etcd), and a real Delta client of a scoped sidecar is sent nothing for a service
it does not call while a gateway is."""

from __future__ import annotations

import asyncio
import json

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.fixtures_admin import AdminMesh
from tests.support.meshctl import meshctl
from tests.support.xds_client import RawAds
from xds_server.resources import CLUSTER

SHOP = """\
kind: Service
namespace: shop
name: front
spec: {port: 8080, upstreams: [cart, pay/*]}
---
kind: Service
namespace: shop
name: cart
spec: {port: 8080}
---
kind: Service
namespace: shop
name: stock
spec: {port: 8080}
---
kind: Service
namespace: pay
name: card
spec: {port: 8080}
---
kind: Listener
name: out
spec: {port: 15001}
"""


async def test_meshctl_writes_and_shows_upstreams_and_refuses_bad_ones(
    admin_mesh: AdminMesh,
) -> None:
    admin = ("--admin", admin_mesh.address)
    code, out, err = await meshctl("apply", "-f", "-", *admin, stdin=SHOP)
    assert code == 0, err
    code, out, _ = await meshctl("get", "services", "-n", "shop", *admin)
    lines = [line.split() for line in out.splitlines()]
    header = ["NAMESPACE", "NAME", "PORT", "PROTOCOL", "SUBSETS", "UPSTREAMS", "REVISION"]
    assert lines[0] == header
    rows = {row[1]: row[4:6] for row in lines[1:]}
    assert rows["front"] == ["-", "cart,pay/*"]  # (no subsets)
    assert rows["cart"] == ["-", "*"]  # absent: every service
    code, out, _ = await meshctl("get", "service", "front", "-n", "shop", "-o", "json", *admin)
    assert json.loads(out)["items"][0]["spec"]["upstreams"] == ["cart", "pay/*"]

    bad = SHOP.replace("upstreams: [cart, pay/*]", "upstreams: [cart, 'pay*']")
    code, _, err = await meshctl("apply", "-f", "-", *admin, stdin=bad)
    assert code == 1
    assert "services/shop/front: spec.upstreams[1]: 'pay*': the only wildcard is 'ns/*'" in err
    # Written straight to etcd: rejected naming the field, the last good value in force.
    await admin_mesh.put_json("services/shop/front", {"upstreams": ["a/b/c"]})
    state = admin_mesh.app.controller.state
    key = admin_mesh.prefix + "services/shop/front"
    await admin_mesh.wait_for(lambda: key in state.problems, "the rejection")
    assert state.problems[key].field == "upstreams[0]"
    code, out, _ = await meshctl("errors", *admin)
    assert "upstreams[0]" in out and "'a/b/c' must be 'name' or 'namespace/name'" in out
    front = next(s for r, s in state.services.items() if r.name == "front")
    assert front.upstreams is not None and front.upstreams.entries == ("pay/*", "shop/cart")


def _delta_cds(node: str, cluster: str) -> discovery_pb2.DeltaDiscoveryRequest:
    req = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER)
    req.node.id, req.node.cluster = node, cluster
    return req


def _cluster_names(resp: discovery_pb2.DeltaDiscoveryResponse) -> set[str]:
    return {cluster_pb2.Cluster.FromString(r.resource.value).name for r in resp.resources}


async def _collect(ads: RawAds, into: list[discovery_pb2.DeltaDiscoveryResponse]) -> None:
    """Every response of ``ads``, as it comes (a read cancelled midway ends the call)."""
    while True:
        resp = await ads.call.read()
        if resp is grpc.aio.EOF:
            return
        into.append(resp)


async def test_a_delta_sidecar_is_sent_nothing_for_a_service_it_does_not_call(
    admin_mesh: AdminMesh,
) -> None:
    code, _, err = await meshctl("apply", "-f", "-", "--admin", admin_mesh.address, stdin=SHOP)
    assert code == 0, err
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: "out" in state.listeners, "the registry in force")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_mesh.app.xds_port}") as channel:
        sidecar, gateway = RawAds(channel, delta=True), RawAds(channel, delta=True)
        sidecar.send(_delta_cds("front-1", "front.shop"))
        gateway.send(_delta_cds("gw-1", "gateway"))
        first = await sidecar.read()
        assert _cluster_names(first) == {"cart.shop", "card.pay"}
        gw = await gateway.read()
        assert "stock.shop" in _cluster_names(gw)
        gateway.send(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=gw.nonce))
        sidecar.send(
            discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce)
        )
        # A change to a service the sidecar does not call: the gateway hears of it, the
        # sidecar is sent nothing at all (no update, no removal).
        await admin_mesh.put_json("services/shop/stock", {"port": 8080, "connect_timeout_ms": 7})
        resp = await gateway.read()
        assert _cluster_names(resp) == {"stock.shop"}
        gateway.send(
            discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=resp.nonce)
        )
        await admin_mesh.put_json("services/shop/stock2", {"port": 8080})
        assert _cluster_names(await gateway.read()) == {"stock2.shop"}
        got: list[discovery_pb2.DeltaDiscoveryResponse] = []
        reader = asyncio.create_task(_collect(sidecar, got))
        await asyncio.sleep(1.0)
        assert got == []
        # One it calls (a new service of a namespace it declares whole): it is sent that.
        await admin_mesh.put_json("services/pay/bank", {"port": 8080})
        await admin_mesh.wait_for(lambda: bool(got), "the sidecar's update")
        assert _cluster_names(got[0]) == {"bank.pay"} and not got[0].removed_resources
        reader.cancel()
