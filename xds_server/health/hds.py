"""HDS: meshd hands health checks to a few proxies and publishes the verdicts in EDS.

:class:`HealthService` owns the :class:`~xds_server.health.monitor.HealthMonitor`
(pure) and everything around it that waits or ticks: which proxies are
connected here, which are connected to other replicas (set by the replica
sync), the periodic evaluation that turns reports into verdicts, and the
callback that re-translates the EDS of services whose verdicts changed.

:class:`HdsServicer` is the thin grpc.aio servicer of
``envoy.service.health.v3.HealthDiscoveryService``: per stream it registers the
proxy as a checker, sends it a ``HealthCheckSpecifier`` whenever its share of
the probes changes, and feeds its ``EndpointHealthResponse`` reports in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.service.health.v3 import hds_pb2
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xds_server.health.aggregate import Status
from xds_server.health.assign import Checker
from xds_server.health.monitor import HealthMonitor, ProbeGroup, ServiceHealth
from xds_server.model import ServiceRef
from xds_server.model.identity import DEFAULT_TRUST_DOMAIN, sidecar
from xds_server.model.view import RegistryView
from xds_server.stream_auth import (
    StreamAuthenticator,
    StreamPeer,
    StreamRejected,
    admit,
    authenticated_stream,
)
from xds_server.stream_limits import StreamGuard
from xds_server.translate.cluster import health_check, ms
from xds_server.translate.mtls import upstream_socket

log = logging.getLogger("meshd.hds")

HDS_SERVICE = "envoy.service.health.v3.HealthDiscoveryService"
_HEALTHY = {health_check_pb2.HEALTHY, health_check_pb2.DEGRADED}
_UNHEALTHY = {health_check_pb2.UNHEALTHY, health_check_pb2.TIMEOUT, health_check_pb2.DRAINING}

HealthChanged = Callable[[dict[ServiceRef, dict[str, int]], set[ServiceRef]], None]
"""Called with every service's EDS health and the services whose health changed."""


class HealthService:
    """Health of the mesh as this replica sees it; ``app.health`` for the admin API."""

    def __init__(
        self,
        report_interval: float,
        *,
        clock: Callable[[], float] = time.time,
        on_change: HealthChanged | None = None,
        metrics: Any = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> None:
        self.monitor = HealthMonitor(report_interval)
        self.trust_domain = trust_domain
        """The mesh's SPIFFE trust domain: probes over mTLS check the callee's id in it."""
        self.clock = clock
        self.on_change = on_change
        self.metrics = metrics
        self.local: dict[str, Checker] = {}
        """Proxies with an HDS stream to this replica: node id -> checker."""
        self.remote: dict[str, list[Checker]] = {}
        """Proxies connected to other replicas, per replica id (from the replica sync)."""
        self.rejected_reports = 0
        self.panicking: set[ServiceRef] = set()
        self._wake: dict[str, asyncio.Event] = {}
        self._state: RegistryView | None = None

    # -- queries (admin API) ------------------------------------------------------------

    def services(self, service: str | None = None) -> list[ServiceHealth]:
        """Aggregated health of every service, or of one (``ns/name`` or ``name``)."""
        if service is None:
            return self.monitor.services()
        ns, _, name = service.rpartition("/")
        return self.monitor.services(ServiceRef(ns or "default", name))

    def endpoint_counts(self) -> list[tuple[str, int, int]]:
        """``(ns/name, healthy endpoints, endpoints)`` of every service (for /metrics)."""
        return self.monitor.endpoint_counts()

    def assignment(self) -> dict[str, frozenset[str]]:
        """Which proxy probes which endpoints (``ns/service/id``)."""
        return self.monitor.assignment()

    # -- inputs --------------------------------------------------------------------------

    def registry_changed(
        self,
        state: RegistryView,
        resolve: Callable[[str], tuple[str, ...]],
        changed: Collection[ServiceRef] | None = None,
    ) -> None:
        """The registry in force changed (``changed`` services; None: any): rebuild their
        probes, and re-spread the checks and wake the HDS streams only if probes moved."""
        self._state = state
        if self.monitor.update_registry(state, resolve, changed):
            self._publish(self.monitor.evaluate(self.clock()))
            self._wake_all()

    def set_remote(self, replica: str, checkers: list[Checker] | None) -> None:
        """Proxies connected to another replica (None: the replica is gone)."""
        if checkers is None:
            gone = self.remote.pop(replica, [])
            for c in gone:
                if c.node_id not in self.local:
                    self.monitor.forget_checker(c.node_id)
        else:
            self.remote[replica] = checkers
        self._reassign()

    def connect(self, node_id: str, zone: str) -> asyncio.Event:
        """A proxy opened an HDS stream; returns the event set when its share changes."""
        self.local[node_id] = Checker(node_id, zone)
        wake = self._wake[node_id] = asyncio.Event()
        self._reassign()
        return wake

    def disconnect(self, node_id: str, wake: asyncio.Event | None = None) -> None:
        """A proxy's HDS stream ended; with ``wake`` (what :meth:`connect` returned), only
        if no newer stream of the same node id connected since."""
        if wake is not None and self._wake.get(node_id) is not wake:
            return
        self.local.pop(node_id, None)
        self._wake.pop(node_id, None)
        if not any(c.node_id == node_id for cs in self.remote.values() for c in cs):
            self.monitor.forget_checker(node_id)
        self._reassign()

    def report(self, node_id: str, response: hds_pb2.EndpointHealthResponse) -> None:
        """Fold one proxy's EndpointHealthResponse in (bad rows are counted and logged)."""
        results = []
        bad = len(response.endpoints_health)  # the deprecated form names no cluster
        for cluster in response.cluster_endpoints_health:
            for locality in cluster.locality_endpoints_health:
                for eh in locality.endpoints_health:
                    sa = eh.endpoint.address.socket_address
                    if eh.health_status in _HEALTHY:
                        healthy = True
                    elif eh.health_status in _UNHEALTHY:
                        healthy = False
                    else:
                        continue  # UNKNOWN: not checked yet
                    results.append((cluster.cluster_name, sa.address, sa.port_value, healthy))
        outcome = self.monitor.ingest(node_id, results, self.clock())
        bad += outcome.unknown
        if bad:
            self.rejected_reports += bad
            if self.metrics is not None:
                self.metrics.report_rejected.labels("hds", "unknown_endpoint").inc(bad)
            log.warning(
                "%s reported %d endpoint(s) it was not asked to check; ignored", node_id, bad
            )
        self._publish(self.monitor.evaluate(self.clock()))

    # -- the periodic part --------------------------------------------------------------

    async def run(self) -> None:
        """Re-evaluate as reports age (stale reports make verdicts UNKNOWN)."""
        period = min(self.monitor.report_interval, 1.0) / 2
        while True:
            await asyncio.sleep(period)
            self._publish(self.monitor.evaluate(self.clock()))

    def evaluate_now(self) -> None:
        """Recompute verdicts (after remote reports came in)."""
        self._publish(self.monitor.evaluate(self.clock()))

    def _publish(self, changed: set[ServiceRef]) -> None:
        if not changed:
            return
        for ref in sorted(changed, key=lambda r: (r.namespace, r.name)):
            panic = self.monitor.all_unhealthy(ref)
            if panic and ref not in self.panicking:
                self.panicking.add(ref)
                log.error(
                    "every endpoint of %s/%s is unhealthy: Envoy's panic threshold keeps "
                    "sending traffic to all of them",
                    ref.namespace,
                    ref.name,
                )
                if self.metrics is not None:
                    self.metrics.health_panic.labels(f"{ref.namespace}/{ref.name}").inc()
            elif not panic:
                self.panicking.discard(ref)
        if self.on_change is not None:
            self.on_change(self.monitor.all_eds_health(), changed)

    def _reassign(self) -> None:
        before = self.monitor.assignment()
        every = dict(self.local)
        for checkers in self.remote.values():
            for c in checkers:
                every.setdefault(c.node_id, c)
        self.monitor.set_checkers(every.values())
        after = self.monitor.assignment()
        for node, wake in self._wake.items():
            if before.get(node) != after.get(node):
                wake.set()

    def _wake_all(self) -> None:
        for wake in self._wake.values():
            wake.set()

    def specifier(self, node_id: str) -> hds_pb2.HealthCheckSpecifier:
        """What ``node_id`` must probe now, as Envoy's HealthCheckSpecifier."""
        interval_ms = round(self.monitor.interval_for(node_id) * 1000)
        spec = hds_pb2.HealthCheckSpecifier(interval=ms(interval_ms))
        for group in self.monitor.assignment_for(node_id):
            spec.cluster_health_checks.append(cluster_health_check(group, self.trust_domain))
        return spec


def cluster_health_check(
    group: ProbeGroup, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> hds_pb2.ClusterHealthCheck:
    """One service's probes as an HDS ClusterHealthCheck, grouped by zone; over mTLS for a
    service that takes it, exactly as its callers connect (the checker's own certificate,
    the service's SPIFFE id checked), so a ``strict`` service is probed, not refused."""
    check = health_check(group.check, group.protocol)
    # An HDS cluster never carries traffic, and Envoy probes traffic-less clusters only
    # every no_traffic_interval (60 s by default): probe at the service's interval instead.
    check.no_traffic_interval.CopyFrom(check.interval)
    check.no_traffic_healthy_interval.CopyFrom(check.interval)
    out = hds_pb2.ClusterHealthCheck(cluster_name=group.cluster, health_checks=[check])
    if group.mtls:
        # A match without criteria applies to every endpoint (Cluster.TransportSocketMatch).
        out.transport_socket_matches.add(
            name="mtls",
            transport_socket=upstream_socket(
                sidecar(group.service).spiffe_id(trust_domain), group.protocol
            ),
        )
    zones: dict[str, hds_pb2.LocalityEndpoints] = {}
    for probe in group.probes:
        loc = zones.get(probe.zone)
        if loc is None:
            loc = zones[probe.zone] = out.locality_endpoints.add(
                locality=base_pb2.Locality(zone=probe.zone)
            )
        ep = loc.endpoints.add()
        ep.address.socket_address.address = probe.address
        ep.address.socket_address.port_value = probe.port
    return out


class HdsServicer:
    """``StreamHealthCheck`` over a :class:`HealthService`."""

    def __init__(
        self,
        health: HealthService,
        auth: StreamAuthenticator | None = None,
        guard: StreamGuard | None = None,
    ) -> None:
        self.health = health
        self.auth = auth
        """With ``--xds-auth required``: only authenticated checkers, bound to their node."""
        self.guard = guard or StreamGuard()
        """Streams per peer address and request rate (shared with ADS and LRS)."""

    def handler(self) -> grpc.GenericRpcHandler:
        stream = grpc.stream_stream_rpc_method_handler(
            self.stream_health_check,
            request_deserializer=hds_pb2.HealthCheckRequestOrEndpointHealthResponse.FromString,
            response_serializer=hds_pb2.HealthCheckSpecifier.SerializeToString,
        )
        fetch = grpc.unary_unary_rpc_method_handler(
            self.fetch_health_check,
            request_deserializer=hds_pb2.HealthCheckRequestOrEndpointHealthResponse.FromString,
            response_serializer=hds_pb2.HealthCheckSpecifier.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(
            HDS_SERVICE, {"StreamHealthCheck": stream, "FetchHealthCheck": fetch}
        )

    async def fetch_health_check(
        self, request: hds_pb2.HealthCheckRequestOrEndpointHealthResponse, context: Any
    ) -> hds_pb2.HealthCheckSpecifier:
        node = request.health_check_request.node.id
        if not node:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "health_check_request.node.id is required"
            )
        if self.auth is not None:
            try:
                peer = await admit(self.auth, context.invocation_metadata())
                try:
                    self.auth.claim(
                        peer, "hds-fetch", node, request.health_check_request.node.cluster
                    )
                finally:
                    self.auth.release(peer)
            except StreamRejected as exc:
                await context.abort(exc.code, exc.message)
        return self.health.specifier(node)

    async def stream_health_check(
        self,
        requests: AsyncIterator[hds_pb2.HealthCheckRequestOrEndpointHealthResponse],
        context: Any,
    ) -> AsyncIterator[hds_pb2.HealthCheckSpecifier]:
        async with (
            self.guard.stream(context, "HDS") as where,
            authenticated_stream(self.auth, context, log, "HDS") as peer,
        ):
            paced = self.guard.paced(requests, where)
            async for spec in self._checker(paced, context, peer):
                yield spec

    async def _checker(
        self,
        requests: AsyncIterator[hds_pb2.HealthCheckRequestOrEndpointHealthResponse],
        context: Any,
        peer: StreamPeer | None,
    ) -> AsyncIterator[hds_pb2.HealthCheckSpecifier]:
        first = await anext(aiter(requests), None)
        if first is None:
            return
        node = first.health_check_request.node
        if not node.id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first HDS message must be a health_check_request with node.id",
            )
        node_id = node.id
        if peer is not None and self.auth is not None:
            # Bound before it is a checker: its reports count only for the endpoints
            # assigned to this node, and the node is its token's identity's.
            self.auth.claim(peer, "hds", node_id, node.cluster)
        wake = self.health.connect(node_id, node.locality.zone)
        if peer is not None:
            peer.on_end(wake.set)  # revoked or replaced: end the stream
        log.info("HDS stream from %s (zone %r)", node_id, node.locality.zone)

        async def read() -> None:
            async for msg in requests:
                if msg.HasField("endpoint_health_response"):
                    self.health.report(node_id, msg.endpoint_health_response)

        reader = asyncio.create_task(read(), name=f"hds-read-{node_id}")
        sent: bytes | None = None
        try:
            wake.set()
            while True:
                waiter = asyncio.ensure_future(wake.wait())
                done, _ = await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    waiter.cancel()
                    reader.result()
                    return
                wake.clear()
                if peer is not None:
                    peer.check()
                spec = self.health.specifier(node_id)
                data = spec.SerializeToString(deterministic=True)
                if data != sent:
                    sent = data
                    yield spec
        finally:
            reader.cancel()
            self.health.disconnect(node_id, wake)
            log.info("HDS stream from %s closed", node_id)


def status_name(status: Status) -> str:
    return status.value


class HealthCollector(Collector):
    """``meshd_service_endpoints{service,state}`` computed at scrape time.

    At scrape time rather than when verdicts change: a service whose verdicts never
    change (no ``health_check``, or no report yet) still has its series, and a deleted
    service's series goes with it instead of lingering at its last value.
    """

    def __init__(self, health: HealthService) -> None:
        self.health = health

    def describe(self) -> Any:
        # Fixed description, so registering does not call collect().
        yield self._family()

    def collect(self) -> Any:
        family = self._family()
        for service, healthy, total in self.health.endpoint_counts():
            family.add_metric([service, "healthy"], healthy)
            family.add_metric([service, "total"], total)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "meshd_service_endpoints",
            "Endpoints of a service by aggregated health (state: healthy, total)",
            labels=["service", "state"],
        )
