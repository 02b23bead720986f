"""Stream observers: the ADS servicer tells each subscribed observer what happens on a
stream (SotW and Delta), and calls only the hooks an observer overrides."""

from __future__ import annotations

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.stream_mesh import BASE
from tests.support.wait import eventually
from tests.support.xds_client import RawAds, running_meshd
from xds_server.cache import Watcher
from xds_server.resources import LISTENER
from xds_server.server.base import RequestOutcome
from xds_server.server.connections import Connection, XdsResponse, XdsStream
from xds_server.server.observers import StreamHooks, StreamObserver


class Recorder(StreamObserver):
    """Every hook, as (event, detail)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.keys: set[int] = set()

    def opened(self, key: Watcher, generation: int) -> None:
        self.keys.add(id(key))
        self.seen.append(("opened", ""))

    def request(self, stream: XdsStream, outcome: RequestOutcome | None) -> None:
        self.seen.append(("request", outcome.kind if outcome else "-"))

    def connected(self, conn: Connection) -> None:
        self.seen.append(("connected", f"{conn.stream.node_id} {conn.node_cluster}"))

    def pushed(self, stream: XdsStream, resp: XdsResponse, from_change: bool) -> None:
        self.seen.append(("pushed", f"{resp.type_url == LISTENER} {from_change}"))

    def synced(self, key: Watcher, generation: int) -> None:
        assert id(key) in self.keys  # the same key as opened
        self.seen.append(("synced", ""))

    def closed(self, key: Watcher, stream: XdsStream, conn: Connection | None) -> None:
        assert id(key) in self.keys
        self.seen.append(("closed", conn.stream.node_id if conn else "-"))


class PushesOnly(StreamObserver):
    def pushed(self, stream: XdsStream, resp: XdsResponse, from_change: bool) -> None:
        pass


def test_only_overridden_hooks_are_bound() -> None:
    pushes, recorder = PushesOnly(), Recorder()
    hooks = StreamHooks([pushes, recorder])
    assert hooks.pushed == (pushes.pushed, recorder.pushed)
    assert hooks.request == (recorder.request,)
    assert StreamHooks([pushes]).closed == ()


def _node(req: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest) -> None:
    req.node.id, req.node.cluster = "gw-1", "gateway"


async def test_observers_hear_a_sotw_and_a_delta_stream_from_open_to_close() -> None:
    async with running_meshd(BASE) as (_, app):
        recorder = Recorder()
        app.ads.hooks = StreamHooks([recorder])
        xds = f"127.0.0.1:{app.xds_port}"
        for delta in (False, True):
            recorder.seen.clear()
            async with grpc.aio.insecure_channel(xds) as channel:
                ads = RawAds(channel, delta=delta)
                first: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest
                if delta:
                    first = discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER)
                else:
                    first = discovery_pb2.DiscoveryRequest(type_url=LISTENER)
                _node(first)
                ads.send(first)
                resp = await ads.read()
                ack: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest
                if delta:
                    ack = discovery_pb2.DeltaDiscoveryRequest(
                        type_url=LISTENER, response_nonce=resp.nonce
                    )
                else:
                    ack = discovery_pb2.DiscoveryRequest(
                        type_url=LISTENER, response_nonce=resp.nonce, version_info=resp.version_info
                    )
                ads.send(ack)
                await eventually(
                    lambda: _synced_after_ack(recorder.seen),
                    "in sync after the ACK",
                    4.0,
                    interval=0.02,
                )
                ads.call.cancel()
            await eventually(lambda: recorder.seen[-1][0] == "closed", "closed", 4.0, interval=0.02)
            # (An empty stream is in sync at once: "synced" may also come before requests.)
            events = [e for e in recorder.seen if e[0] != "synced"]
            assert events == [
                ("opened", ""),
                ("request", "initial"),
                ("connected", "gw-1 gateway"),
                ("pushed", "True False"),
                ("request", "ack"),
                ("closed", "gw-1"),
            ], (delta, recorder.seen)


def _synced_after_ack(seen: list[tuple[str, str]]) -> bool:
    return ("request", "ack") in seen and ("synced", "") in seen[seen.index(("request", "ack")) :]
