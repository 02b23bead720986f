"""The mesh's health view: what to probe, who probes it, what the reports say. Pure.

:class:`HealthMonitor` is fed by its owner (the HDS servicer and the replica
sync) and never does I/O; clocks come in as arguments (wall-clock seconds, so
reports from several meshd replicas compare).

- :meth:`HealthMonitor.update_registry` turns the registry into probes: every
  endpoint of a service whose ``health_check`` runs through HDS (not
  ``every_proxy``) and that is not draining.
- :meth:`HealthMonitor.set_checkers` takes every proxy that can probe (on this
  replica or another); :func:`~xds_server.health.assign.assign` spreads probes.
- :meth:`HealthMonitor.ingest` takes one proxy's results; reports on endpoints
  the proxy was not asked to probe are refused and counted.
- :meth:`HealthMonitor.evaluate` decides the verdicts (majority of fresh
  reports) and says which services' EDS must change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from xds_server.health.aggregate import Aggregator, Status
from xds_server.health.assign import Checker, Target, assign, checkers_of
from xds_server.model import Endpoint, HealthCheck, Service, ServiceRef
from xds_server.model.names import cluster_name
from xds_server.model.namespace import effective_mtls
from xds_server.model.view import RegistryView

__all__ = [
    "EndpointHealth",
    "HealthMonitor",
    "IngestResult",
    "Probe",
    "ProbeGroup",
    "ServiceHealth",
]

Resolver = Callable[[str], tuple[str, ...]]


def _no_dns(name: str) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class Probe:
    """One endpoint to probe: ``key`` is ``<ns>/<service>/<endpoint id>``."""

    key: str
    endpoint_id: str
    address: str
    port: int
    zone: str


@dataclass(frozen=True, slots=True)
class ProbeGroup:
    """The probes of one service, as one HDS ClusterHealthCheck."""

    cluster: str
    service: ServiceRef
    protocol: str
    check: HealthCheck
    probes: tuple[Probe, ...]
    mtls: bool = False
    """Whether the service takes mTLS (its mode, or its namespace's, is not ``off``): then
    the probes go over mTLS, as the service's callers do."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one report did: results accepted, and results refused (with why)."""

    accepted: int = 0
    unknown: int = 0  # cluster or address this node was not asked to probe


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """One endpoint's aggregated health, with the reports behind it."""

    endpoint_id: str
    zone: str
    address: str
    status: Status
    checkers: tuple[str, ...]
    healthy_reports: int
    unhealthy_reports: int


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """A service's health: healthy / total, per zone, and per endpoint."""

    service: str  # "<ns>/<name>"
    healthy: int
    total: int
    zones: dict[str, tuple[int, int]]  # zone -> (healthy, total)
    endpoints: tuple[EndpointHealth, ...]
    mode: str  # "hds", "every_proxy" or "none"


_ENVOY_STATUS = {Status.HEALTHY: 1, Status.UNHEALTHY: 2, Status.DRAINING: 3}
"""Aggregate -> Envoy ``config.core.v3.HealthStatus`` (UNKNOWN is left to Envoy)."""


@dataclass
class _ServiceProbes:
    service: Service
    mtls: bool
    probes: dict[str, Probe] = field(default_factory=dict)  # key -> probe
    draining: dict[str, Endpoint] = field(default_factory=dict)


class HealthMonitor:
    """Probes, their assignment to checkers, and aggregated verdicts."""

    def __init__(self, report_interval: float, *, per_target: int = 3) -> None:
        """``report_interval`` (seconds) is the HDS report period of the proxies; a
        report older than three periods (at least 3 s) is stale."""
        if report_interval <= 0:
            raise ValueError(f"report_interval must be > 0, not {report_interval}")
        self.report_interval = report_interval
        self.per_target = per_target
        self.aggregator = Aggregator(stale_after=max(3.0, 3 * report_interval))
        self._services: dict[ServiceRef, _ServiceProbes] = {}
        self._all_endpoints: dict[ServiceRef, Mapping[str, Endpoint]] = {}
        self._modes: dict[ServiceRef, str] = {}
        self._checkers: dict[str, Checker] = {}
        self._assignment: dict[str, frozenset[str]] = {}
        self._probers: dict[str, list[str]] = {}  # target key -> node ids, sorted
        self._by_address: dict[tuple[str, str, int], list[str]] = {}
        self._probe_of: dict[str, tuple[ServiceRef, Probe]] = {}
        self.generation = 0
        """Bumped whenever the assignment may have changed (HDS streams compare it)."""

    # -- inputs ----------------------------------------------------------------------

    def update_registry(
        self,
        state: RegistryView,
        resolve: Resolver = _no_dns,
        changed: Collection[ServiceRef] | None = None,
    ) -> bool:
        """Rebuild the probes of the ``changed`` services (None: all) from the registry in
        force. Returns whether any probe changed (then the assignment was redone).

        Incremental: an endpoint change of a service without mesh health checks costs a
        dict update, not a walk over every endpoint of the registry.
        """
        refs: Collection[ServiceRef]
        if changed is None:
            refs = set(state.services) | set(self._modes) | set(self._all_endpoints)
        else:
            refs = changed
        probes_changed = False
        for ref in refs:
            old = self._services.pop(ref, None)
            self._modes.pop(ref, None)
            eps = state.endpoints.get(ref)
            svc = state.services.get(ref)
            entry = None
            if svc is not None:
                mode = effective_mtls(svc.mtls, state.namespaces.get(ref.namespace))
                entry = self._probes(ref, svc, mode != "off", eps or {}, resolve)
            if eps:
                # A copy when the metrics thread walks it (endpoint_counts: a probed
                # service's); else the state's own mapping, which that thread only sizes:
                # copying a big service's endpoints on each update of a rolling deploy
                # costs more than the update.
                self._all_endpoints[ref] = dict(eps) if entry is not None and entry.probes else eps
            else:
                self._all_endpoints.pop(ref, None)
            if svc is not None:
                hc = svc.health_check
                self._modes[ref] = (
                    "none" if hc is None else "every_proxy" if hc.every_proxy else "hds"
                )
            if entry is not None:
                self._services[ref] = entry
            old_probes = old.probes if old is not None else {}
            new_probes = entry.probes if entry is not None else {}
            if old != entry:  # probes, draining endpoints or the service's check settings
                probes_changed = True
                for target in old_probes.keys() - new_probes.keys():
                    self.aggregator.forget_target(target)
        if probes_changed:
            self._reassign()
        return probes_changed

    def _probes(
        self,
        ref: ServiceRef,
        svc: Service,
        mtls: bool,
        endpoints: Mapping[str, Endpoint],
        resolve: Resolver,
    ) -> _ServiceProbes | None:
        """What the mesh probes for one service (None: no checks over HDS)."""
        hc = svc.health_check
        if hc is None or hc.every_proxy:
            return None
        entry = _ServiceProbes(svc, mtls)
        for ep in endpoints.values():
            if ep.draining:
                entry.draining[ep.id] = ep
                continue
            port = ep.port if ep.port is not None else svc.port
            addresses = (ep.address,) if ep.is_ip else resolve(ep.address)
            if port is None or not addresses:
                continue
            key = f"{ref.namespace}/{ref.name}/{ep.id}"
            entry.probes[key] = Probe(key, ep.id, addresses[0], port, ep.zone)
        return entry

    def set_checkers(self, checkers: Iterable[Checker]) -> None:
        """Every proxy able to probe, on any replica (deduplicated by node id)."""
        new = {c.node_id: c for c in checkers}
        if new != self._checkers:
            self._checkers = new
            self._reassign()

    def ingest(
        self, node_id: str, results: Iterable[tuple[str, str, int, bool]], now: float
    ) -> IngestResult:
        """Record ``(cluster, address, port, healthy)`` results of one proxy's report."""
        assigned = self._assignment.get(node_id, frozenset())
        accepted = unknown = 0
        for cluster, address, port, healthy in results:
            keys = [k for k in self._by_address.get((cluster, address, port), ()) if k in assigned]
            if not keys:
                unknown += 1
                continue
            for key in keys:
                self.aggregator.record(key, node_id, healthy, now)
            accepted += 1
        return IngestResult(accepted, unknown)

    def ingest_keys(self, node_id: str, results: Mapping[str, tuple[bool, float]]) -> int:
        """Record results by probe key (``key -> (healthy, at)``), as another replica
        publishes them; returns how many were accepted (assigned to that node)."""
        assigned = self._assignment.get(node_id, frozenset())
        n = 0
        for key, (healthy, at) in results.items():
            if key in assigned:
                self.aggregator.record(key, node_id, healthy, at)
                n += 1
        return n

    def reports_of(self, node_id: str) -> dict[str, tuple[bool, float]]:
        """Everything held from ``node_id``: key -> (healthy, received at)."""
        out = {}
        for key in self._assignment.get(node_id, frozenset()):
            for r in self.aggregator.reports(key):
                if r.reporter == node_id:
                    out[key] = (r.healthy, r.at)
        return out

    def forget_checker(self, node_id: str) -> None:
        """A proxy's reports no longer count (its stream or its replica's lease ended)."""
        self.aggregator.forget_reporter(node_id)

    # -- outputs ---------------------------------------------------------------------

    def assignment_for(self, node_id: str) -> list[ProbeGroup]:
        """What ``node_id`` must probe, grouped per service (sorted, deterministic)."""
        keys = self._assignment.get(node_id, frozenset())
        groups: dict[ServiceRef, list[Probe]] = {}
        for key in sorted(keys):
            ref, probe = self._probe_of[key]
            groups.setdefault(ref, []).append(probe)
        out = []
        for ref in sorted(groups, key=lambda r: (r.namespace, r.name)):
            entry = self._services[ref]
            svc = entry.service
            assert svc.health_check is not None
            out.append(
                ProbeGroup(
                    cluster_name(ref),
                    ref,
                    svc.protocol,
                    svc.health_check,
                    tuple(groups[ref]),
                    entry.mtls,
                )
            )
        return out

    def interval_for(self, node_id: str) -> float:
        """HDS report period for ``node_id``: the report interval, or the shortest check
        interval of the services it probes when that is shorter."""
        periods = [g.check.interval_ms / 1000 for g in self.assignment_for(node_id)]
        return min([self.report_interval, *periods])

    def checker_count(self) -> int:
        return len(self._checkers)

    def assignment(self) -> dict[str, frozenset[str]]:
        """node id -> probe keys, for every known checker."""
        return dict(self._assignment)

    def evaluate(self, now: float) -> set[ServiceRef]:
        """Recompute verdicts; return the services whose EDS health changed."""
        changed = self.aggregator.evaluate(now, list(self._probe_of))
        return {self._probe_of[key][0] for key in changed if key in self._probe_of}

    def eds_health(self, ref: ServiceRef) -> dict[str, int]:
        """Endpoint id -> Envoy HealthStatus for the service's EDS (empty: leave to Envoy)."""
        entry = self._services.get(ref)
        if entry is None:
            return {}
        out = {}
        for key, probe in entry.probes.items():
            status = self.aggregator.verdict(key)
            if status in _ENVOY_STATUS:
                out[probe.endpoint_id] = _ENVOY_STATUS[status]
        return out

    def all_eds_health(self) -> dict[ServiceRef, dict[str, int]]:
        """:meth:`eds_health` of every service probed through HDS."""
        return {ref: self.eds_health(ref) for ref in self._services}

    def all_unhealthy(self, ref: ServiceRef) -> bool:
        """Every probed endpoint of a service is UNHEALTHY (Envoy's panic mode then routes
        to all of them rather than to none)."""
        entry = self._services.get(ref)
        if entry is None or not entry.probes:
            return False
        return all(self.aggregator.verdict(k) is Status.UNHEALTHY for k in entry.probes)

    def verdict(self, key: str) -> Status:
        return self.aggregator.verdict(key)

    def probed(self) -> list[ServiceRef]:
        """Services whose checks run over HDS (the only ones with verdicts to share)."""
        return sorted(self._services, key=lambda r: (r.namespace, r.name))

    def services(self, ref: ServiceRef | None = None) -> list[ServiceHealth]:
        """Health of one service or of every registered service, sorted by name."""
        refs = (
            [ref] if ref is not None else sorted(self._modes, key=lambda r: (r.namespace, r.name))
        )
        out = []
        for r in refs:
            if r not in self._modes:
                continue
            out.append(self._service_health(r))
        return out

    def endpoint_counts(self) -> list[tuple[str, int, int]]:
        """``(ns/name, healthy, total)`` of every service :meth:`services` lists, with the
        same counts, without building its per-endpoint rows: a /metrics scrape asks for
        every service (through :meth:`services`, most of a scrape's time with many services)."""
        out = []
        for ref in sorted(self._modes, key=lambda r: (r.namespace, r.name)):
            endpoints = self._all_endpoints.get(ref, {})
            entry = self._services.get(ref)
            healthy = 0
            if entry is not None and entry.probes:  # (nothing probed: nothing HEALTHY)
                prefix = f"{ref.namespace}/{ref.name}/"
                healthy = sum(
                    1
                    for ep in endpoints.values()
                    if self._status(entry, prefix + ep.id, ep) is Status.HEALTHY
                )
            out.append((f"{ref.namespace}/{ref.name}", healthy, len(endpoints)))
        return out

    def _status(self, entry: _ServiceProbes | None, key: str, ep: Endpoint) -> Status:
        """An endpoint's aggregated status (``key`` is ``ns/service/id``)."""
        if ep.draining:
            return Status.DRAINING
        if entry is not None and key in entry.probes:
            return self.aggregator.verdict(key)
        return Status.UNKNOWN

    def _service_health(self, ref: ServiceRef) -> ServiceHealth:
        entry = self._services.get(ref)
        probers = self._probers
        rows: list[EndpointHealth] = []
        for ep in sorted(self._all_endpoints.get(ref, {}).values(), key=lambda e: e.id):
            key = f"{ref.namespace}/{ref.name}/{ep.id}"
            status = self._status(entry, key, ep)
            fresh = self.aggregator.reports(key)
            rows.append(
                EndpointHealth(
                    ep.id,
                    ep.zone,
                    ep.address,
                    status,
                    tuple(probers.get(key, ())),
                    sum(1 for r in fresh if r.healthy),
                    sum(1 for r in fresh if not r.healthy),
                )
            )
        zones: dict[str, tuple[int, int]] = {}
        for row in rows:
            h, t = zones.get(row.zone, (0, 0))
            zones[row.zone] = (h + (row.status is Status.HEALTHY), t + 1)
        return ServiceHealth(
            f"{ref.namespace}/{ref.name}",
            sum(1 for r in rows if r.status is Status.HEALTHY),
            len(rows),
            zones,
            tuple(rows),
            self._modes.get(ref, "none"),
        )

    # -- internals -------------------------------------------------------------------

    def _reassign(self) -> None:
        self._probe_of = {}
        self._by_address = {}
        targets = []
        for ref, entry in self._services.items():
            cluster = cluster_name(ref)
            for key, probe in entry.probes.items():
                self._probe_of[key] = (ref, probe)
                self._by_address.setdefault((cluster, probe.address, probe.port), []).append(key)
                targets.append(Target(key, probe.zone))
        new = assign(targets, self._checkers.values(), self.per_target)
        if new != self._assignment:
            # A checker no longer assigned a target stops counting for it: its last word
            # would otherwise outvote the new checkers until it goes stale.
            for node, keys in self._assignment.items():
                if keys - new.get(node, frozenset()):
                    self.aggregator.replace_reporter(node, {}, keep=new.get(node, ()))
            self._assignment = new
            self._probers = checkers_of(new)
        self.generation += 1


def stale_after(report_interval: float) -> float:
    """Seconds after which a report no longer counts (three report periods, at least 3 s)."""
    return max(3.0, 3 * report_interval)


def lease_ttl(report_interval: float) -> int:
    """etcd lease TTL (whole seconds) for a replica's published reports."""
    return max(3, math.ceil(stale_after(report_interval)))


def envoy_status(status: Status) -> int | None:
    """The Envoy HealthStatus for an aggregate, or None for UNKNOWN."""
    return _ENVOY_STATUS.get(status)


def checker_map(checkers: Mapping[str, str]) -> list[Checker]:
    """node id -> zone as :class:`Checker` objects."""
    return [Checker(node, zone) for node, zone in sorted(checkers.items())]
