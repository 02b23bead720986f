"""Live topology from LRS with real Envoys (issue 6, acceptance 3 and 4).

gateway -> a (the gateway Envoy), a -> b (a's sidecar Envoy, node cluster ``a.default``)
under paced load of known rate; an allowed route gateway -> c that nobody uses is idle.
Malformed and absurd reports from a fake proxy change nothing and are counted. The
rates are read the way people read them: ``meshctl topology`` / ``meshctl recommend``.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import load_report_pb2
from envoy.service.health.v3 import hds_pb2
from envoy.service.load_stats.v3 import lrs_pb2

from integration.harness import free_port
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.hds_mesh import Mesh, mesh_fixture, start_meshd  # noqa: F401  (fixture)
from tests.support.meshctl import meshctl
from tests.support.rig import Load
from xds_server.cli.bootstrap import bootstrap
from xds_server.topology.lrs import LRS_SERVICE


async def test_topology_rates_within_20_percent_and_idle_edge(
    mesh: Mesh, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> None:
    ports = {n: int(backend_factory(n).url.rsplit(":", 1)[1]) for n in ("a", "b", "c")}
    public, outbound = mesh.listener_port, free_port()
    for name, port in ports.items():
        await mesh.put(f"services/default/{name}", {"port": port})
        await mesh.put(f"endpoints/default/{name}/0", {"address": "127.0.0.1"})
    await mesh.put(
        "services/default/b", {"port": ports["b"], "scaling": {"target_rps_per_endpoint": 8}}
    )
    await mesh.put(
        "listeners/public", {"address": "127.0.0.1", "port": public, "nodes": ["gateway"]}
    )
    await mesh.put(
        "listeners/outbound", {"address": "127.0.0.1", "port": outbound, "nodes": ["a.default"]}
    )
    await mesh.put(
        "routes/default/to-a", {"listener": "public", "destinations": [{"service": "a"}]}
    )
    await mesh.put(
        "routes/default/to-c",
        {"listener": "public", "match": {"prefix": "/c"}, "destinations": [{"service": "c"}]},
    )
    await mesh.put(
        "routes/default/a-to-b", {"listener": "outbound", "destinations": [{"service": "b"}]}
    )
    app = await start_meshd(mesh)

    def start(node: str, cluster: str) -> None:
        envoy_factory(bootstrap(node, cluster, xds_port=app.xds_port, admin_port=0), name=node)

    await asyncio.to_thread(start, "gw-1", "gateway")
    await asyncio.to_thread(start, "a-1", "a.default")
    gw = Load(f"http://127.0.0.1:{public}/", rate=40).start()
    side = Load(f"http://127.0.0.1:{outbound}/", rate=20).start()
    admin = ("--admin", f"127.0.0.1:{app.admin_port}")
    window = 6
    try:
        await asyncio.sleep(1.5)  # warm-up: listeners up, first report sent
        t0, gw0, side0 = time.monotonic(), gw.ok, side.ok
        await asyncio.sleep(window)
        # Read through the real CLI while the load still runs: the window meshd measures
        # (the last 6 s before each call) lies inside the steady load measured here.
        (tcode, tout, terr), (rcode, rout, rerr) = await asyncio.gather(
            meshctl("topology", "--window", str(window), "-o", "json", *admin),
            meshctl("recommend", "--window", str(window), "-o", "json", *admin),
        )
        (red_b,) = app.topology.red("b", window=window)
        elapsed = time.monotonic() - t0
        real_gw, real_side = (gw.ok - gw0) / elapsed, (side.ok - side0) / elapsed
    finally:
        gw.stop()
        side.stop()
    assert tcode == 0 and rcode == 0, terr + rerr
    edges = {(e["source"], e["destination"]): e for e in json.loads(tout)["edges"]}
    print(
        "meshctl topology edges:",
        {k: (round(e["rps"], 1), e["idle"]) for k, e in edges.items()},
        f"real gw->a {real_gw:.1f}/s a->b {real_side:.1f}/s",
    )
    assert not gw.failed and not side.failed, (gw.failed, side.failed)
    assert edges[("gateway", "default/a")]["rps"] == pytest.approx(real_gw, rel=0.2)
    assert edges[("default/a", "default/b")]["rps"] == pytest.approx(real_side, rel=0.2)
    idle = edges[("gateway", "default/c")]
    assert idle["idle"] and idle["allowed"] and idle["rps"] == 0
    assert not edges[("gateway", "default/a")]["idle"]
    assert red_b.rps == pytest.approx(real_side, rel=0.2) and red_b.error_rate == 0
    # Envoy's per-endpoint load (upstream_endpoint_stats): b's one backend carries it all.
    (ep_b,) = red_b.endpoints
    assert ep_b.endpoint == f"127.0.0.1:{ports['b']}" and ep_b.subset == ""
    assert ep_b.rps == pytest.approx(red_b.rps)
    (rec,) = json.loads(rout)["services"]
    assert rec["service"] == "default/b" and rec["recommended_endpoints"] == 3  # ~20 rps / 8
    text = app.metrics.registry.get_sample_value(
        "meshd_edge_idle", {"source": "gateway", "destination": "default/c"}
    )
    assert text == 1.0


async def test_malformed_and_absurd_reports_change_nothing(mesh: Mesh) -> None:
    await mesh.put("services/default/a", {"port": 8080, "health_check": {"interval_ms": 1000}})
    await mesh.put("endpoints/default/a/0", {"address": "127.0.0.1"})
    app = await start_meshd(mesh)
    node = base_pb2.Node(id="liar", cluster="gateway")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.xds_port}") as channel:
        lrs = channel.stream_stream(
            f"/{LRS_SERVICE}/StreamLoadStats",
            request_serializer=lrs_pb2.LoadStatsRequest.SerializeToString,
            response_deserializer=lrs_pb2.LoadStatsResponse.FromString,
        )
        call = lrs()
        await call.write(lrs_pb2.LoadStatsRequest(node=node))
        first = await call.read()
        assert first.send_all_clusters and first.load_reporting_interval.seconds == 1

        def stats(cluster: str, ok: int) -> load_report_pb2.ClusterStats:
            cs = load_report_pb2.ClusterStats(cluster_name=cluster)
            cs.load_report_interval.seconds = 1
            cs.upstream_locality_stats.add(total_successful_requests=ok)
            return cs

        await call.write(
            lrs_pb2.LoadStatsRequest(node=node, cluster_stats=[stats("a.default", 10)])
        )
        await asyncio.sleep(0.4)  # more than a quarter interval: not a flood
        good = app.topology.graph(window=30).edges
        assert [(e.source, e.destination) for e in good] == [("gateway", "default/a")]
        await call.write(
            lrs_pb2.LoadStatsRequest(
                node=node,
                cluster_stats=[stats("nope.default", 5), stats("a.default", 2**64 - 1)],
            )
        )
        for _ in range(20):  # a flood, right behind it
            await call.write(
                lrs_pb2.LoadStatsRequest(node=node, cluster_stats=[stats("a.default", 7)])
            )
        await asyncio.sleep(0.3)
        assert app.topology.graph(window=30).edges == good
        assert app.topology.refused == {"unknown_cluster": 1, "absurd_count": 1, "flood": 20}
        reg = app.metrics.registry
        assert reg.get_sample_value(
            "meshd_report_rejected_total", {"protocol": "lrs", "reason": "flood"}
        )
        await call.done_writing()

        # HDS: results for endpoints this proxy was never asked to check are refused.
        hds = channel.stream_stream(
            "/envoy.service.health.v3.HealthDiscoveryService/StreamHealthCheck",
            request_serializer=hds_pb2.HealthCheckRequestOrEndpointHealthResponse.SerializeToString,
            response_deserializer=hds_pb2.HealthCheckSpecifier.FromString,
        )
        call2 = hds()
        await call2.write(
            hds_pb2.HealthCheckRequestOrEndpointHealthResponse(
                health_check_request=hds_pb2.HealthCheckRequest(node=node)
            )
        )
        spec = await call2.read()
        assert [c.cluster_name for c in spec.cluster_health_checks] == ["a.default"]
        lie = hds_pb2.EndpointHealthResponse()
        ceh = lie.cluster_endpoints_health.add(cluster_name="a.default")
        eh = ceh.locality_endpoints_health.add().endpoints_health.add(health_status=2)
        eh.endpoint.address.socket_address.address = "10.9.9.9"
        eh.endpoint.address.socket_address.port_value = 1
        await call2.write(
            hds_pb2.HealthCheckRequestOrEndpointHealthResponse(endpoint_health_response=lie)
        )
        await asyncio.sleep(0.2)
        assert app.health.rejected_reports == 1
        (a,) = app.health.services("a")
        assert a.endpoints[0].status.value == "UNKNOWN"
        await call2.done_writing()
