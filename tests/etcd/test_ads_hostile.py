"""Odd and hostile requests on ADS streams, from a real gRPC client to a real meshd: NACKs
of no current response are stale, not NACKs; bytes that are no request end the stream with
INVALID_ARGUMENT and one short log line."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from tests.support.meshctl import meshctl
from tests.support.metrics import scrape
from tests.support.stream_mesh import BASE
from tests.support.xds_client import RawAds, running_meshd, sotw_client
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.api import admin_pb2_grpc
from xds_server.resources import CLUSTER, LISTENER
from xds_server.resources.resource import string_field
from xds_server.server.ads import ADS_SERVICE

_ERROR = status_pb2.Status(code=3, message="rejected by the proxy")


def _sotw(type_url: str, *, nonce: str = "", error: bool = False, node: str = "") -> object:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce)
    if error:
        req.error_detail.CopyFrom(_ERROR)
    if node:
        req.node.id, req.node.cluster = node, "gateway"
    return req


def _delta(type_url: str, *, nonce: str = "", error: bool = False, node: str = "") -> object:
    req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
    if error:
        req.error_detail.CopyFrom(_ERROR)
    if node:
        req.node.id, req.node.cluster = node, "gateway"
    return req


async def _events_until(call: Any, pushes: set[tuple[str, str]]) -> list[pb.WatchResponse]:
    """Watch events up to the pushes ``(node, type)`` given (read in stream order)."""
    seen: list[pb.WatchResponse] = []
    while pushes:
        ev = await asyncio.wait_for(call.read(), 10)
        seen.append(ev)
        if ev.type == pb.EVENT_TYPE_PUSH:
            pushes.discard((ev.node_id, ev.resource_type))
    return seen


async def test_nacks_of_no_current_response_are_stale() -> None:
    """A NACK whose nonce is not the last one sent for its type (none, on SotW; an unknown
    one, on Delta) is ignored; an error on a stream's first request NACKs nothing."""
    async with running_meshd(BASE, metrics=True, admin="127.0.0.1:0") as (_, app):
        admin_at = f"127.0.0.1:{app.admin_port}"
        admin = grpc.aio.insecure_channel(admin_at)
        watch = admin_pb2_grpc.MeshAdminServiceStub(admin).Watch(
            pb.WatchRequest(types=[pb.EVENT_TYPE_PUSH, pb.EVENT_TYPE_NACK])
        )
        await watch.initial_metadata()
        xds = f"127.0.0.1:{app.xds_port}"
        async with grpc.aio.insecure_channel(xds) as c1, grpc.aio.insecure_channel(xds) as c2:
            sotw, delta = RawAds(c1), RawAds(c2, delta=True)
            # The first request of a type, with an error but no nonce: answered, no NACK.
            sotw.send(_sotw(LISTENER, error=True, node="gw-sotw"))
            delta.send(_delta(CLUSTER, error=True, node="gw-delta"))
            lds, cds = await sotw.read(), await delta.read()
            assert lds.type_url == LISTENER and cds.type_url == CLUSTER
            # NACKs of no current response: none (SotW), an unknown nonce (Delta).
            sotw.send(_sotw(LISTENER, error=True))
            delta.send(_delta(CLUSTER, nonce=f"x{cds.nonce}", error=True))
            # Requests on a stream are handled in order: once these are answered, the
            # NACKs before them were handled.
            sotw.send(_sotw(CLUSTER))
            delta.send(_delta(LISTENER))
            assert (await sotw.read()).type_url == CLUSTER
            assert (await delta.read()).type_url == LISTENER
            events = await _events_until(
                watch,
                {("gw-sotw", "LDS"), ("gw-sotw", "CDS"), ("gw-delta", "CDS"), ("gw-delta", "LDS")},
            )
            assert [e for e in events if e.type == pb.EVENT_TYPE_NACK] == []

            code, out, err = await meshctl("proxy-status", "-o", "json", "--admin", admin_at)
            assert code == 0, err
            states = {
                (p["node_id"], t["type"]): (t["state"], t.get("error", ""))
                for p in json.loads(out)["proxies"]
                for t in p["types"]
            }
            # Sent and not answered yet: STALE, never NACKED.
            for node in ("gw-sotw", "gw-delta"):
                assert states[node, "LDS"] == ("STALE", ""), states
                assert states[node, "CDS"] == ("STALE", ""), states

            m = await asyncio.to_thread(scrape, app.metrics_port)
            nacks = {k: v for k, v in m.items() if k[0] == "meshd_xds_nacks_total" and v}
            assert nacks == {}
            kinds = {
                dict(k[1])["type"] + "/" + dict(k[1])["kind"]: v
                for k, v in m.items()
                if k[0] == "meshd_xds_requests_total"
            }
            assert kinds.get("LDS/nack", 0) == kinds.get("CDS/nack", 0) == 0, kinds
            assert kinds["LDS/stale"] == kinds["CDS/stale"] == 1, kinds
            sotw.call.cancel()
            delta.call.cancel()
        watch.cancel()
        await admin.close()


def _light_but_unparseable() -> bytes:
    """An ACK as Envoy lays it out and big enough to be read lightly first (version, names,
    type, nonce), whose one name is not UTF-8: only the full parse finds it malformed."""
    fields = [
        string_field(1, "v1"),
        b"\x1a" + _varint(70_000) + b"\xff" * 70_000,
        string_field(4, CLUSTER),
        string_field(5, "1.0"),
    ]
    return b"".join(fields)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


GARBAGE = b"\x0a\xff\xff\xff\x0f" + b"\x00" * 100_000  # a length running past the end


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("StreamAggregatedResources", GARBAGE),
        ("StreamAggregatedResources", GARBAGE[:5]),  # small: not read lightly
        ("StreamAggregatedResources", _light_but_unparseable()),
        ("DeltaAggregatedResources", GARBAGE),
    ],
    ids=["sotw", "sotw-small", "sotw-light", "delta"],
)
async def test_malformed_request_bytes_are_invalid_argument(
    method: str, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshd")
    async with running_meshd(BASE) as (_, app):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}") as channel:
            raw = channel.stream_stream(f"/{ADS_SERVICE}/{method}")  # bytes as they are
            call = raw()
            await call.write(data)
            code = await asyncio.wait_for(call.code(), 10)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            details = await call.details()
            assert "malformed" in details and "DiscoveryRequest" in details, details
            assert len(details) < 300
        lines = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "\n" not in lines[0] and len(lines[0]) < 400, lines[0]
        assert f"{len(data)} bytes" in lines[0]
        # The server goes on serving.
        async with sotw_client(app.xds_port, "gateway") as got:
            assert len(got) == 4
