"""Abuse of meshd's metrics, from outside: client-chosen label values (``node.cluster``)
bounded in length and count and gone with their last proxy, and the metrics HTTP server
(404 for unknown paths, ``/sd/envoy`` publishing only a proxy's own address).

The process-level claims (threads, open files, RSS of a meshd under half-open connections
and long names) are in ``test_metrics_abuse.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from prometheus_client.core import GaugeMetricFamily

from tests.support.metrics import scrape
from tests.support.stream_mesh import BASE
from tests.support.wait import eventually
from tests.support.xds_client import running_meshd
from xds_server.resources import CLUSTER

MB = 1024 * 1024
MAX_LABEL_LENGTH = 128  # meshd's limits (docs/observability.md)
OTHER = "__other__"


def _request(cluster: str, node_id: str, **metadata: Any) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    req.node.id, req.node.cluster = node_id, cluster
    if metadata:
        s = struct_pb2.Struct()
        s.update(metadata)
        req.node.metadata.CopyFrom(s)
    return req


async def _once_then_hang(
    first: discovery_pb2.DiscoveryRequest,
) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
    yield first
    await asyncio.Event().wait()


class _Proxy:
    """A SotW stream that names its node, reads its first answer and stays open."""

    def __init__(self, port: int, cluster: str, node_id: str, **metadata: Any) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.StreamAggregatedResources(
            _once_then_hang(_request(cluster, node_id, **metadata))
        )

    async def first(self) -> Any:
        return await self.call.read()

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _page(port: int) -> bytes:
    return _get(port, "/metrics")[1]


def _clusters(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {v for (_, labels), _ in m.items() for k, v in labels if k == "node_cluster"}


# --------------------------------------------------------------------------- finding 5


async def test_a_node_cluster_over_the_limit_is_refused_and_never_becomes_a_label() -> None:
    async with running_meshd(BASE, metrics=True) as (_, app):
        big = [_Proxy(app.xds_port, f"{i}" + "x" * MB, f"long-{i}") for i in range(8)]
        for proxy in big:
            try:
                await proxy.first()
                raise AssertionError("a 1 MB node.cluster was served")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "node.cluster" in (err.details() or "")
                assert str(MAX_LABEL_LENGTH) in (err.details() or "")
            finally:
                await proxy.close()
        # A name at the limit is a name; meshd serves it and everyone else.
        at_limit = "c" * MAX_LABEL_LENGTH
        ok = _Proxy(app.xds_port, at_limit, "at-limit")
        assert (await ok.first()).resources
        page = await asyncio.to_thread(_page, app.metrics_port)
        await ok.close()
    assert len(page) < 256 * 1024, len(page)
    assert b"x" * 200 not in page
    assert f'node_cluster="{at_limit}"'.encode() in page


async def test_a_clusters_series_go_when_its_last_proxy_leaves() -> None:
    async with running_meshd(BASE, metrics=True) as (_, app):
        a, b = (_Proxy(app.xds_port, "leaving", f"leaving-{i}") for i in range(2))
        stay = _Proxy(app.xds_port, "staying", "staying-1")
        for p in (a, b, stay):
            await p.first()
        m = await asyncio.to_thread(scrape, app.metrics_port)
        key = ("meshd_connected_proxies", (("node_cluster", "leaving"), ("protocol", "sotw")))
        assert m[key] == 2
        await a.close()
        m = await eventually(
            lambda: scrape(app.metrics_port),
            "one proxy of 'leaving' left",
            10,
            until=lambda m: m.get(key) == 1,
            blocking=True,
        )
        await b.close()
        m = await eventually(
            lambda: scrape(app.metrics_port),
            "no series of 'leaving' in any family",
            10,
            until=lambda m: "leaving" not in _clusters(m),
            blocking=True,
        )
        assert "staying" in _clusters(m)
        await stay.close()


async def test_client_labels_are_capped_in_count_into_an_other_series() -> None:
    async with running_meshd(BASE, metrics=True) as (_, app):
        app.metrics.label_guard.max_values = 3
        proxies = [_Proxy(app.xds_port, f"cluster-{i}", f"node-{i}") for i in range(7)]
        for p in proxies:
            await p.first()
        m = await asyncio.to_thread(scrape, app.metrics_port)
        for p in proxies:
            await p.close()
    connected = {
        dict(labels)["node_cluster"]: v
        for (name, labels), v in m.items()
        if name == "meshd_connected_proxies"
    }
    assert len(connected) == 4 and connected[OTHER] == 4, connected
    assert sum(connected.values()) == 7
    dropped = ("meshd_metrics_series_dropped_total", (("metric", "meshd_connected_proxies"),))
    assert m[dropped] >= 4
    assert len(_clusters(m)) == 4


async def test_every_rendered_label_value_is_bounded() -> None:
    """Whatever a collector yields (load reports name node clusters and endpoints too)
    is shortened on the way out, with a marker, and counted."""

    class Hostile:
        def describe(self) -> list[GaugeMetricFamily]:
            return []

        def collect(self) -> list[GaugeMetricFamily]:
            family = GaugeMetricFamily("test_hostile", "labels from a client", labels=["source"])
            family.add_metric(["s" * MB], 1)
            family.add_metric(["t" * MB], 2)
            return [family]

    async with running_meshd(BASE, metrics=True) as (_, app):
        app.metrics.registry.register(Hostile())
        m = await asyncio.to_thread(scrape, app.metrics_port)
        counted = await asyncio.to_thread(scrape, app.metrics_port)  # (counted as it rendered)
    values = [dict(labels)["source"] for (name, labels), _ in m.items() if name == "test_hostile"]
    assert len(values) == 2 and len(set(values)) == 2
    assert all(len(v) == MAX_LABEL_LENGTH and "...#" in v for v in values), values
    truncated = ("meshd_metrics_label_values_truncated_total", (("metric", "test_hostile"),))
    assert counted[truncated] >= 2


# --------------------------------------------------------------------------- finding 7


async def test_unknown_paths_are_not_found_and_metrics_still_answer() -> None:
    async with running_meshd(BASE, metrics=True) as (_, app):
        port = app.metrics_port
        for path in ("/", "/foo", "/metricsx", "/sd/envoy/x", "/metrics/../admin"):
            status, body = await asyncio.to_thread(_get, port, path)
            assert status == 404, (path, status)
            assert b"meshd_" not in body
        assert (await asyncio.to_thread(_get, port, "/metrics", "POST"))[0] == 405
        status, body = await asyncio.to_thread(_get, port, "/metrics")
        assert status == 200 and b"meshd_registry_revision" in body
        status, body = await asyncio.to_thread(_get, port, "/sd/envoy")
        assert status == 200 and json.loads(body) == []
        # Not HTTP at all: 400, and the server goes on.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01 hello\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400")
        assert (await asyncio.to_thread(_get, port, "/metrics"))[0] == 200


async def test_sd_lists_only_a_proxys_own_address() -> None:
    """A proxy names its admin address in its node metadata; Prometheus scrapes what
    ``/sd/envoy`` lists, so an address that is not the proxy's (a cloud metadata service)
    must not be listed. Loopback counts as the proxy's own when it connects from
    loopback (an Envoy beside meshd)."""
    async with running_meshd(BASE, metrics=True) as (_, app):
        attacker = _Proxy(
            app.xds_port, "gateway", "attacker", admin_port=80, admin_host="169.254.169.254"
        )
        other_host = _Proxy(
            app.xds_port, "gateway", "other", admin_port=9100, admin_host="10.1.2.3"
        )
        by_name = _Proxy(app.xds_port, "gateway", "named", admin_port=9100, admin_host="internal")
        local = _Proxy(app.xds_port, "gateway", "local", admin_port=9901, admin_host="127.0.0.1")
        wildcard = _Proxy(app.xds_port, "sidecar", "wild", admin_port=9902, admin_host="0.0.0.0")
        proxies = [attacker, other_host, by_name, local, wildcard]
        for p in proxies:
            await p.first()
        status, body = await asyncio.to_thread(_get, app.metrics_port, "/sd/envoy")
        for p in proxies:
            await p.close()
    assert status == 200
    listed = {g["targets"][0]: g["labels"]["node_id"] for g in json.loads(body)}
    assert listed == {"127.0.0.1:9901": "local", "127.0.0.1:9902": "wild"}, listed
