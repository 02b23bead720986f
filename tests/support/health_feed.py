"""A registry for the health and topology tests of the admin API, in force in a real meshd,
and the health verdicts (HDS) and load (LRS) fed through the servicers' own entry points."""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import load_report_pb2
from envoy.service.health.v3 import hds_pb2
from envoy.service.load_stats.v3 import lrs_pb2

from tests.support.fixtures_admin import AdminMesh, bearer, entry, seed
from xds_server.admin.api import admin_pb2 as pb
from xds_server.app import MeshApp

CHECK = {"path": "/health", "interval_ms": 1000, "healthy_threshold": 1, "unhealthy_threshold": 1}
WEB_PORTS = {"ep-0": 9001, "ep-1": 9002, "ep-2": 9003, "ep-3": 9004}
CHECKERS = ("c1", "c2", "c3")

MESH = [
    entry(
        pb.KIND_SERVICE,
        "web",
        {"port": 8080, "health_check": CHECK, "scaling": {"target_rps_per_endpoint": 5}},
        ns="shop",
    ),
    *(
        entry(
            pb.KIND_ENDPOINT,
            ep,
            {
                "address": "127.0.0.1",
                "port": port,
                "zone": "zone-a" if ep in ("ep-0", "ep-1") else "zone-b",
                "draining": ep == "ep-3",
            },
            ns="shop",
            service="web",
        )
        for ep, port in WEB_PORTS.items()
    ),
    entry(pb.KIND_SERVICE, "api", {"port": 8081}, ns="shop"),
    entry(pb.KIND_ENDPOINT, "api-0", {"address": "127.0.0.1"}, ns="shop", service="api"),
    entry(
        pb.KIND_SERVICE,
        "db",
        {"port": 5432, "health_check": CHECK, "scaling": {"target_rps_per_endpoint": 100}},
        ns="ops",
    ),
    entry(pb.KIND_ENDPOINT, "db-0", {"address": "127.0.0.1"}, ns="ops", service="db"),
    entry(pb.KIND_LISTENER, "public", {"port": 10000, "nodes": ["gateway"]}),
    entry(
        pb.KIND_ROUTE,
        "to-web",
        {"listener": "public", "destinations": [{"service": "web"}]},
        ns="shop",
    ),
    entry(
        pb.KIND_ROUTE,
        "to-api",
        {"listener": "public", "match": {"prefix": "/api"}, "destinations": [{"service": "api"}]},
        ns="shop",
    ),
    entry(
        pb.KIND_ROUTE,
        "to-db",
        {"listener": "public", "match": {"prefix": "/db"}, "destinations": [{"service": "db"}]},
        ns="ops",
    ),
]


async def seed_mesh(mesh: AdminMesh, token: str | None = None) -> None:
    """The registry above, in force in meshd's health view, with three checkers connected
    (each probes every endpoint: 3 checkers, up to 3 per endpoint)."""
    await seed(mesh.stub, MESH, metadata=bearer(token) if token else None)
    app = mesh.app

    def ready() -> bool:
        web = app.health.services("shop/web")
        return bool(web) and len(web[0].endpoints) == 4 and bool(app.health.services("ops/db"))

    await mesh.wait_for(ready, "the registry in meshd's health view")
    for node in CHECKERS:
        app.health.connect(node, "zone-a")
    assert all(len(keys) == 4 for keys in app.health.assignment().values())


def report(app: MeshApp, verdicts: dict[str, bool], checkers: tuple[str, ...] = CHECKERS) -> None:
    """Every checker in ``checkers`` reports ``verdicts`` (``ep-N`` of shop/web or
    ``db-0`` of ops/db -> healthy) as an HDS EndpointHealthResponse."""
    for node in checkers:
        resp = hds_pb2.EndpointHealthResponse()
        clusters: dict[str, hds_pb2.ClusterEndpointsHealth] = {}
        for ep, healthy in verdicts.items():
            cluster, port = ("db.ops", 5432) if ep == "db-0" else ("web.shop", WEB_PORTS[ep])
            if cluster not in clusters:
                clusters[cluster] = resp.cluster_endpoints_health.add(cluster_name=cluster)
            loc = clusters[cluster].locality_endpoints_health.add()
            eh = loc.endpoints_health.add(
                health_status=health_check_pb2.HEALTHY if healthy else health_check_pb2.UNHEALTHY
            )
            eh.endpoint.address.socket_address.address = "127.0.0.1"
            eh.endpoint.address.socket_address.port_value = port
        app.health.report(node, resp)


EndpointStats = tuple[tuple[int, int, int], ...]  # (port on 127.0.0.1, successful, errors)


def load(
    app: MeshApp,
    node_id: str,
    node_cluster: str,
    endpoints: dict[str, EndpointStats] | None = None,
    **clusters: tuple[int, int],
) -> None:
    """One LRS report from ``node_id``: cluster -> (successful, errors) over one second,
    with ``endpoints[cluster]`` as Envoy's upstream_endpoint_stats."""
    req = lrs_pb2.LoadStatsRequest()
    for cluster, (ok, errors) in clusters.items():
        cs = load_report_pb2.ClusterStats(cluster_name=cluster.replace("__", "."))
        cs.load_report_interval.seconds = 1
        loc = cs.upstream_locality_stats.add(
            total_successful_requests=ok, total_error_requests=errors
        )
        for port, ep_ok, ep_errors in (endpoints or {}).get(cluster, ()):
            ep = loc.upstream_endpoint_stats.add(
                total_successful_requests=ep_ok, total_error_requests=ep_errors
            )
            ep.address.socket_address.address = "127.0.0.1"
            ep.address.socket_address.port_value = port
        req.cluster_stats.append(cs)
    outcome = app.topology.report(node_id, node_cluster, req)
    assert not outcome.refused, outcome


def feed_load(app: MeshApp) -> None:
    """gateway -> shop/web 20 rps (10 % errors), gateway -> ops/db 5 rps, and shop/web's
    sidecar -> shop/api 2 rps (no route allows it); gateway -> shop/api stays idle.
    shop/web's 20 rps by endpoint: 127.0.0.1:9001 12 rps, :9002 8 rps (2 errors); ep-2 at
    :9003 is reported without load (Envoy lists every host it holds)."""
    web_endpoints = {"web__shop": ((9001, 12, 0), (9002, 6, 2), (9003, 0, 0))}
    load(app, "gw-1", "gateway", web_endpoints, web__shop=(18, 2), db__ops=(5, 0))
    # web's sidecar also holds (and so reports) db.ops, unused and allowed by no route:
    # that is no edge.
    load(app, "web-1", "web.shop", api__shop=(2, 0), db__ops=(0, 0))
