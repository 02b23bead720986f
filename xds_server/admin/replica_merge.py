"""Whole-mesh answers from each replica's part. Pure: no I/O.

Every replica answers for the proxies connected to it (their streams, their load
reports), already filtered for the caller's token; these functions join the parts:

- proxy status: every part's proxies, by node id then replica;
- topology: an edge's rates, errors and requests in flight are the sums over the parts
  (each proxy reports its load to one replica at a time), ``allowed`` if any part allows
  it, ``idle`` when no part saw traffic on it; endpoints summed the same way;
- service metrics: sums per service and per upstream endpoint;
- recommendations: the observed load summed, the endpoints it needs computed again.

Health verdicts need no merge here: replicas already share their probes' reports through
etcd and compute the same verdicts (:mod:`xds_server.health.sync`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from xds_server.admin.api import admin_pb2 as pb
from xds_server.topology.graph import needed_endpoints

__all__ = [
    "merge_proxy_status",
    "merge_recommendations",
    "merge_service_metrics",
    "merge_topology",
]


def merge_proxy_status(parts: Sequence[pb.GetProxyStatusResponse]) -> list[pb.ProxyStatus]:
    """Every part's proxies, sorted by node id, then replica."""
    proxies = [p for part in parts for p in part.proxies]
    return sorted(proxies, key=lambda p: (p.node_id, p.replica))


class _Load:
    """Sums of one edge's (or endpoint's, or service's) traffic over the parts."""

    __slots__ = ("error_rps", "in_flight", "rps")

    def __init__(self) -> None:
        self.rps = 0.0
        self.error_rps = 0.0
        self.in_flight = 0

    def add(self, rps: float, error_rate: float, in_flight: int) -> None:
        self.rps += rps
        self.error_rps += rps * error_rate
        self.in_flight += in_flight

    @property
    def error_rate(self) -> float:
        return self.error_rps / self.rps if self.rps > 0 else 0.0


def _endpoints(groups: Sequence[Sequence[pb.EndpointLoad]]) -> list[pb.EndpointLoad]:
    acc: dict[tuple[str, str], _Load] = {}
    for group in groups:
        for ep in group:
            acc.setdefault((ep.subset, ep.endpoint), _Load()).add(
                ep.rps, ep.error_rate, ep.in_flight
            )
    return [
        pb.EndpointLoad(
            subset=subset,
            endpoint=endpoint,
            rps=load.rps,
            error_rate=load.error_rate,
            in_flight=load.in_flight,
        )
        for (subset, endpoint), load in sorted(acc.items())
    ]


_Row = TypeVar("_Row", pb.TopologyEdge, pb.ServiceMetrics)


def _summed(
    rows: Sequence[_Row], key: Callable[[_Row], tuple[str, str]]
) -> dict[tuple[str, str], tuple[_Load, list[Sequence[pb.EndpointLoad]]]]:
    """Rows of the same key (an edge, a service) from every replica: their loads summed,
    and each one's endpoint loads (for :func:`_endpoints`)."""
    out: dict[tuple[str, str], tuple[_Load, list[Sequence[pb.EndpointLoad]]]] = {}
    for row in rows:
        load, endpoints = out.setdefault(key(row), (_Load(), []))
        load.add(row.rps, row.error_rate, row.in_flight)
        endpoints.append(row.endpoints)
    return out


def merge_topology(parts: Sequence[pb.GetTopologyResponse]) -> pb.GetTopologyResponse:
    """One graph from each replica's (the first part's window)."""
    kinds: dict[str, int] = {}
    for part in parts:
        for node in part.nodes:
            # (a node is a service on every replica that knows the service: same registry)
            kinds[node.id] = max(kinds.get(node.id, 0), node.kind)
    edges = [e for part in parts for e in part.edges]
    summed = _summed(edges, lambda e: (e.source, e.destination))
    allowed: dict[tuple[str, str], bool] = {}
    for e in edges:
        allowed[(e.source, e.destination)] = allowed.get((e.source, e.destination)) or e.allowed
    out = pb.GetTopologyResponse(window_seconds=parts[0].window_seconds if parts else 0.0)
    for node_id in sorted(kinds):
        out.nodes.append(pb.TopologyNode(id=node_id, kind=kinds[node_id]))  # type: ignore[arg-type]
    for key in sorted(summed):
        load, endpoints = summed[key]
        out.edges.append(
            pb.TopologyEdge(
                source=key[0],
                destination=key[1],
                rps=load.rps,
                error_rate=load.error_rate,
                in_flight=load.in_flight,
                allowed=allowed[key],
                idle=not (load.rps > 0 or load.in_flight > 0),
                endpoints=_endpoints(endpoints),
            )
        )
    return out


def merge_service_metrics(
    parts: Sequence[pb.GetServiceMetricsResponse],
) -> pb.GetServiceMetricsResponse:
    """RED per service summed over the parts (the first part's window)."""
    services = [s for part in parts for s in part.services]
    summed = _summed(services, lambda s: (s.namespace, s.name))
    out = pb.GetServiceMetricsResponse(window_seconds=parts[0].window_seconds if parts else 0.0)
    for key in sorted(summed):
        load, endpoints = summed[key]
        out.services.append(
            pb.ServiceMetrics(
                namespace=key[0],
                name=key[1],
                rps=load.rps,
                error_rps=load.error_rps,
                error_rate=load.error_rate,
                in_flight=load.in_flight,
                endpoints=_endpoints(endpoints),
            )
        )
    return out


def merge_recommendations(
    parts: Sequence[pb.GetRecommendationsResponse],
) -> pb.GetRecommendationsResponse:
    """The load each replica observed, summed; the endpoints it needs computed again
    (targets and current endpoints come from the registry: the same on every replica)."""
    by_service: dict[tuple[str, str], pb.Scaling] = {}
    for part in parts:
        for rec in part.services:
            key = (rec.namespace, rec.name)
            held = by_service.get(key)
            if held is None:
                by_service[key] = pb.Scaling()
                by_service[key].CopyFrom(rec.scaling)
            else:
                held.observed_rps += rec.scaling.observed_rps
    out = pb.GetRecommendationsResponse(window_seconds=parts[0].window_seconds if parts else 0.0)
    for (ns, name), scaling in sorted(by_service.items()):
        needed = needed_endpoints(scaling.observed_rps, max(1, scaling.target_rps_per_endpoint))
        scaling.recommended_endpoints = needed
        if needed > scaling.current_endpoints:
            scaling.action = pb.SCALING_ACTION_SCALE_UP
        elif needed < scaling.current_endpoints:
            scaling.action = pb.SCALING_ACTION_SCALE_DOWN
        else:
            scaling.action = pb.SCALING_ACTION_OK
        out.services.append(pb.ServiceRecommendation(namespace=ns, name=name, scaling=scaling))
    return out
