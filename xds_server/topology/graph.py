"""The service graph: config-allowed edges joined with observed traffic; RED; scaling. Pure.

Nodes are services (``<ns>/<name>``) and proxy groups (a node ``cluster`` that is
not a service, e.g. ``gateway``). A sidecar whose node cluster is ``<name>.<ns>``
(or ``<name>`` for the ``default`` namespace) is its service's node.

An edge is allowed when a listener served to the source (its ``nodes`` globs
match) carries a route to the destination; it is observed when load reports
show traffic on it (requests completed in the window, or in flight). The graph
holds the edges that are allowed or observed, nothing else: Envoy reports every
cluster it holds over LRS, traffic or not, so a report alone makes no edge. An
allowed edge without traffic in the window is ``idle``.
The per-service default hosts (every HTTP listener routes ``Host: <svc>.<ns>``)
are not edges: they would make every pair allowed and the graph say nothing.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from xds_server.model import ServiceRef
from xds_server.model.names import parse_cluster_name
from xds_server.model.view import RegistryView
from xds_server.topology.load import EdgeRate, EndpointRate

__all__ = [
    "Edge",
    "Graph",
    "Recommendation",
    "ServiceRed",
    "build_graph",
    "needed_endpoints",
    "recommend",
    "red",
]


@dataclass(frozen=True, slots=True)
class Edge:
    """One edge of the graph, with its traffic over the window."""

    source: str
    destination: str
    rps: float
    error_rate: float
    in_flight: int
    allowed: bool  # some route allows it
    idle: bool  # allowed, and no traffic in the window
    endpoints: tuple[EndpointRate, ...] = ()
    """The edge's traffic by upstream (subset, endpoint): those that carried load."""


@dataclass(frozen=True, slots=True)
class Graph:
    """Nodes (sorted) and edges (sorted by source, destination) over ``window`` seconds."""

    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]
    window: float


@dataclass(frozen=True, slots=True)
class ServiceRed:
    """Rate, errors and duration of one service's incoming traffic over a window.

    LRS carries no latency, so ``duration_ms`` is None: it is the proxies' own
    histograms (Envoy stats) that say how long requests took.
    """

    service: str
    rps: float
    error_rps: float
    error_rate: float
    in_flight: int
    window: float
    duration_ms: float | None = None
    endpoints: tuple[EndpointRate, ...] = ()
    """By (subset, endpoint), summed over every source (``source`` is "")."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    """How many endpoints the observed load needs, for a service with ``scaling``."""

    service: str
    observed_rps: float
    target_rps_per_endpoint: int
    current_endpoints: int
    recommended_endpoints: int
    window: float

    @property
    def action(self) -> str:
        if self.recommended_endpoints > self.current_endpoints:
            return "scale_up"
        if self.recommended_endpoints < self.current_endpoints:
            return "scale_down"
        return "ok"


def service_id(ref: ServiceRef) -> str:
    return f"{ref.namespace}/{ref.name}"


def source_id(node_cluster: str, services: Iterable[ServiceRef]) -> str:
    """The graph node of a proxy: its service when the node cluster names one."""
    refs = set(services)
    name, _, ns = node_cluster.partition(".")
    if ns and ServiceRef(ns, name) in refs:
        return f"{ns}/{name}"
    if not ns and ServiceRef("default", name) in refs:
        return f"default/{name}"
    return node_cluster


def destination_of(cluster: str) -> ServiceRef | None:
    """The service of an Envoy cluster name ``<name>.<ns>[|subset]`` (None: not ours)."""
    parsed = parse_cluster_name(cluster)
    return parsed.service if parsed is not None else None


def allowed_edges(state: RegistryView, sources: Iterable[str]) -> set[tuple[str, str]]:
    """(source node cluster, destination service id) pairs the routes allow."""
    by_listener: dict[str, set[str]] = {}
    for route in state.routes.values():
        for name, listener in state.listeners.items():
            if listener.protocol != "http" or not route.listener_matches(name):
                continue
            dests = by_listener.setdefault(name, set())
            for d in route.destinations:
                dests.add(service_id(d.service))
    for listener in state.listeners.values():
        if listener.protocol == "tcp" and listener.service is not None:
            by_listener.setdefault(listener.name, set()).add(service_id(listener.service))
    out: set[tuple[str, str]] = set()
    for source in sources:
        for name, listener in state.listeners.items():
            if any(fnmatch.fnmatchcase(source, p) for p in listener.nodes):
                out.update((source, dest) for dest in by_listener.get(name, ()))
    return out


def build_graph(
    state: RegistryView,
    traffic: Iterable[EdgeRate],
    sources: Iterable[str],
    window: float,
    endpoints: Iterable[EndpointRate] = (),
) -> Graph:
    """Join the allowed edges (for the given proxy node clusters) with observed traffic.

    An edge exists when a route allows it or traffic was seen on it in the window; it is
    ``idle`` when allowed and without traffic. A reported cluster with no requests and
    none in flight is no traffic: every proxy reports every cluster it holds.
    """
    refs = list(state.services)
    traffic = list(traffic)
    observed = {
        (source_id(t.source, refs), t.destination): t
        for t in traffic
        if t.rps > 0 or t.in_flight > 0
    }
    # Allowed edges of every proxy group that reports, even one whose reports carry no
    # traffic: its routes still allow what they allow.
    allowed = {
        (source_id(src, refs), dst)
        for src, dst in allowed_edges(state, {*sources, *(t.source for t in traffic)})
    }
    by_edge: dict[tuple[str, str], list[EndpointRate]] = {}
    for ep in endpoints:
        src = source_id(ep.source, refs)
        by_edge.setdefault((src, ep.destination), []).append(replace(ep, source=src))
    edges = []
    for key in sorted(allowed | set(observed)):
        t = observed.get(key)
        edges.append(
            Edge(
                key[0],
                key[1],
                t.rps if t else 0.0,
                t.error_rate if t else 0.0,
                t.in_flight if t else 0,
                key in allowed,
                idle=t is None,
                endpoints=tuple(by_edge.get(key, ())),
            )
        )
    nodes = (
        {service_id(r) for r in refs} | {e.source for e in edges} | {e.destination for e in edges}
    )
    return Graph(tuple(sorted(nodes)), tuple(edges), window)


def red(graph: Graph, service: str | None = None, services: Iterable[str] = ()) -> list[ServiceRed]:
    """RED per destination service (or one), summed over its incoming edges, with its
    traffic by upstream endpoint. ``services`` are listed (at zero) even without traffic."""
    acc: dict[str, list[float]] = {}
    eps: dict[str, dict[tuple[str, str], list[float]]] = {}
    for e in graph.edges:
        if service is not None and e.destination != service:
            continue
        row = acc.setdefault(e.destination, [0.0, 0.0, 0.0])
        row[0] += e.rps
        row[1] += e.rps * e.error_rate
        row[2] += e.in_flight
        for ep in e.endpoints:
            erow = eps.setdefault(e.destination, {}).setdefault(
                (ep.subset, ep.endpoint), [0.0, 0.0, 0.0]
            )
            erow[0] += ep.rps
            erow[1] += ep.error_rps
            erow[2] += ep.in_flight
    wanted = [service] if service is not None else list(services)
    nodes = set(graph.nodes)  # (a sorted tuple; a scrape looks up every registered service)
    for svc in wanted:
        if svc not in acc and svc in nodes:
            acc[svc] = [0.0, 0.0, 0.0]
    out = []
    for svc, (rps, err, inflight) in sorted(acc.items()):
        per = tuple(
            EndpointRate("", svc, subset, ep, ep_rps, ep_err, int(ep_inflight))
            for (subset, ep), (ep_rps, ep_err, ep_inflight) in sorted(eps.get(svc, {}).items())
        )
        out.append(
            ServiceRed(
                svc,
                rps,
                err,
                err / rps if rps > 0 else 0.0,
                int(inflight),
                graph.window,
                endpoints=per,
            )
        )
    return out


def recommend(state: RegistryView, graph: Graph) -> list[Recommendation]:
    """Endpoint counts for every service with ``scaling``, from the graph's incoming rates."""
    rates = {r.service: r.rps for r in red(graph)}
    out = []
    for ref in sorted(state.services, key=lambda r: (r.namespace, r.name)):
        svc = state.services[ref]
        if svc.scaling is None:
            continue
        sid = service_id(ref)
        rps = rates.get(sid, 0.0)
        current = sum(1 for e in state.endpoints.get(ref, {}).values() if not e.draining)
        target = svc.scaling.target_rps_per_endpoint
        needed = needed_endpoints(rps, target)
        out.append(Recommendation(sid, rps, target, current, needed, graph.window))
    return out


def needed_endpoints(rps: float, target_rps_per_endpoint: int) -> int:
    """Endpoints that carry ``rps`` at ``target_rps_per_endpoint`` each (at least one)."""
    return max(1, math.ceil(rps / target_rps_per_endpoint - 1e-9))
