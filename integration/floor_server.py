"""The floor: a static ADS server (SotW and Delta) that writes pre-serialized bytes, nothing else.

It is the same idea as ``shared/tools/xds_fanout_floor.py``: whatever meshd adds on top of
this server, for the same clients doing the same thing, is meshd's overhead. It differs only
where the load generator's clients need it to behave like a control plane:

* it answers the first request of each type on a stream with a fixed config (``--services``
  clusters, their ClusterLoadAssignments, listener ``public`` and its route configuration),
  so the clients walk CDS -> EDS -> LDS -> RDS and subscribe to the same names as against
  meshd (a SotW EDS ACK then names as many clusters against both);
* ACKs are read and dropped (the first four types answered, nothing is parsed any more);
* a reconnecting client that says what it holds (SotW ``version_info``, Delta
  ``initial_resource_versions``) is sent nothing: the config never changes;
* ``--tcp`` serves instead what a sidecar that only proxies TCP to ``s0`` gets (cluster and
  endpoints of ``s0``, listener ``tcp-s0``, no routes): the churn figure's "unrelated" scope;
* ``push K`` on stdin writes one small ClusterLoadAssignment of ``s0.default`` whose first
  endpoint has port ``base + K`` (the load generator's marker) to every open stream; ``churn
  K`` does the same with an unrelated cluster. Every message is serialized once, before it is
  needed; each stream gets the same bytes (SotW or Delta framing);
* ``--one CLUSTER`` serves instead the churn benchmark's shape (:mod:`integration.bench_churn`):
  that one cluster of ``--endpoints`` endpoints, the first at ``--marker-address``, listener
  ``public`` and a route configuration whose one route's prefix is ``--route-mark`` and a
  change id. ``push K`` then writes the whole assignment with the first endpoint's port at
  ``base + K``, and ``route K`` the route configuration carrying id ``K`` (the first
  ``--prebuilt`` of each serialized at the start).

    python -m integration.floor_server --port 0 --services 1000 [--endpoints 10]

stdout: ``ready <port>`` once serving; ``streams <sotw> <delta>`` answers ``streams``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from integration.loadgen import CDS, EDS, LDS, MARKER_BASE, RDS, TYPES, raise_nofile_limit

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CHURN_RING = 256  # distinct pre-built churn messages, used in turn


def _address(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def cluster(i: int, name: str = "") -> cluster_pb2.Cluster:
    """A cluster shaped like meshd's default one for a service (EDS over ADS)."""
    return cluster_pb2.Cluster(
        name=name or f"s{i}.default",
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(seconds=1),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
    )


def cla(
    i: int, endpoints: int, first_port: int = 8080, name: str = "", first_address: str = ""
) -> endpoint_pb2.ClusterLoadAssignment:
    """Service ``s<i>``'s endpoints (or cluster ``name``'s, its first at ``first_address``),
    shaped like meshd's (locality, weights, id metadata)."""
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name or f"s{i}.default")
    group = out.endpoints.add()
    group.locality.SetInParent()
    for j in range(endpoints):
        lb = group.lb_endpoints.add()
        sa = lb.endpoint.address.socket_address
        sa.address, sa.port_value = _address(i * endpoints + j), first_port if j == 0 else 8080
        if j == 0 and first_address:
            sa.address = first_address
        lb.load_balancing_weight.value = 100
        lb.metadata.filter_metadata["apg.mesh"].update({"id": f"e{j}"})
    group.load_balancing_weight.value = 100 * endpoints
    return out


def listener(tcp: bool = False) -> listener_pb2.Listener:
    """HTTP listener ``public`` over RDS ``public`` (as meshd's), or a TCP proxy to ``s0``."""
    name = "tcp-s0" if tcp else "public"
    out = listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=10000)
        ),
    )
    if tcp:
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster="s0.default")
        filt = listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy")
        filt.typed_config.Pack(proxy)
    else:
        hcm = hcm_pb2.HttpConnectionManager(
            stat_prefix=name,
            rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=name),
            http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router")],
        )
        hcm.http_filters[0].typed_config.Pack(router_pb2.Router())
        filt = listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager")
        filt.typed_config.Pack(hcm)
    out.filter_chains.add().filters.append(filt)
    return out


def route_config(services: int) -> route_pb2.RouteConfiguration:
    """One virtual host per service, as meshd's default hosts."""
    rc = route_pb2.RouteConfiguration(name="public")
    for i in range(services):
        vh = rc.virtual_hosts.add(name=f"s{i}.default", domains=[f"s{i}.default"])
        vh.routes.add(
            match=route_components_pb2.RouteMatch(prefix="/"),
            route=route_components_pb2.RouteAction(cluster=f"s{i}.default"),
        )
    return rc


def one_route(cluster: str, prefix: str) -> route_pb2.RouteConfiguration:
    """Route configuration ``public``: one host, one route of ``prefix`` to ``cluster``."""
    rc = route_pb2.RouteConfiguration(name="public")
    vh = rc.virtual_hosts.add(name="public", domains=["*"])
    vh.routes.add(
        match=route_components_pb2.RouteMatch(prefix=prefix),
        route=route_components_pb2.RouteAction(cluster=cluster),
    )
    return rc


@dataclass(frozen=True)
class OneService:
    """The churn benchmark's shape: one cluster, its marker endpoint, one marked route."""

    cluster: str
    marker_address: str
    route_mark: str


def _pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _name(msg: Message) -> str:
    # A ClusterLoadAssignment is named by cluster_name, the other three by name.
    return str(getattr(msg, "cluster_name", None) or getattr(msg, "name", ""))


def encode(type_url: str, version: str, msgs: list[Message]) -> tuple[bytes, bytes]:
    """One response of ``msgs``, serialized once in SotW and once in Delta framing."""
    sotw = discovery_pb2.DiscoveryResponse(
        version_info=version, type_url=type_url, nonce=version, resources=[_pack(m) for m in msgs]
    )
    delta = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version,
        type_url=type_url,
        nonce=version,
        resources=[
            discovery_pb2.Resource(name=_name(m), version=version, resource=_pack(m)) for m in msgs
        ],
    )
    return sotw.SerializeToString(), delta.SerializeToString()


class FloorServer:
    """Holds the open streams and the pre-serialized messages."""

    def __init__(
        self,
        services: int,
        endpoints: int,
        base: int,
        prebuilt: int,
        tcp: bool = False,
        one: OneService | None = None,
    ) -> None:
        self.services = services
        self.endpoints = endpoints
        self.base = base
        self.one = one
        self.sotw: set[asyncio.Queue[bytes]] = set()
        self.delta: set[asyncio.Queue[bytes]] = set()
        # --tcp: the scope of a sidecar that only proxies TCP to s0 (one cluster, no routes).
        served = 1 if tcp else services
        self.initial: dict[str, tuple[bytes, bytes]] = {LDS: encode(LDS, "v0", [listener(tcp)])}
        if one is not None:
            self.initial[CDS] = encode(CDS, "v0", [cluster(0, one.cluster)])
            self.initial[EDS] = self._push(0, "v0")
            self.initial[RDS] = self.route(0, "v0")
        else:
            self.initial[CDS] = encode(CDS, "v0", [cluster(i) for i in range(served)])
            self.initial[EDS] = encode(EDS, "v0", [cla(i, endpoints) for i in range(served)])
            self.initial[RDS] = encode(RDS, "v0", [] if tcp else [route_config(services)])
        self.tcp = tcp
        self.pushes = [self._push(k) for k in range(prebuilt)]
        self.routes = [self.route(k) for k in range(prebuilt)] if one is not None else []
        self.churns = [self._churn(k) for k in range(CHURN_RING)]

    def _push(self, k: int, version: str = "") -> tuple[bytes, bytes]:
        name, first = (self.one.cluster, self.one.marker_address) if self.one else ("", "")
        assignment = cla(0, self.endpoints, self.base + k, name, first)
        return encode(EDS, version or f"c{k}", [assignment])

    def route(self, k: int, version: str = "") -> tuple[bytes, bytes]:
        """(--one) The route configuration carrying change id ``k``."""
        assert self.one is not None
        rc = one_route(self.one.cluster, f"{self.one.route_mark}{k}")
        return encode(RDS, version or f"r{k}", [rc])

    def _churn(self, k: int) -> tuple[bytes, bytes]:
        i = 1 + k % max(1, self.services - 1)
        return encode(EDS, f"x{k}", [cla(i, self.endpoints, 20000 + k)])

    def handler(self) -> grpc.GenericRpcHandler:
        # No (de)serializers: requests arrive and responses leave as bytes.
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream(
                        self.sotw,
                        0,
                        discovery_pb2.DiscoveryRequest.FromString,
                        lambda r: bool(r.version_info),
                    )
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream(
                        self.delta,
                        1,
                        discovery_pb2.DeltaDiscoveryRequest.FromString,
                        lambda r: bool(r.initial_resource_versions),
                    )
                ),
            },
        )

    def _stream(
        self,
        streams: set[asyncio.Queue[bytes]],
        framing: int,
        parse: Callable[[bytes], Any],
        holds: Callable[[Any], bool],
    ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]]:  # type: ignore[type-arg]
        initial = self.initial
        expected = len(TYPES) - self.tcp  # a TCP listener names no route configuration

        async def serve(
            requests: AsyncIterator[bytes],
            context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
        ) -> AsyncIterator[bytes]:
            q: asyncio.Queue[bytes] = asyncio.Queue()

            async def read() -> None:
                answered: set[str] = set()
                async for raw in requests:
                    if len(answered) == expected:
                        continue  # an ACK: dropped unread
                    req = parse(raw)
                    t = req.type_url  # type: ignore[attr-defined]
                    if t in initial and t not in answered:
                        answered.add(t)
                        # Nothing here ever changes: a client that comes back holding any
                        # version holds the current one (``docs/xds.md`` point 4, done for free).
                        if not holds(req):
                            q.put_nowait(initial[t][framing])

            reader = asyncio.create_task(read())
            streams.add(q)
            try:
                while True:
                    yield await q.get()
            finally:
                streams.discard(q)
                reader.cancel()

        return serve

    def push(self, msgs: tuple[bytes, bytes]) -> None:
        """Queue the same pre-serialized message on every open stream."""
        for q in self.sotw:
            q.put_nowait(msgs[0])
        for q in self.delta:
            q.put_nowait(msgs[1])


async def run(args: argparse.Namespace) -> None:
    one = OneService(args.one, args.marker_address, args.route_mark) if args.one else None
    floor = FloorServer(args.services, args.endpoints, args.base, args.prebuilt, args.tcp, one)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ]
    )
    server.add_generic_rpc_handlers((floor.handler(),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(f"ready {port}", flush=True)
    while line := await reader.readline():
        cmd, _, arg = line.decode().strip().partition(" ")
        if cmd == "push":
            k = int(arg)
            floor.push(floor.pushes[k] if k < len(floor.pushes) else floor._push(k))
        elif cmd == "route" and floor.one is not None:
            k = int(arg)
            floor.push(floor.routes[k] if k < len(floor.routes) else floor.route(k))
        elif cmd == "churn":
            if not floor.tcp:  # in the TCP scope nobody subscribes to the churned clusters
                floor.push(floor.churns[int(arg) % CHURN_RING])
        elif cmd == "streams":
            print(f"streams {len(floor.sotw)} {len(floor.delta)}", flush=True)
        elif cmd == "quit":
            break
    await server.stop(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--base", type=int, default=MARKER_BASE, help="marker port base (as loadgen)")
    p.add_argument("--prebuilt", type=int, default=1000, help="push messages built at start")
    p.add_argument("--tcp", action="store_true", help="serve a TCP listener to s0 only")
    p.add_argument("--one", default="", help="serve only this cluster (bench_churn's shape)")
    p.add_argument("--marker-address", default="", help="(--one) its first endpoint's address")
    p.add_argument("--route-mark", default="/", help="(--one) its route's prefix before an id")
    raise_nofile_limit()
    asyncio.run(run(p.parse_args()))
    os._exit(0)  # grpc's threads can delay exit; nothing is left to flush


if __name__ == "__main__":
    main()
