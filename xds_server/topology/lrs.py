"""LRS: every proxy reports its per-cluster load; meshd turns it into the live topology.

:class:`TopologyService` (``app.topology`` for the admin API) holds the
:class:`~xds_server.topology.load.LoadTracker` and the registry state in force,
and answers graph, RED and scaling queries. :class:`LrsServicer` is the thin
grpc.aio servicer of ``envoy.service.load_stats.v3.LoadReportingService``: it
asks each proxy for all clusters every report interval, with per-endpoint
detail, and feeds the reports in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.load_stats.v3 import lrs_pb2
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xds_server.model.names import is_inbound_name
from xds_server.model.view import RegistryView
from xds_server.resources.types import XDS_CLUSTER
from xds_server.stream_auth import (
    StreamAuthenticator,
    StreamPeer,
    authenticated_stream,
    until_ended,
)
from xds_server.stream_limits import StreamGuard
from xds_server.topology.graph import (
    Graph,
    Recommendation,
    ServiceRed,
    build_graph,
    destination_of,
    recommend,
    red,
    service_id,
)
from xds_server.topology.load import ClusterLoad, IngestOutcome, LoadTracker
from xds_server.translate.cluster import ms

log = logging.getLogger("meshd.lrs")

LRS_SERVICE = "envoy.service.load_stats.v3.LoadReportingService"
DEFAULT_WINDOW = 60.0


class TopologyService:
    """The live service graph as this replica sees it (from the proxies connected here)."""

    def __init__(
        self,
        report_interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: Any = None,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self.report_interval = report_interval
        self.clock = clock
        self.metrics = metrics
        self.window = max(window, 2 * report_interval)
        self.tracker = LoadTracker(report_interval)
        self.state: RegistryView | None = None
        self.sources: dict[str, str] = {}
        """Node id -> node cluster of every proxy with an LRS stream here."""
        self.refused: dict[str, int] = {}
        """Report rows refused since start, by reason (also ``meshd_report_rejected_total``)."""
        self._logged: dict[str, float] = {}

    # -- queries (admin API) ------------------------------------------------------------

    def graph(self, window: float | None = None) -> Graph:
        """Nodes and edges over the last ``window`` seconds (default: the service's window)."""
        window = window or self.window
        if self.state is None:
            return Graph((), (), window)
        now = self.clock()
        return build_graph(
            self.state,
            self.tracker.edges(now, window),
            set(self.sources.values()),
            window,
            self.tracker.endpoint_rates(now, window),
        )

    def red(
        self, service: str | None = None, window: float | None = None, *, graph: Graph | None = None
    ) -> list[ServiceRed]:
        """Rate / errors (/ duration: not carried by LRS) per service over ``window``, with
        each service's traffic by upstream endpoint. Without ``service``: every registered
        service, at zero when nothing called it. ``graph``: one already built (a scrape
        computes it once for edges and endpoints)."""
        if service is not None and "/" not in service:
            service = f"default/{service}"
        services = [service_id(r) for r in self.state.services] if self.state is not None else []
        return red(graph or self.graph(window), service, services)

    def recommend(self, window: float | None = None) -> list[Recommendation]:
        """Endpoint counts the observed load needs, for services with ``scaling``."""
        if self.state is None:
            return []
        return recommend(self.state, self.graph(window))

    # -- inputs --------------------------------------------------------------------------

    def registry_changed(self, state: RegistryView) -> None:
        self.state = state

    def report(
        self, node_id: str, node_cluster: str, request: lrs_pb2.LoadStatsRequest
    ) -> IngestOutcome:
        """Fold one LoadStatsRequest in; refused clusters are counted and logged."""
        loads = [_cluster_load(cs) for cs in request.cluster_stats]
        outcome = self.tracker.ingest(
            node_id,
            node_cluster,
            loads,
            self.clock(),
            self._destination,
            # A sidecar's local cluster carries the traffic its inbound listener took in:
            # the callers' own reports already hold those edges.
            ignore=lambda name: name == XDS_CLUSTER or is_inbound_name(name),
        )
        for reason, n in outcome.refused.items():
            self.refused[reason] = self.refused.get(reason, 0) + n
            if self.metrics is not None:
                self.metrics.report_rejected.labels("lrs", reason).inc(n)
        if outcome.refused:
            # One line per proxy per 10 s at most: a flooding proxy must not flood the log.
            now = self.clock()
            if now - self._logged.get(node_id, -1e9) >= 10.0:
                self._logged[node_id] = now
                log.warning(
                    "load report from %s refused in part: %s (totals so far: %s)",
                    node_id,
                    outcome.refused,
                    self.refused,
                )
        return outcome

    def disconnect(self, node_id: str) -> None:
        self.sources.pop(node_id, None)
        self._logged.pop(node_id, None)
        self.tracker.forget_node(node_id)

    def _destination(self, cluster: str) -> str | None:
        ref = destination_of(cluster)
        if ref is None or self.state is None or ref not in self.state.services:
            return None
        return service_id(ref)


def _cluster_load(cs: Any) -> ClusterLoad:
    ok = err = inflight = issued = 0
    endpoints = []
    for loc in cs.upstream_locality_stats:
        ok += loc.total_successful_requests
        err += loc.total_error_requests
        inflight += loc.total_requests_in_progress
        issued += loc.total_issued_requests
        for ep in loc.upstream_endpoint_stats:
            sa = ep.address.socket_address
            endpoints.append(
                (
                    f"{sa.address}:{sa.port_value}",
                    ep.total_successful_requests,
                    ep.total_error_requests,
                    ep.total_requests_in_progress,
                )
            )
    interval = cs.load_report_interval.seconds + cs.load_report_interval.nanos / 1e9
    return ClusterLoad(cs.cluster_name, ok, err, inflight, issued, interval, tuple(endpoints))


class LrsServicer:
    """``StreamLoadStats`` over a :class:`TopologyService`."""

    def __init__(
        self,
        topology: TopologyService,
        auth: StreamAuthenticator | None = None,
        guard: StreamGuard | None = None,
    ) -> None:
        self.topology = topology
        self.guard = guard or StreamGuard()
        """Streams per peer address and request rate (shared with ADS and HDS)."""
        self.auth = auth
        """With ``--xds-auth required``: reports only from authenticated proxies, for the
        identity of their token (their node is bound to it)."""

    def handler(self) -> grpc.GenericRpcHandler:
        stream = grpc.stream_stream_rpc_method_handler(
            self.stream_load_stats,
            request_deserializer=lrs_pb2.LoadStatsRequest.FromString,
            response_serializer=lrs_pb2.LoadStatsResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(LRS_SERVICE, {"StreamLoadStats": stream})

    async def stream_load_stats(
        self, requests: AsyncIterator[lrs_pb2.LoadStatsRequest], context: Any
    ) -> AsyncIterator[lrs_pb2.LoadStatsResponse]:
        async with (
            self.guard.stream(context, "LRS") as where,
            authenticated_stream(self.auth, context, log, "LRS") as peer,
        ):
            requests = self.guard.paced(requests, where)
            if peer is not None:
                # Ended from outside: at once, not at its next report.
                requests = until_ended(peer, requests)
            async for response in self._reporter(requests, context, peer):
                yield response

    async def _reporter(
        self,
        requests: AsyncIterator[lrs_pb2.LoadStatsRequest],
        context: Any,
        peer: StreamPeer | None,
    ) -> AsyncIterator[lrs_pb2.LoadStatsResponse]:
        first = await anext(aiter(requests), None)
        if first is None:
            return
        if not first.node.id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first LoadStatsRequest must carry node.id"
            )
        node_id, node_cluster = first.node.id, first.node.cluster or first.node.id
        if peer is not None and self.auth is not None:
            # Its reports are then the load of its token's identity, never another's.
            self.auth.claim(peer, "lrs", node_id, first.node.cluster)
        self.topology.sources[node_id] = node_cluster
        try:
            yield lrs_pb2.LoadStatsResponse(
                send_all_clusters=True,
                load_reporting_interval=ms(round(self.topology.report_interval * 1000)),
                report_endpoint_granularity=True,
            )
            if first.cluster_stats:
                self.topology.report(node_id, node_cluster, first)
            async for request in requests:
                self.topology.report(node_id, node_cluster, request)
        finally:
            self.topology.disconnect(node_id)


class TopologyCollector(Collector):
    """Per-edge and per-upstream-endpoint gauges computed at scrape time (edges and
    endpoints come and go with traffic).

    Endpoint series exist only for endpoints that carried load in the window, so their
    number is bounded by the endpoints in use, not by every cluster every proxy holds.
    They carry both ``service`` (``ns/name``, like every meshd metric) and
    ``mesh_service`` (``name.ns``, Envoy's stats tag), so a dashboard's ``$service``
    selects Envoy's and meshd's series alike.
    """

    def __init__(self, topology: TopologyService) -> None:
        self.topology = topology

    def describe(self) -> Any:
        # Fixed description: registering does not call collect(), and a scrape by name
        # (``/metrics?name[]=...``) finds these families (prometheus_client leaves a
        # collector without names out of such scrapes).
        yield from self._families()

    def collect(self) -> Any:
        rps, errors, inflight, idle, ep_rps, ep_errors, ep_inflight = self._families()
        graph = self.topology.graph()
        for e in graph.edges:
            key = [e.source, e.destination]
            rps.add_metric(key, e.rps)
            errors.add_metric(key, e.error_rate)
            inflight.add_metric(key, e.in_flight)
            idle.add_metric(key, 1.0 if e.idle else 0.0)
        yield from (rps, errors, inflight, idle)
        for svc in self.topology.red(graph=graph):
            ns, _, name = svc.service.partition("/")
            for ep in svc.endpoints:
                key = [svc.service, f"{name}.{ns}", ep.subset, ep.endpoint]
                ep_rps.add_metric(key, ep.rps)
                ep_errors.add_metric(key, ep.error_rate)
                ep_inflight.add_metric(key, ep.in_flight)
        yield from (ep_rps, ep_errors, ep_inflight)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        labels = ["source", "destination"]
        ep_labels = ["service", "mesh_service", "subset", "endpoint"]
        return (
            GaugeMetricFamily(
                "meshd_edge_requests_per_second",
                "Requests per second on an edge (LRS, sliding window)",
                labels=labels,
            ),
            GaugeMetricFamily(
                "meshd_edge_error_ratio", "Share of an edge's requests that failed", labels=labels
            ),
            GaugeMetricFamily(
                "meshd_edge_in_flight_requests",
                "Requests in flight on an edge at the last report",
                labels=labels,
            ),
            GaugeMetricFamily(
                "meshd_edge_idle",
                "1 when routes allow an edge that carries no traffic",
                labels=labels,
            ),
            GaugeMetricFamily(
                "meshd_endpoint_requests_per_second",
                "Requests per second to an upstream endpoint, summed over every proxy "
                "(LRS, sliding window; endpoints that carried load only)",
                labels=ep_labels,
            ),
            GaugeMetricFamily(
                "meshd_endpoint_error_ratio",
                "Share of an upstream endpoint's requests that failed",
                labels=ep_labels,
            ),
            GaugeMetricFamily(
                "meshd_endpoint_in_flight_requests",
                "Requests in flight to an upstream endpoint at the last reports",
                labels=ep_labels,
            ),
        )
