"""The control loop: registry updates -> state -> translation -> cache.

Bursts are coalesced without a fixed debounce: the loop takes every update
already waiting when it wakes (a 50-write etcd transaction arrives as one
watch response; a burst of single writes queues up while a batch is being
translated) and translates them as one. A lone change is handled at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping

from adapters.dns import DnsCache, ResolveFn, system_resolve
from xds_server.cache import ConfigSink
from xds_server.errors import RegistryUnavailable, ValidationError
from xds_server.events import EventBus, EventType
from xds_server.ingest.dns_problems import DnsProblems
from xds_server.ingest.registry import Changes, Registry, RegistryUpdate, Reset
from xds_server.ingest.state import ChangeSet, RegistryState
from xds_server.metrics import Metrics
from xds_server.model import Problem, ServiceRef, status_error_key
from xds_server.model.entries import MAX_FIELD_CHARS, MAX_REASON_CHARS, bounded
from xds_server.model.names import KINDS, MAX_STATUS_REST
from xds_server.resources import TYPE_ORDER
from xds_server.resources.types import SHORT
from xds_server.translate import Translator

log = logging.getLogger("meshd.controller")


class StatusWriter:
    """Writes ``<prefix>status/errors/...`` for rejected entries, off the push path.

    Desired state is kept in memory and written by one background task, so a
    slow or unreachable etcd never delays a push and bursts collapse into the
    last value per key.
    """

    def __init__(self, registry: Registry, prefix: str) -> None:
        self.registry = registry
        self.prefix = prefix
        self._dirty: dict[str, bytes | None] = {}
        self._wake = asyncio.Event()

    def update(self, changes: ChangeSet) -> None:
        for key, problem in changes.problems_set.items():
            self._dirty[status_error_key(key, self.prefix)] = _status_value(problem)
        for key in changes.problems_cleared:
            self._dirty[status_error_key(key, self.prefix)] = None
        if self._dirty:
            self._wake.set()

    async def run(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                if await self._write_pass():
                    backoff = 0.05
                    continue
                await asyncio.sleep(backoff)  # etcd down or a write refused: retry later
                backoff = min(backoff * 2, 2.0)

    async def _write_pass(self) -> bool:
        """Try every pending status write once; False when any has to be retried.

        One key that etcd refuses must not hold back the others: a write etcd refuses as
        invalid (too large) is dropped and logged (ListErrors still reports the problem),
        another failure goes to the back of the queue. etcd being unreachable ends the pass
        (every write would wait for it).
        """
        ok = True
        for key, value in list(self._dirty.items()):
            try:
                if value is None:
                    await self.registry.delete(key)
                else:
                    await self.registry.put(key, value)
            except RegistryUnavailable as exc:  # keep the desired state, retry later
                log.warning("cannot write status %s: %s", key, exc)
                return False
            except ValidationError as exc:  # etcd refuses this very write: retrying cannot help
                log.error("cannot write status %s, not retried: %s", key, exc)
            except Exception as exc:
                log.warning("cannot write status %s: %s", key, exc)
                if self._dirty.get(key, b"") == value:
                    del self._dirty[key]
                    self._dirty[key] = value  # (to the back)
                ok = False
                continue
            if self._dirty.get(key, b"") == value:
                del self._dirty[key]
        return ok


def _status_value(problem: Problem) -> bytes:
    """The status value of a rejected entry, its strings bounded (and saying so where cut):
    etcd refuses a request over 1.5 MiB, and the value must always be writable."""
    return json.dumps(
        {
            "key": bounded(problem.key, MAX_STATUS_REST),
            "field": bounded(problem.field, MAX_FIELD_CHARS),
            "error": bounded(problem.message, MAX_FIELD_CHARS + MAX_REASON_CHARS + 64),
            "revision": problem.revision,
            "last_good_kept": problem.last_good_kept,
        },
        sort_keys=True,
    ).encode()


BIG_BATCH = 5_000
"""Registry entries in one batch above which the cyclic GC is paused while it is applied."""


def _size(batch: list[tuple[float, RegistryUpdate]]) -> int:
    return sum(len(u.entries) if isinstance(u, Reset) else len(u.events) for _, u in batch)


@contextlib.contextmanager
def _collector_paused(pause: bool) -> Iterator[None]:
    """Pause the cyclic garbage collector for a big batch (a cold start lists 110,000
    entries): the model and resources built are acyclic, and every young-generation pass
    would rescan the growing heap (~1.3 s of a 4 s cold apply). It runs again after, with
    what exists then frozen: the millions of objects allocated meanwhile would otherwise
    all sit in the young generation, and its next pass (~0.3 s) would stall the first
    pushes. Frozen objects are still freed by reference counting when dropped."""
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


class Controller:
    """Owns the registry state and feeds the cache."""

    def __init__(
        self,
        registry: Registry,
        cache: ConfigSink,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        resolve: ResolveFn = system_resolve,
        events: EventBus | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.metrics = metrics
        self.state = RegistryState(registry.prefix)
        self.dns = DnsCache(self._dns_changed, resolve=resolve)
        self.translator = Translator(resolve=self.dns.lookup, served=cache.served())
        self.dns_problems = DnsProblems(registry.prefix)
        """Endpoints whose name does not resolve (reported beside the state's problems)."""
        self.status = StatusWriter(registry, registry.prefix)
        self.clock = clock
        self.batches = 0
        self._listing_parts = self._listing_entries = 0  # parts of a listing folded so far
        self._listing_fold = 0.0
        self.observers: list[Callable[[RegistryState, ChangeSet], None]] = []
        """Called after each applied batch (health and topology follow the registry)."""
        self.events = events or EventBus()

    async def run(self) -> None:
        """Consume the registry forever (cancel to stop)."""
        queue: asyncio.Queue[tuple[float, RegistryUpdate]] = asyncio.Queue()

        async def pump() -> None:
            async for update in self.registry.updates():
                queue.put_nowait((self.clock(), update))

        pumper = asyncio.create_task(pump(), name="registry-pump")
        writer = asyncio.create_task(self.status.run(), name="status-writer")
        resolver = asyncio.create_task(self.dns.run(), name="dns")
        health = asyncio.create_task(self._watch_registry_health(), name="registry-health")
        try:
            while True:
                first = await queue.get()
                batch = [first]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                self.apply_batch(batch)
                if pumper.done():
                    pumper.result()  # surface a crash of the registry adapter
        finally:
            pumper.cancel()
            writer.cancel()
            resolver.cancel()
            health.cancel()

    def apply_batch(self, batch: list[tuple[float, RegistryUpdate]]) -> ChangeSet:
        """Apply queued updates, translate once, publish once."""
        started = self.clock()
        changes = ChangeSet()
        # (A listing's last part may be a single key, but it brings the translation of all.)
        with _collector_paused(_size(batch) + self._listing_entries >= BIG_BATCH):
            for _, update in batch:
                changes.merge(self.state.apply(update))
                if self.events.active and isinstance(update, Changes):
                    for e in update.events:
                        kind: EventType = "registry_put" if e.kind == "put" else "registry_delete"
                        self.events.publish(kind, key=e.key, revision=e.revision)
            folded = self.clock()
            if self.state.listing:
                # Parts of a listing so far: stored, nothing to translate until the last.
                self._listing_parts += 1
                self._listing_entries += _size(batch)
                self._listing_fold += folded - started
                return changes
            delta = self.translator.update(self.state, changes)
            self._dns_reconcile(changes.services | changes.endpoints, changes)
            self.translator.report_notes(self.state.problems, changes)
        translated_at = self.clock()
        self.cache.apply(delta, self.state.revision, observed_at=batch[0][0])
        # (an observer may apply to the cache again)
        generation, woken = self.cache.generation, self.cache.last_woken
        for observe in self.observers:  # after the batch is cached: they may refresh EDS
            observe(self.state, changes)
        if delta or delta.listeners_changed:
            self.metrics.convergence.changed(generation, batch[0][0], woken)
        self.batches += 1
        applied = self.clock()
        translated = applied - started
        if any(isinstance(u, Reset) for _, u in batch):
            log.info(
                "registry snapshot applied: %d entries in %d parts, revision %d: fold %.2fs, "
                "translate %.2fs, cache and observers %.2fs",
                self._listing_entries + _size(batch),
                self._listing_parts + 1,
                self.state.revision,
                self._listing_fold + folded - started,
                translated_at - folded,
                applied - translated_at,
            )
            self._listing_parts = self._listing_entries = 0
            self._listing_fold = 0.0
        lags = [applied - observed for observed, _ in batch]
        # Bookkeeping waits until the woken streams have written their pushes: their
        # wake-ups were scheduled by cache.apply, so call_soon runs after them.
        try:
            asyncio.get_running_loop().call_soon(self._after, changes, translated, lags)
        except RuntimeError:  # no loop (unit tests drive apply_batch directly)
            self._after(changes, translated, lags)
        return changes

    def _after(self, changes: ChangeSet, translated: float, lags: list[float]) -> None:
        self.metrics.translate_seconds.observe(translated)
        for lag in lags:
            self.metrics.watch_lag.observe(lag)
        self.metrics.registry_revision.set(self.state.revision)
        for type_url in TYPE_ORDER:
            self.metrics.resources.labels(SHORT[type_url]).set(self.cache.count(type_url))
        self._report(changes)

    async def _watch_registry_health(self, period: float = 1.0) -> None:
        """Mirror the adapter's error count and connection state into metrics."""
        seen = 0
        while True:
            total = int(getattr(self.registry, "errors_total", 0))
            if total > seen:
                self.metrics.registry_errors.inc(total - seen)
            seen = max(seen, total)
            self.metrics.registry_connected.set(
                1 if getattr(self.registry, "connected", True) else 0
            )
            await asyncio.sleep(period)

    def set_health(
        self, health: Mapping[ServiceRef, Mapping[str, int]], refs: set[ServiceRef]
    ) -> None:
        """Aggregated endpoint health (HDS) changed: re-translate those services' EDS.

        ``health`` maps services to endpoint id -> Envoy HealthStatus for every proxy.
        """
        self.translator.health = health
        delta = self.translator.refresh_endpoints(self.state, refs & set(self.state.services))
        self.cache.apply(delta, self.state.revision, observed_at=self.clock())

    def _dns_changed(self, names: set[str]) -> None:
        """Addresses of some endpoint names changed: re-translate the services using them."""
        refs = {ref for ref, used in self.translator.dns_names.items() if used.keys() & names}
        delta = self.translator.refresh_endpoints(self.state, refs)
        now = self.clock()
        self.cache.apply(delta, self.state.revision, observed_at=now)
        if delta:
            self.metrics.convergence.changed(self.cache.generation, now, self.cache.last_woken)
        changes = ChangeSet(revision=self.state.revision)
        self._dns_reconcile(refs, changes)
        self._report(changes)

    def _dns_reconcile(self, refs: set[ServiceRef], changes: ChangeSet) -> None:
        """The DNS problems of ``refs``' endpoints as their names resolve now."""
        self.dns_problems.reconcile(
            refs,
            self.translator.dns_names,
            self.dns.error,
            self.dns.lookup,
            self.state.revision,
            changes,
            self.state.problems,
        )

    def problems(self) -> dict[str, Problem]:
        """Every rejected registry key and why: the state's, and names that do not resolve."""
        return self.dns_problems.merged(self.state.problems)

    def _report(self, changes: ChangeSet) -> None:
        for key, problem in sorted(changes.problems_set.items()):
            log.warning("rejected %s (revision %d): %s", key, problem.revision, problem.message)
            self.events.publish(
                "registry_rejected", key=key, revision=problem.revision, message=problem.message
            )
        for key in sorted(changes.problems_cleared):
            log.info("entry %s is valid again", key)
        if changes.problems_set or changes.problems_cleared:
            counts = dict.fromkeys((*KINDS, "unknown"), 0)
            for key in self.problems():
                kind = key[len(self.state.prefix) :].split("/", 1)[0]
                counts[kind if kind in counts else "unknown"] += 1
            for kind, n in counts.items():
                self.metrics.rejected_entries.labels(kind).set(n)
        self.status.update(changes)
