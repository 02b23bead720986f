"""Load reports (LRS) folded into per-edge rates over a sliding window. Pure.

An edge is (source, destination): the reporting proxy's node ``cluster`` and the
upstream service of the Envoy cluster it reports on. Per upstream endpoint (Envoy's
``upstream_endpoint_stats``), rates are kept the same way, per (source, destination,
subset, endpoint address), over the same report intervals as the cluster's. Every report carries the
requests completed since the previous one; a proxy's rate on an edge is the sum
of its requests over the sum of the report intervals inside the window, and an
edge's rate is the sum over the proxies that report it.

Reports are checked before they count: unknown clusters, counts no proxy can
produce (a "negative" count arrives as a huge uint64), and reports faster than
the interval asked for are refused, counted by reason, and change nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from xds_server.model.names import cluster_subset

__all__ = ["ClusterLoad", "EdgeRate", "EndpointRate", "IngestOutcome", "LoadTracker"]

MAX_RPS = 1_000_000.0
"""More requests per second than this on one edge from one proxy is not a real report."""
MAX_IN_FLIGHT = 10_000_000
MAX_CLUSTERS_PER_REPORT = 100_000


@dataclass(frozen=True, slots=True)
class ClusterLoad:
    """One cluster's load in one report (Envoy ``ClusterStats``, summed over localities)."""

    cluster: str
    successful: int
    errors: int
    in_progress: int
    issued: int = 0
    interval: float = 0.0  # seconds the report covers (0: not said)
    endpoints: tuple[tuple[str, int, int, int], ...] = ()  # (address:port, ok, errors, in-flight)


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """Clusters accepted from one report, and refused ones by reason."""

    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class _Rates:
    """The failed share of the requests a rate counts, for EdgeRate and EndpointRate."""

    __slots__ = ()
    rps: float
    error_rps: float

    @property
    def error_rate(self) -> float:
        """Share of completed requests that failed (0 when idle)."""
        return self.error_rps / self.rps if self.rps > 0 else 0.0


@dataclass(frozen=True, slots=True)
class EdgeRate(_Rates):
    """Traffic on one edge over a window: rates per second, and requests in flight now."""

    source: str
    destination: str
    rps: float
    error_rps: float
    in_flight: int
    reporters: int


@dataclass(frozen=True, slots=True)
class EndpointRate(_Rates):
    """Traffic to one upstream endpoint of a cluster over a window.

    ``source`` is the reporting node cluster (or the graph node, once joined; "" when
    summed over every source); ``subset`` is the Envoy cluster's subset ("" for the
    service's own cluster); ``endpoint`` is ``address:port`` as Envoy reports it.
    """

    source: str
    destination: str
    subset: str
    endpoint: str
    rps: float
    error_rps: float
    in_flight: int


@dataclass(slots=True)
class _Sample:
    at: float
    duration: float
    requests: int
    errors: int
    in_flight: int
    endpoints: tuple[
        tuple[str, int, int, int], ...
    ] = ()  # (address:port, requests, errors, in-flight)


@dataclass(slots=True)
class _Series:
    source: str
    destination: str
    subset: str = ""
    samples: deque[_Sample] = field(default_factory=deque)


class LoadTracker:
    """Per (reporting node, source, destination) samples, pruned to ``horizon`` seconds."""

    def __init__(self, report_interval: float, *, horizon: float = 300.0) -> None:
        if report_interval <= 0:
            raise ValueError(f"report_interval must be > 0, not {report_interval}")
        self.report_interval = report_interval
        self.horizon = max(horizon, 3 * report_interval)
        self._series: dict[tuple[str, str], _Series] = {}  # (node id, cluster) -> series
        self._last_report: dict[str, float] = {}

    def ingest(
        self,
        node_id: str,
        source: str,
        loads: Iterable[ClusterLoad],
        now: float,
        destination_of: Callable[[str], str | None],
        ignore: Callable[[str], bool] = lambda name: False,
    ) -> IngestOutcome:
        """Fold one report in. ``destination_of`` maps an Envoy cluster to its service
        (None: not a cluster of the mesh); clusters for which ``ignore`` is true (the
        bootstrap's own) are skipped silently."""
        loads = list(loads)
        refused: dict[str, int] = {}
        last = self._last_report.get(node_id)
        if len(loads) > MAX_CLUSTERS_PER_REPORT:
            return IngestOutcome(0, {"too_many_clusters": len(loads)})
        if last is not None and now - last < self.report_interval / 4:
            # Envoy reports once per interval; faster is a misbehaving (or hostile) proxy.
            return IngestOutcome(0, {"flood": max(1, len(loads))})
        since_last = now - last if last is not None else self.report_interval
        self._last_report[node_id] = now
        accepted = 0
        for load in loads:
            if ignore(load.cluster):
                continue
            destination = destination_of(load.cluster)
            if destination is None:
                refused["unknown_cluster"] = refused.get("unknown_cluster", 0) + 1
                continue
            # Trust the proxy's own interval only when it is plausible.
            duration = load.interval
            if not 0 < duration <= 10 * self.report_interval:
                duration = min(max(since_last, 0.001), 10 * self.report_interval)
            requests = load.successful + load.errors
            if _absurd(
                load.successful, load.errors, load.in_progress, duration, load.issued
            ) or any(
                _absurd(ok, err, inflight, duration) for _, ok, err, inflight in load.endpoints
            ):
                refused["absurd_count"] = refused.get("absurd_count", 0) + 1
                continue
            series = self._series.get((node_id, load.cluster))
            if series is None or series.source != source:
                subset = cluster_subset(load.cluster)
                series = self._series[(node_id, load.cluster)] = _Series(
                    source, destination, subset
                )
            series.destination = destination
            endpoints = tuple(
                (a, ok + err, err, inflight) for a, ok, err, inflight in load.endpoints
            )
            series.samples.append(
                _Sample(now, duration, requests, load.errors, load.in_progress, endpoints)
            )
            accepted += 1
        self._prune(now)
        return IngestOutcome(accepted, refused)

    def forget_node(self, node_id: str) -> None:
        """A proxy left: its in-flight gauge no longer counts (its rates age out)."""
        self._last_report.pop(node_id, None)
        for key, series in self._series.items():
            if key[0] == node_id and series.samples:
                last = series.samples[-1]
                last.in_flight = 0
                last.endpoints = tuple((a, rq, err, 0) for a, rq, err, _ in last.endpoints)

    def edges(self, now: float, window: float) -> list[EdgeRate]:
        """Rates of every edge with a sample in the last ``window`` seconds (sorted)."""
        acc: dict[tuple[str, str], list[float]] = {}
        horizon = now - window
        for series in self._series.values():
            inside = [s for s in series.samples if s.at > horizon]
            if not inside:
                continue
            duration = sum(s.duration for s in inside)
            # A window shorter than one report still measures that report's rate.
            duration = max(duration, 1e-9)
            row = acc.setdefault((series.source, series.destination), [0.0, 0.0, 0.0, 0.0])
            row[0] += sum(s.requests for s in inside) / duration
            row[1] += sum(s.errors for s in inside) / duration
            row[2] += inside[-1].in_flight
            row[3] += 1
        return [
            EdgeRate(src, dst, rps, err, int(inflight), int(n))
            for (src, dst), (rps, err, inflight, n) in sorted(acc.items())
        ]

    def endpoint_rates(self, now: float, window: float) -> list[EndpointRate]:
        """Rates per (source, destination, subset, endpoint) over the last ``window``
        seconds, for the endpoints that carried load in it (sorted).

        Only endpoints with requests or requests in flight inside the window are listed:
        the rows (and the Prometheus series made from them) stay bounded by the endpoints
        actually in use, not by every endpoint every proxy holds.
        """
        acc: dict[tuple[str, str, str, str], list[float]] = {}
        horizon = now - window
        for series in self._series.values():
            inside = [s for s in series.samples if s.at > horizon]
            if not inside:
                continue
            # The cluster's report intervals are the endpoints' too: the same denominator
            # as the edge's rate, so an edge's endpoints add up to the edge.
            duration = max(sum(s.duration for s in inside), 1e-9)
            per: dict[str, list[int]] = {}
            for sample in inside:
                for address, requests, errors, _ in sample.endpoints:
                    row = per.setdefault(address, [0, 0, 0])
                    row[0] += requests
                    row[1] += errors
            for address, _, _, inflight in inside[-1].endpoints:
                per.setdefault(address, [0, 0, 0])[2] = inflight
            for address, (requests, errors, inflight) in per.items():
                if not requests and not inflight:
                    continue
                key = (series.source, series.destination, series.subset, address)
                row_f = acc.setdefault(key, [0.0, 0.0, 0.0])
                row_f[0] += requests / duration
                row_f[1] += errors / duration
                row_f[2] += inflight
        return [
            EndpointRate(src, dst, subset, ep, rps, err, int(inflight))
            for (src, dst, subset, ep), (rps, err, inflight) in sorted(acc.items())
        ]

    def _prune(self, now: float) -> None:
        horizon = now - self.horizon
        for key in list(self._series):
            samples = self._series[key].samples
            while samples and samples[0].at < horizon:
                samples.popleft()
            if not samples:
                del self._series[key]


def _absurd(ok: int, errors: int, in_flight: int, duration: float, issued: int = 0) -> bool:
    """Counts no proxy can produce (a "negative" count arrives as a huge uint64)."""
    return (
        min(ok, errors, in_flight, issued) < 0
        or (ok + errors) / duration > MAX_RPS
        or issued / duration > MAX_RPS
        or in_flight > MAX_IN_FLIGHT
    )
