"""Every Prometheus metric meshd exports, in one place.

Each :class:`Metrics` owns its own ``CollectorRegistry`` so that several
control planes can run in one process (tests start and restart meshd in
process); the ``/metrics`` endpoint serves that registry.

Names follow Prometheus conventions: base units (``_seconds``, ``_bytes``),
``_total`` on counters, labels for the dimensions an operator slices by.
Figures that describe live streams (sync state, age of unanswered pushes) are
computed at scrape time from the open streams (:class:`StreamCollector`), so
they can never drift from what the server holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from xds_server.metrics_labels import LabelGuard, bounded, check_node_cluster
from xds_server.model.names import KINDS
from xds_server.resources.types import SHORT

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Convergence waits for the slowest proxy's round trip: its tail is longer than a push's.
_CONVERGENCE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

SYNC_STATES = ("SYNCED", "STALE", "NACKED", "NOT_SENT")

__all__ = [
    "SYNC_STATES",
    "ConvergenceTracker",
    "HealthMetrics",
    "LiveCounts",
    "Metrics",
    "RegistryCounters",
    "SecretExpiry",
    "StreamCollector",
    "StreamView",
    "TypeView",
    "check_node_cluster",
]


class _Families:
    """Metric constructors bound to one registry: a metric is its name, help text and
    label names (and a histogram's buckets), nothing else to repeat."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self._registry)

    def gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, labels, registry=self._registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        *labels: str,
        buckets: tuple[float, ...] = _LATENCY_BUCKETS,
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self._registry)


class Metrics:
    """meshd's metrics, named the Prometheus way (base units, ``_total`` counters)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        r = self.registry = CollectorRegistry()
        new = _Families(r)
        self.connected_proxies = LiveCounts(
            "meshd_connected_proxies",
            "xDS streams currently open, by node cluster and protocol (sotw, delta)",
            ("node_cluster", "protocol"),
        )
        r.register(self.connected_proxies)
        self.pushes = new.counter(
            "meshd_xds_pushes_total", "DiscoveryResponses sent, by resource type", "type"
        )
        self.push_bytes = new.counter(
            "meshd_xds_push_bytes_total", "Bytes of resources sent, by resource type", "type"
        )
        self.nacks = new.counter(
            "meshd_xds_nacks_total", "Responses rejected by proxies, by resource type", "type"
        )
        self.requests = new.counter(
            "meshd_xds_requests_total",
            "DiscoveryRequests received, by type and kind (initial, ack, nack, stale, update)",
            "type",
            "kind",
        )
        self.push_latency = new.histogram(
            "meshd_xds_push_latency_seconds",
            "Time from a registry change reaching meshd to the response being written",
            "type",
        )
        self.convergence_seconds = new.histogram(
            "meshd_config_convergence_seconds",
            "Time from a registry change reaching meshd until every proxy connected at that "
            "moment has ACKed all it was sent because of it (or has disconnected)",
            buckets=_CONVERGENCE_BUCKETS,
        )
        self.convergence_abandoned = new.counter(
            "meshd_config_convergence_abandoned_total",
            "Registry changes whose convergence was not measured because a proxy kept "
            "NACKing or never answered while many newer changes arrived",
        )
        self.translate_seconds = new.histogram(
            "meshd_translate_seconds",
            "Time to validate, translate and cache one batch of registry updates",
        )
        self.watch_lag = new.histogram(
            "meshd_registry_watch_lag_seconds",
            "Time from a registry update arriving from the watch to its being in force in the "
            "cache (queueing behind earlier batches plus translation)",
        )
        self.registry_revision = new.gauge(
            "meshd_registry_revision", "etcd revision of the registry state in force"
        )
        self.rejected_entries = new.gauge(
            "meshd_registry_rejected_entries",
            "Registry entries currently rejected, by kind",
            "kind",
        )
        self.registry_errors = new.counter(
            "meshd_registry_errors_total",
            "Failed calls to the registry (etcd), watch breaks included",
        )
        self.xds_limited = new.counter(
            "meshd_xds_limited_total",
            "xDS streams ended (or requests paced: request_rate) because a client went over "
            "a limit: names, streams_per_peer, request_rate, queued_responses",
            "limit",
        )
        for limit in ("names", "streams_per_peer", "request_rate", "queued_responses"):
            self.xds_limited.labels(limit)
        self.log_lines_held = new.counter(
            "meshd_log_lines_held_back_total",
            "Client-driven log lines (NACKs, unknown types, limit refusals) not written "
            "because the same line repeated too often",
        )
        self.registry_connected = new.gauge(
            "meshd_registry_connected", "1 while the registry watch is established"
        )
        self.resources = new.gauge(
            "meshd_resources", "Envoy resources in the cache, by type", "type"
        )
        self.heap_trims = new.counter(
            "meshd_heap_trims_total",
            "Times meshd gave freed heap memory back to the OS after a burst (malloc_trim)",
        )
        self.heap_trim_seconds = new.counter(
            "meshd_heap_trim_seconds_total", "Time spent in those trims (a worker thread)"
        )
        self.heap_trim_released = new.counter(
            "meshd_heap_trim_released_bytes_total",
            "Resident memory those trims gave back (RSS before minus after)",
        )
        self.labels_truncated = new.counter(
            "meshd_metrics_label_values_truncated_total",
            "Label values over the length limit shortened in a scrape, by metric",
            "metric",
        )
        self.series_dropped = new.counter(
            "meshd_metrics_series_dropped_total",
            "Series folded into an __other__ series in a scrape because a client-chosen "
            "label had too many values, by metric",
            "metric",
        )
        self.http_refused = new.counter(
            "meshd_metrics_http_refused_total",
            "Connections to the metrics port closed or refused: connections (over the "
            "limit of open ones), timeout (request headers not in time), bad_request",
            "reason",
        )
        self.console_refused = new.counter(
            "meshd_console_http_refused_total",
            "Connections to the web console (--console) closed or refused, by reason as "
            "for meshd_metrics_http_refused_total",
            "reason",
        )
        for reason in ("connections", "timeout", "bad_request"):
            self.http_refused.labels(reason)
            self.console_refused.labels(reason)
        self.label_guard = LabelGuard(
            lambda metric, n: self.labels_truncated.labels(metric).inc(n),
            lambda metric, n: self.series_dropped.labels(metric).inc(n),
        )
        """What ``/metrics`` renders goes through it (client-chosen label values bounded)."""
        self.health = HealthMetrics(r)
        # Every series an alert or dashboard reads exists from the start, at 0: a query for
        # NACKs or rejections returns data (zeros) before the first one happens.
        for short in SHORT.values():
            for family in (self.pushes, self.push_bytes, self.nacks, self.push_latency):
                family.labels(short)
        for kind in (*KINDS, "unknown"):
            self.rejected_entries.labels(kind).set(0)
        self.convergence = ConvergenceTracker(
            self.convergence_seconds, self.convergence_abandoned, clock=clock
        )

    def heap_trimmed(self, seconds: float, released: int) -> None:
        """One heap trim took ``seconds`` and gave back ``released`` bytes of RSS."""
        self.heap_trims.inc()
        self.heap_trim_seconds.inc(seconds)
        self.heap_trim_released.inc(released)

    def watch_streams(self, source: Callable[[], Iterable[StreamView]]) -> None:
        """Export the sync state of the streams ``source`` lists, computed at each scrape."""
        self.registry.register(StreamCollector(source))


class LiveCounts(Collector):
    """A gauge of things open now (streams), by labels, whose series goes away when its
    count returns to 0: a node cluster's series lasts as long as one of its proxies is
    connected, not for the life of the process. Same ``labels(...).inc()/.dec()`` as a
    prometheus_client gauge. Label values are :func:`bounded` as they come in, so a
    client's long name is never kept whole here. Written on the event loop, read by the
    metrics server's thread (a dict copy under the GIL)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._counts: dict[tuple[str, ...], int] = {}

    def labels(self, *values: str) -> _LiveChild:
        """The series of ``values`` (one per label name)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
        return _LiveChild(self._counts, tuple(bounded(v) for v in values))

    def value(self, *values: str) -> int:
        """The count of ``values`` now (0: no series)."""
        return self._counts.get(tuple(bounded(v) for v in values), 0)

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, n in sorted(self._counts.copy().items()):
            family.add_metric(list(key), n)
        yield family


class _LiveChild:
    __slots__ = ("_counts", "_key")

    def __init__(self, counts: dict[tuple[str, ...], int], key: tuple[str, ...]) -> None:
        self._counts = counts
        self._key = key

    def inc(self, amount: int = 1) -> None:
        self._add(amount)

    def dec(self, amount: int = 1) -> None:
        self._add(-amount)

    def _add(self, amount: int) -> None:
        n = self._counts.get(self._key, 0) + amount
        if n > 0:
            self._counts[self._key] = n
        else:
            self._counts.pop(self._key, None)


# --------------------------------------------------------------------------- convergence


class ConvergenceTracker:
    """Measures config convergence: change in force -> last proxy in sync with it.

    The controller reports each cache generation that changed something
    (:meth:`changed`); every stream reports the newest generation it is fully in
    sync with (:meth:`synced`: nothing held back, every response ACKed) and when it
    ends (:meth:`gone`). A generation is converged once every stream that was open
    when it was applied has synced it or gone; proxies that connect later fetch
    the new state anyway and do not count. Keys are opaque (the streams' cache
    watchers, so the controller can name the streams a change woke). No I/O; all
    calls come from the event loop's thread.
    """

    MAX_OUTSTANDING = 256  # generations kept waiting for a proxy that NACKs or hangs

    def __init__(
        self,
        histogram: Histogram,
        abandoned: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._histogram = histogram
        self._abandoned = abandoned
        self._clock = clock
        self._live: dict[object, int] = {}  # stream -> newest generation it is in sync with
        self._outstanding: dict[int, tuple[float, set[object]]] = {}  # oldest first
        self._waits: dict[object, list[int]] = {}  # stream -> generations waiting for it
        self._converged: dict[int, float] = {}  # generation -> when it converged (the latest)
        self._answering: set[object] = set()  # streams that have answered a push waited for
        self._answered_at: dict[int, float] = {}  # outstanding generation -> its latest answer

    def opened(self, key: object, generation: int) -> None:
        """A stream started; it will fetch ``generation`` (or later) by itself."""
        self._live[key] = generation

    def changed(
        self, generation: int, observed_at: float, keys: Iterable[object] | None = None
    ) -> None:
        """Cache generation ``generation`` changed resources; the change reached meshd at
        ``observed_at`` (same clock as this tracker's). ``keys``: the streams the change
        concerns (those it woke), when known; a change no open stream holds converges at
        once and is not counted, and a stream it does not concern is never waited for."""
        live = self._live
        candidates = live if keys is None else keys
        waiting = {k for k in candidates if live.get(k, generation) < generation}
        if not waiting:
            return
        self._outstanding[generation] = (observed_at, waiting)
        for k in waiting:
            gens = self._waits.setdefault(k, [])
            gens.append(generation)
            if len(gens) > self.MAX_OUTSTANDING:  # a stuck stream: drop what was given up
                gens[:] = [g for g in gens if g in self._outstanding]
        while len(self._outstanding) > self.MAX_OUTSTANDING:
            given_up = next(iter(self._outstanding))
            del self._outstanding[given_up]
            self._answered_at.pop(given_up, None)
            self._abandoned.inc()

    def waiting(self, generation: int) -> int:
        """Streams that have not synced cache generation ``generation`` yet (0: converged,
        or never waited for, or given up on)."""
        entry = self._outstanding.get(generation)
        return len(entry[1]) if entry is not None else 0

    def waiting_in_step(self, generation: int) -> int:
        """Of :meth:`waiting`, the streams that keep up: each has answered a push it was
        waited for before and waits for nothing older than ``generation``. A stream that
        never answers (one that does not read, or sends no nonces) or is still behind on
        an earlier push is not counted: pacing a burst on it would let one bad client
        slow everyone's updates down."""
        entry = self._outstanding.get(generation)
        if entry is None:
            return 0
        answering, waits, outstanding = self._answering, self._waits, self._outstanding
        count = 0
        for key in entry[1]:
            if key not in answering:
                continue
            for older in waits.get(key, ()):
                if older in outstanding:  # (its oldest generation still waited for)
                    count += older == generation
                    break
        return count

    def last_answer_at(self, generation: int) -> float | None:
        """When a stream last answered cache generation ``generation`` while others were
        still waited for (None: none has yet, or it converged). With streams that never
        answer still waited for, this is when the ones that keep up were done."""
        return self._answered_at.get(generation)

    def converged_at(self, generation: int) -> float | None:
        """When cache generation ``generation`` converged, if it did lately after waiting
        for some stream (None: it did not yet, never waited for one, or long ago)."""
        return self._converged.get(generation)

    def synced(self, key: object, generation: int) -> None:
        """Stream ``key`` holds, ACKed, everything up to cache generation ``generation``."""
        if self._live.get(key, -1) >= generation:
            return
        self._live[key] = generation
        self._settle(key, generation)

    def gone(self, key: object) -> None:
        """Stream ``key`` closed: nobody waits for it any more."""
        self._live.pop(key, None)
        self._answering.discard(key)
        self._settle(key, None)

    def _settle(self, key: object, upto: int | None) -> None:
        """Stop waiting for ``key`` on the generations it covers (all when ``upto`` is
        None): only those that waited for it are visited, not every outstanding one."""
        gens = self._waits.get(key)
        if not gens:
            return
        now = self._clock()
        keep = []
        for generation in gens:
            if upto is not None and generation > upto:
                keep.append(generation)
                continue
            entry = self._outstanding.get(generation)
            if entry is None:
                continue  # given up already (MAX_OUTSTANDING)
            observed_at, waiting = entry
            waiting.discard(key)
            if upto is not None:
                self._answering.add(key)  # (it answered a push it was waited for)
                self._answered_at[generation] = now
            if not waiting:
                del self._outstanding[generation]
                self._answered_at.pop(generation, None)
                self._histogram.observe(max(0.0, now - observed_at))
                self._converged[generation] = now
                if len(self._converged) > self.MAX_OUTSTANDING:
                    del self._converged[next(iter(self._converged))]
        if keep:
            self._waits[key] = keep
        else:
            del self._waits[key]


# --------------------------------------------------------------------------- live streams


class TypeView(Protocol):
    """What the collector reads of one stream's status for one type (``StatusBase``)."""

    @property
    def state(self) -> str: ...

    @property
    def awaiting(self) -> bool: ...

    @property
    def last_push(self) -> float | None: ...


class StreamView(Protocol):
    """What the collector reads of one open stream."""

    @property
    def node_cluster(self) -> str: ...

    @property
    def types(self) -> Mapping[str, TypeView]: ...


class StreamCollector(Collector):
    """Scrape-time figures over the open streams.

    ``meshd_xds_proxy_types{node_cluster,type,state}`` counts (stream, type) pairs by
    sync state; ``meshd_xds_oldest_unacked_push_seconds{node_cluster}`` is the age of
    the oldest response still waiting for its ACK/NACK (0 when none waits), which is
    what "a proxy stale for too long" alerts on.
    """

    def __init__(
        self,
        source: Callable[[], Iterable[StreamView]],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._clock = wall_clock  # streams stamp last_push with the servicer's wall clock

    def describe(self) -> Iterable[Metric]:
        # Fixed description, so registering does not call collect() (which needs streams).
        return [self._types_family(), self._age_family()]

    def collect(self) -> Iterator[Metric]:
        # This runs in the metrics server's thread while the event loop mutates streams:
        # take C-level snapshots (list() of a dict holds the GIL) and tolerate a race.
        counts: dict[tuple[str, str, str], int] = {}  # every state of a seen pair, 0 included
        ages: dict[str, float] = {}
        now = self._clock()
        for stream in list(self._source()):
            # (bounded here already: the whole family is built from these keys)
            cluster = bounded(stream.node_cluster) or "unknown"
            ages.setdefault(cluster, 0.0)
            for type_url, ts in list(stream.types.items()):
                short = _short_type(type_url)
                for state in SYNC_STATES:
                    counts.setdefault((cluster, short, state), 0)
                counts[(cluster, short, ts.state)] += 1
                if ts.awaiting and ts.last_push is not None:
                    ages[cluster] = max(ages[cluster], now - ts.last_push)
        types = self._types_family()
        for (cluster, short, state), n in sorted(counts.items()):
            types.add_metric([cluster, short, state], n)
        age = self._age_family()
        for cluster, seconds in sorted(ages.items()):
            age.add_metric([cluster], seconds)
        yield types
        yield age

    @staticmethod
    def _types_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "meshd_xds_proxy_types",
            "Open streams' resource types by sync state (SYNCED, STALE, NACKED, NOT_SENT)",
            labels=["node_cluster", "type", "state"],
        )

    @staticmethod
    def _age_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "meshd_xds_oldest_unacked_push_seconds",
            "Age of the oldest response a proxy has neither ACKed nor NACKed, by node cluster",
            labels=["node_cluster"],
        )


def _short_type(type_url: str) -> str:
    return SHORT.get(type_url, "other")


# --------------------------------------------------------------------------- registry secrets


class SecretExpiry(Collector):
    """``meshd_secret_expiry_timestamp_seconds{namespace,name}``: when the certificate of
    each registry secret in force expires (a ``{"cert","key"}`` secret: the first of its
    chain to expire; a ``{"ca"}`` secret: its first CA to expire), in seconds since the
    epoch, computed at scrape time from what is in force.

    A gauge of the expiry rather than of the time left: Prometheus subtracts ``time()``
    at every evaluation, so "expires within 7 days" is judged continuously, not only when
    the secret was written. Its labels are registry names (DNS labels, 63 characters at
    most), one series per secret an operator wrote, none chosen by a client; a deleted
    secret's series goes with it.

    ``source`` lists (namespace, name, expiry) and runs on the metrics server's thread:
    it must take a snapshot (a copy of a dict) rather than iterate live state.
    """

    NAME = "meshd_secret_expiry_timestamp_seconds"

    def __init__(self, source: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for namespace, name, not_after in sorted(self._source()):
            family.add_metric([namespace, name], not_after)
        yield family

    @classmethod
    def _family(cls) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            cls.NAME,
            "When the certificate of a registry secret in force expires (seconds since the "
            "epoch), by the secret's namespace and name",
            labels=["namespace", "name"],
        )


class RegistryCounters(Collector):
    """``meshd_registry_relists_total`` and ``meshd_registry_failovers_total``: complete
    listings of the registry after the first (etcd compacted the revisions the watch
    needed, or its store went back), and moves to another etcd member after one was lost.
    Read at scrape time from the registry adapter's own counts (``source``: relists,
    failovers), so they cannot drift from it."""

    def __init__(self, source: Callable[[], tuple[int, int]]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return list(self._families(0, 0))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(*self._source())

    @staticmethod
    def _families(relists: int, failovers: int) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "meshd_registry_relists",
            "Complete listings of the registry after the first (the watch could not go on "
            "where it broke off: etcd compacted those revisions, or its store went back)",
            value=relists,
        )
        yield CounterMetricFamily(
            "meshd_registry_failovers",
            "Moves to another etcd member after the one in use was lost or lost its leader",
            value=failovers,
        )


# --------------------------------------------------------------------------- health and topology


class HealthMetrics:
    """Endpoint health (HDS) and load report (LRS) counters. Gauges computed at scrape
    time come from collectors: ``meshd_service_endpoints`` from
    :class:`xds_server.health.hds.HealthCollector`, per-edge and per-endpoint load from
    :class:`xds_server.topology.lrs.TopologyCollector`."""

    def __init__(self, r: CollectorRegistry) -> None:
        new = _Families(r)
        self.health_panic = new.counter(
            "meshd_health_all_unhealthy_total",
            "Times every endpoint of a service became unhealthy (Envoy's panic mode serves "
            "all of them)",
            "service",
        )
        self.report_rejected = new.counter(
            "meshd_report_rejected_total",
            "Health (hds) and load (lrs) report rows refused, by reason",
            "protocol",
            "reason",
        )
