"""The mesh CA's public face and what never leaks, against a real etcd and meshd.

- ``meshctl ca get`` prints the trust bundle over the admin API and straight from etcd
  (``--etcd``), the same PEM meshd holds, and never a key.
- A proxy that asks for its SDS Secrets gets its private key (the test checks that the key
  is really out there), and then every place an operator or attacker can look is grepped
  for ``PRIVATE KEY``: CSDS, ``meshctl proxy-config`` (table and JSON), GetProxyConfig,
  meshd's log, and etcd's ``/mesh/status/``.
"""

from __future__ import annotations

import logging

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.fixtures_admin import AdminMesh, entry, seed
from tests.support.key_views import config_views, status_and_log_views
from tests.support.meshctl import meshctl
from tests.support.xds_client import RawAds
from xds_server.admin.api import admin_pb2 as pb
from xds_server.resources import SECRET

MESH = [
    entry(pb.KIND_SERVICE, "web", {"port": 8080}, ns="shop"),
    entry(pb.KIND_ENDPOINT, "e1", {"address": "127.0.0.1"}, ns="shop", service="web"),
]
LEAK = "PRIVATE KEY"


async def test_meshctl_ca_get_prints_the_bundle_over_the_admin_api_and_from_etcd(
    admin_mesh: AdminMesh,
) -> None:
    ca = admin_mesh.app.ca
    assert ca is not None
    bundle = ca.bundle_pem.decode()
    code, out, err = await meshctl("--admin", admin_mesh.address, "ca", "get")
    assert (code, err) == (0, "")
    assert out == bundle and "BEGIN CERTIFICATE" in out and LEAK not in out
    resp = await admin_mesh.stub.GetTrustBundle(pb.GetTrustBundleRequest())
    assert resp.bundle_pem == bundle and resp.revision > 0
    endpoint = admin_mesh.etcd.endpoint
    code, out, err = await meshctl(
        "ca", "get", "--etcd", f"127.0.0.1:1,{endpoint}", "--prefix", admin_mesh.prefix
    )
    assert (code, err) == (0, "")
    assert out == bundle
    # Nothing under another prefix: a clear error, exit 1; etcd unreachable: exit 2.
    code, out, err = await meshctl("ca", "get", "--etcd", endpoint, "--prefix", "/nowhere/")
    assert code == 1 and "no trust bundle at /nowhere/ca/bundle" in err and out == ""
    code, _, err = await meshctl("ca", "get", "--etcd", "127.0.0.1:1")
    assert code == 2 and "etcd unreachable" in err


async def _secrets(channel: grpc.aio.Channel, node: str, *, delta: bool) -> tuple[RawAds, bytes]:
    """A proxy of node cluster ``web.shop`` asking for its Secrets: the key it was sent."""
    ads = RawAds(channel, delta=delta)
    if delta:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=SECRET, resource_names_subscribe=["default", "ROOTCA"]
        )
    else:
        req = discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=["default", "ROOTCA"])
    req.node.id, req.node.cluster = node, "web.shop"
    ads.send(req)
    keys: list[bytes] = []
    while not keys:  # (the certificate is issued once the proxy is seen: maybe a push later)
        resp = await ads.read(15)
        for res in resp.resources:
            any_ = res.resource if delta else res
            secret = secret_pb2.Secret.FromString(any_.value)
            if secret.HasField("tls_certificate"):
                keys.append(secret.tls_certificate.private_key.inline_bytes)
        ack_type = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        if delta:
            ads.send(ack_type(type_url=SECRET, response_nonce=resp.nonce))
        else:
            ads.send(
                ack_type(
                    type_url=SECRET,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                    resource_names=["default", "ROOTCA"],
                )
            )
    return ads, keys[0]


async def test_no_private_key_in_csds_proxy_config_logs_or_status(
    admin_mesh: AdminMesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await seed(admin_mesh.stub, MESH)
    await admin_mesh.wait_for(lambda: bool(admin_mesh.app.controller.state.services), "config")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_mesh.app.xds_port}") as channel:
        sotw, key = await _secrets(channel, "web-1", delta=False)
        delta, delta_key = await _secrets(channel, "web-2", delta=True)
        # The proxies did get their key (one identity: the same one), so a dump that
        # showed what they hold would show it.
        assert LEAK.encode() in key and key == delta_key
        dumps: dict[str, str] = {}
        dumps.update(await config_views(admin_mesh, ("web-1", "web-2"), "default"))
        assert "[redacted]" in dumps["GetProxyConfig web-1"]
        dumps.update(await status_and_log_views(admin_mesh, caplog))
        leaked = [where for where, text in dumps.items() if LEAK in text]
        assert leaked == []
        assert "certificate for shop/web" in dumps["meshd log"]  # (the log was captured)
        sotw.call.cancel()
        delta.call.cancel()
