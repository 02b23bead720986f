"""Every place a private key could leak to, as text: the views of the config proxies hold
(CSDS, the admin API's GetProxyConfig, ``meshctl proxy-config`` in each format), the status
keys meshd writes to etcd and meshd's log. The no-private-key tests grep them."""

from __future__ import annotations

import asyncio

import pytest
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from tests.support.fixtures_admin import AdminMesh
from tests.support.meshctl import meshctl
from xds_server.admin.api import admin_pb2 as pb
from xds_server.resources import SECRET


async def config_views(mesh: AdminMesh, nodes: tuple[str, ...], sds_name: str) -> dict[str, str]:
    """View name -> text of CSDS and, per node of ``nodes`` (each holding the SDS secret
    ``sds_name``), GetProxyConfig and ``meshctl proxy-config`` (table, json, SDS yaml)."""
    views: dict[str, str] = {}
    csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(mesh.channel)
    status = await csds.FetchClientStatus(csds_pb2.ClientStatusRequest())
    assert any(g.type_url == SECRET for c in status.config for g in c.generic_xds_configs)
    views["CSDS"] = str(status) + status.SerializeToString().decode("latin-1")
    for node in nodes:
        resp = await mesh.stub.GetProxyConfig(pb.GetProxyConfigRequest(node_id=node))
        assert any(r.type == "SDS" and r.name == sds_name for r in resp.resources)
        views[f"GetProxyConfig {node}"] = str(resp)
        for args in ((), ("-o", "json"), ("--type", "SDS", "-o", "yaml")):
            code, out, err = await meshctl("--admin", mesh.address, "proxy-config", node, *args)
            assert code == 0, err
            views[f"meshctl proxy-config {node} {args}"] = out + err
    return views


async def status_and_log_views(mesh: AdminMesh, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """The status keys under ``<prefix>status/`` and meshd's log records (their messages and
    arguments), as text."""
    stored = await mesh.registry.list_prefix(mesh.prefix + "status/")
    await asyncio.sleep(0.2)  # (log records of the pushes just made)
    return {
        "etcd status/": "".join(e.key + e.value.decode("latin-1") for e in stored.entries),
        "meshd log": "\n".join(r.getMessage() + repr(r.args) for r in caplog.records) + caplog.text,
    }
