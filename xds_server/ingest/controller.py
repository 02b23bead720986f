"""The control loop: one pipeline from every input to the cache.

Inputs (:mod:`xds_server.ingest.inputs`) are registry updates from the adapter, health
verdicts from HDS and DNS answers from the resolver. Each is queued as a typed value; the
loop takes every input waiting as one batch, folds each with the handler of its type,
translates once from the registry state (read-only to translation) and the latest
:class:`~xds_server.ingest.inputs.Inputs`, and applies the result to the cache in one
place. Status keys, events and metrics are outputs of each batch, written after the push.

Bursts are coalesced without a fixed debounce: a 50-write etcd transaction arrives as one
watch response, and a burst of single writes queues up while a batch is translated. A lone
input is handled at once: an input a producer pushes (:meth:`Controller.submit`) is handled
in the producer's own call when the loop is idle, so it reaches the cache as soon as it is
known, with whatever else was waiting.

A rolling deploy is a burst of its own kind: thousands of single-endpoint writes to one
service, each of which would push that service's whole assignment to every proxy holding
it. Endpoint changes to a service whose last push is still in flight (it went out less
than ``coalesce`` seconds ago, or its proxies have not answered it yet, or did so only
lately: see :meth:`Controller._in_flight`) are folded at once but held, and go out
together as soon as it is not: pushes as often as the proxies can take them with time to
spare, each with every change so far. The first change after a quiet spell goes out at
once, and nothing else waits (a route, a cluster, another service's endpoints are
translated in the batch that folds them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from xds_server.cache import ConfigSink
from xds_server.events import EventBus, EventType
from xds_server.ingest.dns_problems import DnsProblems
from xds_server.ingest.inputs import (
    AddressSource,
    Certificates,
    DnsAnswers,
    HealthVerdicts,
    Input,
)
from xds_server.ingest.registry import Changes, Registry, Reset
from xds_server.ingest.state import RegistryState
from xds_server.ingest.status import StatusWriter
from xds_server.metrics import Metrics
from xds_server.model import Problem, ServiceRef
from xds_server.model.identity import DEFAULT_TRUST_DOMAIN
from xds_server.model.names import KINDS
from xds_server.model.view import ChangeSet, RegistryView
from xds_server.resources import TYPE_ORDER
from xds_server.resources.types import SHORT
from xds_server.translate import Translator
from xds_server.translate.inputs import Inputs

log = logging.getLogger("meshd.controller")


COALESCE_S = 0.1
"""Default ``coalesce``: endpoint changes to a service pushed less than this long ago are
held at least until this long after that push (see the module docstring). Zero: never
held."""

GATHER_S = 0.005
"""In a burst of registry updates, a batch follows the previous one by at least this long
(seconds), gathering what arrives meanwhile; a change after a quiet spell is applied at
once."""

COALESCE_MAX_S = 1.0
"""A push of a service's assignments is taken as answered this long after it went out,
even if some proxy has not answered it (see :meth:`Controller._in_flight`)."""

_POLL_S = 0.01
"""How often held changes look whether the previous push has been answered."""

_TIMER_SLACK = 0.005
"""A timer may fire this early (the loop's clock resolution): held changes due within it
go out with it."""

BIG_BATCH = 5_000
"""Registry entries in one batch above which the cyclic GC is paused while it is applied."""


def _size(batch: list[tuple[float, Input | _Due]]) -> int:
    """Registry entries in a batch."""
    n = 0
    for _, item in batch:
        if isinstance(item, Reset):
            n += len(item.entries)
        elif isinstance(item, Changes):
            n += len(item.events)
    return n


@contextlib.contextmanager
def _collector_paused(pause: bool) -> Iterator[None]:
    """Pause the cyclic garbage collector for a big batch (a cold start lists every entry
    of the registry): the model and resources built are acyclic, and every young-generation
    pass would rescan the growing heap, a large share of a cold apply. It runs again after,
    with what exists then frozen: the millions of objects allocated meanwhile would
    otherwise all sit in the young generation, and its next pass would stall the first
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


class _NoDns:
    """No resolver: names have no addresses and no error (tools and tests)."""

    def lookup(self, name: str) -> tuple[str, ...]:
        return ()

    def error(self, name: str) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class _Due:
    """Held endpoint changes are due (put on the queue by a timer; no producer's input)."""


_DUE = _Due()


def _release_into(
    held: ChangeSet,
    ref: ServiceRef,
    endpoints: set[ServiceRef],
    ids: dict[ServiceRef, set[str]],
) -> None:
    """Move service ``ref``'s held endpoint changes into ``endpoints`` and ``ids`` (what is
    translated now; an id set absent from ``ids`` means any endpoint)."""
    mine = held.changed_endpoint_ids(ref)
    held.endpoints.discard(ref)
    held.endpoint_ids.pop(ref, None)
    if ref not in endpoints:
        endpoints.add(ref)
        if mine is not None:
            ids[ref] = mine
        return
    now = ids.get(ref)
    if now is None or mine is None:
        ids.pop(ref, None)  # any
    else:
        ids[ref] = now | mine


@dataclass(slots=True)
class _Push:
    """A push of a service's assignments (see :meth:`Controller._in_flight`)."""

    at: float
    generation: int  # the cache generation it went out in
    woken: int  # streams it woke
    answered: float | None = None  # when nearly all of them had answered it


@dataclass(slots=True)
class _Batch:
    """What the handlers of one batch's inputs found to do."""

    changes: ChangeSet = field(default_factory=ChangeSet)
    """What the registry updates changed in force (and, after, in problems)."""
    observed: list[float] = field(default_factory=list)
    """When each registry update was received."""
    reset: bool = False
    """A listing (or its last part) is among the updates."""
    refresh: set[ServiceRef] = field(default_factory=set)
    """Services whose assignments another input changed (health, DNS)."""
    dns: set[ServiceRef] = field(default_factory=set)
    """Services whose names' DNS problems to bring up to date."""
    converges: bool = False
    """The convergence of this batch's pushes is measured (registry and DNS inputs)."""
    observed_at: float = float("inf")
    """When the oldest change this batch pushes reached meshd (held ones included)."""


Observer = Callable[[RegistryView, ChangeSet], None]
"""Called after each batch of registry updates is cached (health and topology follow the
registry): the view, and what the batch changed."""


class Controller:
    """Owns the registry state and feeds the cache from every input."""

    def __init__(
        self,
        registry: Registry,
        cache: ConfigSink,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        dns: AddressSource | None = None,
        events: EventBus | None = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        coalesce: float = COALESCE_S,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.metrics = metrics
        self.state = RegistryState(registry.prefix)
        """The registry folded so far: only the controller changes it."""
        self.dns: AddressSource = dns if dns is not None else _NoDns()
        """Addresses of endpoint names; its changes come in as :class:`DnsAnswers`."""
        self.inputs = Inputs(addresses=self.dns.lookup)
        """What translation reads besides the state, as of the last batch."""
        self.translator = Translator(served=cache.served(), trust_domain=trust_domain)
        self.dns_problems = DnsProblems(registry.prefix)
        """Endpoints whose name does not resolve (reported beside the state's problems)."""
        self.status = StatusWriter(registry, registry.prefix)
        self.clock = clock
        self.batches = 0
        """Batches of registry updates applied."""
        self._listing_parts = self._listing_entries = 0  # parts of a listing folded so far
        self._listing_fold = 0.0
        self.observers: list[Observer] = []
        """Called after each batch of registry updates (see :data:`Observer`)."""
        self.events = events or EventBus()
        self.coalesce = coalesce
        """Seconds after a push of a service's assignments within which its endpoint
        changes are held, to go out together (0: never held; see the module docstring)."""
        self._held = ChangeSet()
        """Endpoint changes held (see :meth:`_coalesce`): services and endpoint ids."""
        self._held_since: dict[ServiceRef, float] = {}  # when each one's first reached meshd
        self._pushed: dict[ServiceRef, _Push] = {}
        """Service -> the last push of its assignments."""
        self._timer: asyncio.TimerHandle | None = None
        self._last_batch = -1.0  # when the last batch of registry updates was applied
        self._queue: asyncio.Queue[tuple[float, Input | _Due]] = asyncio.Queue()
        self._snapshot_seen = False
        """The registry's first complete listing has been translated (nothing before it)."""
        self._draining = False
        self._handlers: dict[type, Callable[[_Batch, float, Input | _Due], None]] = {
            Reset: self._registry_update,
            Changes: self._registry_update,
            HealthVerdicts: self._health_verdicts,
            DnsAnswers: self._dns_answers,
            Certificates: self._certificates,
            _Due: self._due,
        }
        """Input type -> the handler that folds it into a batch."""

    # -- taking inputs -------------------------------------------------------------------

    def submit(self, item: Input) -> None:
        """Take an input a producer pushes (health verdicts, DNS answers).

        When the loop is idle it is handled now, in this call, with every input waiting;
        pushed while a batch is applied (by an observer), right after that batch.
        """
        self._queue.put_nowait((self.clock(), item))
        self._drain()

    async def run(self) -> None:
        """Consume the registry forever (cancel to stop)."""

        async def pump() -> None:
            async for update in self.registry.updates():
                self._queue.put_nowait((self.clock(), update))

        pumper = asyncio.create_task(pump(), name="registry-pump")
        writer = asyncio.create_task(self.status.run(), name="status-writer")
        health = asyncio.create_task(self._watch_registry_health(), name="registry-health")
        try:
            while True:
                first = await self._queue.get()
                # In a burst (a batch applied moments ago), let the watch deliver what etcd
                # has sent meanwhile: one batch of many events costs far less than as many
                # batches of one. A change after a quiet spell is applied at once.
                wait = self._last_batch + GATHER_S - self.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._drain(first)
                if pumper.done():
                    pumper.result()  # surface a crash of the registry adapter
        finally:
            pumper.cancel()
            writer.cancel()
            health.cancel()
            if self._timer is not None:
                self._timer.cancel()

    def _drain(self, first: tuple[float, Input | _Due] | None = None) -> None:
        """Apply everything queued, as one batch per pass, until nothing is left."""
        if self._draining:
            if first is not None:  # (not reached: the loop's task never nests)
                self._queue.put_nowait(first)
            return
        self._draining = True
        try:
            batch = [first] if first is not None else []
            while True:
                queue = self._queue
                while not queue.empty():
                    batch.append(queue.get_nowait())
                if not batch:
                    return
                self.apply_batch(batch)
                batch = []
        finally:
            self._draining = False

    # -- one batch -----------------------------------------------------------------------

    def apply_batch(self, batch: list[tuple[float, Input | _Due]]) -> ChangeSet:
        """Fold a batch of inputs, translate once, apply to the cache once; return what
        the registry updates changed."""
        started = self.clock()
        work = _Batch()
        size = _size(batch)
        # (A listing's last part may be a single key, but it brings the translation of all.)
        with _collector_paused(size + self._listing_entries >= BIG_BATCH):
            handlers = self._handlers
            for observed_at, item in batch:
                handlers[type(item)](work, observed_at, item)
            changes = work.changes
            folded = self.clock()
            registry = bool(work.observed)
            if registry and self.state.listing:
                # Parts of a listing so far: stored, nothing to translate until the last.
                self._listing_parts += 1
                self._listing_entries += size
                self._listing_fold += folded - started
                if not work.refresh:
                    return changes
            if not self._snapshot_seen:
                if not work.reset or self.state.listing:
                    # Nothing is served before the registry's first complete listing: a proxy
                    # that connects meanwhile (its certificate, health or DNS inputs) must not
                    # make the cache ready with an empty registry. The inputs are kept in
                    # self.inputs; the listing's translation, which covers everything, uses them.
                    return changes
                self._snapshot_seen = True
            translate = changes
            if work.refresh:  # (other inputs' services, beside the registry's changes)
                refresh = work.refresh & self.state.services.keys()
                ids = {r: i for r, i in changes.endpoint_ids.items() if r not in refresh}
                translate = replace(
                    changes, endpoints=changes.endpoints | refresh, endpoint_ids=ids
                )
            translate = self._coalesce(translate, folded, work)
            delta = self.translator.update(self.state, translate, self.inputs)
            self._dns_reconcile(
                changes.services | translate.endpoints | changes.endpoints | work.dns, changes
            )
            self.translator.report_notes(self.state.problems, changes)
        translated_at = self.clock()
        observed_at = min(batch[0][0], work.observed_at)
        self.cache.apply(delta, self.state.revision, observed_at=observed_at)
        self._pushed_now(translate, folded)
        # (an observer may submit an input: it is applied right after this batch)
        generation, woken = self.cache.generation, self.cache.last_woken
        if registry:
            for observe in self.observers:  # after the batch is cached: they may refresh EDS
                observe(self.state, changes)
        if work.converges and (delta or delta.listeners_changed):
            self.metrics.convergence.changed(generation, observed_at, woken)
        if registry:
            self.batches += 1
            self._last_batch = self.clock()
        applied = self.clock()
        translated = applied - started
        if work.reset and not self.state.listing:
            log.info(
                "registry snapshot applied: %d entries in %d parts, revision %d: fold %.2fs, "
                "translate %.2fs, cache and observers %.2fs",
                self._listing_entries + size,
                self._listing_parts + 1,
                self.state.revision,
                self._listing_fold + folded - started,
                translated_at - folded,
                applied - translated_at,
            )
            self._listing_parts = self._listing_entries = 0
            self._listing_fold = 0.0
        lags = [applied - observed for observed in work.observed]
        # Bookkeeping waits until the woken streams have written their pushes: their
        # wake-ups were scheduled by cache.apply, so call_soon runs after them.
        try:
            asyncio.get_running_loop().call_soon(
                self._after, changes, translated, lags, bool(delta)
            )
        except RuntimeError:  # no loop (unit tests drive apply_batch directly)
            self._after(changes, translated, lags, bool(delta))
        return changes

    # -- coalescing a service's endpoint changes ------------------------------------------

    def _coalesce(self, translate: ChangeSet, now: float, work: _Batch) -> ChangeSet:
        """What of ``translate`` to translate now. Endpoint changes (by id) to a service
        whose last push is still in flight (:meth:`_in_flight`) are held instead; held ones
        go out once it is not, or with a change that rebuilds the service's assignments
        anyway (a change to the service, health, DNS, a listing)."""
        held = self._held
        if self.coalesce <= 0 or (not translate.endpoints and not held.endpoints):
            return translate
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no loop to release them: unit tests driving apply_batch)
            return translate
        hold = [
            ref
            for ref in translate.endpoints
            if ref not in translate.services  # (rebuilt whole: held ones go with it)
            and translate.changed_endpoint_ids(ref) is not None
            and self._in_flight(ref, now) is not None
        ]
        if not hold and not held.endpoints:  # (the common case: nothing to hold back)
            return translate
        endpoints, ids = set(translate.endpoints), dict(translate.endpoint_ids)
        for ref in hold:
            held.merge(ChangeSet(endpoints={ref}, endpoint_ids={ref: ids.pop(ref)}))
            self._held_since.setdefault(ref, work.observed_at if work.observed else now)
            endpoints.discard(ref)
        next_look = float("inf")
        for ref in list(held.endpoints):
            look = self._in_flight(ref, now)
            if look is None or ref in endpoints or ref in translate.services:
                _release_into(held, ref, endpoints, ids)
                work.observed_at = min(work.observed_at, self._held_since.pop(ref, now))
                work.converges = True
            else:
                next_look = min(next_look, look)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if held.endpoints:
            self._timer = loop.call_later(max(0.0, next_look - now), self._release)
        return replace(translate, endpoints=endpoints, endpoint_ids=ids)

    def _in_flight(self, ref: ServiceRef, now: float) -> float | None:
        """When to look again whether service ``ref``'s last push of its assignments is
        still in flight, or None when it is not (its next change goes out at once).

        A push is in flight for :attr:`coalesce` seconds at least; until nearly every proxy
        it went to that keeps up has answered it (at most :data:`COALESCE_MAX_S`: a proxy
        that does not answer holds nobody back longer, and one that never answers or is
        behind on an earlier push is not waited for at all: see
        :meth:`~xds_server.metrics.ConvergenceTracker.waiting_in_step`); and then as long
        again as that took, so that the pushes of one burst keep the proxies and meshd
        busy half of the time at most and other changes find them free the rest.
        """
        push = self._pushed.get(ref)
        if push is None:
            return None
        if push.answered is None:
            tracker = self.metrics.convergence
            give_up = push.at + COALESCE_MAX_S
            in_step = tracker.waiting_in_step(push.generation)
            if in_step > push.woken // 100 and now < give_up - _TIMER_SLACK:
                return max(push.at + self.coalesce, min(now + _POLL_S, give_up))
            if not tracker.waiting(push.generation):
                # All answered: when they did (or it woke no stream that had to answer).
                push.answered = tracker.converged_at(push.generation) or push.at
            elif in_step <= push.woken // 100:
                # Nearly all that keep up answered: when the last of them did, not when
                # this looks (the next change may come long after; the rest may never).
                last = tracker.last_answer_at(push.generation)
                push.answered = min(now, last) if last is not None else push.at
            else:
                push.answered = give_up  # (not answered in time: taken as answered now)
        due = max(push.at + self.coalesce, 2 * push.answered - push.at)
        return due if now < due - _TIMER_SLACK else None

    def _pushed_now(self, translated: ChangeSet, now: float) -> None:
        """Note that the endpoint updates ``translated`` names went out now, in the cache
        generation just applied, to the streams it woke (a listing, a change to a service
        and a refresh are no rolling deploy: their next endpoint update goes out at once)."""
        if self.coalesce <= 0 or not translated.endpoint_ids:
            return
        pushed = self._pushed
        push = _Push(now, self.cache.generation, len(self.cache.last_woken))
        for ref in translated.endpoint_ids.keys() & translated.endpoints:
            if ref not in translated.services:
                pushed[ref] = push
        if len(pushed) > 4 * len(self._held.endpoints) + 1024:  # (forget those long quiet)
            self._pushed = {
                r: p
                for r, p in pushed.items()
                if now - p.at < COALESCE_MAX_S or r in self._held.endpoints
            }

    def _release(self) -> None:
        """The timer of held endpoint changes: translate those due now."""
        self._timer = None
        self._queue.put_nowait((self.clock(), _DUE))
        self._drain()

    def _due(self, work: _Batch, observed_at: float, item: Input | _Due) -> None:
        """Held endpoint changes are due: :meth:`_coalesce` releases them in this batch."""
        work.converges = True

    # -- handlers, one per input type ----------------------------------------------------

    def _registry_update(self, work: _Batch, observed_at: float, item: Input | _Due) -> None:
        """A registry update: folded into the state; what it changed is translated."""
        assert isinstance(item, (Reset, Changes))
        work.changes.merge(self.state.apply(item))
        work.observed.append(observed_at)
        work.observed_at = min(work.observed_at, observed_at)
        work.converges = True
        if isinstance(item, Reset):
            work.reset = True
        elif self.events.active:
            for e in item.events:
                kind: EventType = "registry_put" if e.kind == "put" else "registry_delete"
                self.events.publish(kind, key=e.key, revision=e.revision)

    def _health_verdicts(self, work: _Batch, observed_at: float, item: Input | _Due) -> None:
        """Health verdicts changed: the services whose verdicts moved are translated again
        with the new health."""
        assert isinstance(item, HealthVerdicts)
        self.inputs = replace(self.inputs, health=item.health)
        work.refresh |= item.changed

    def _dns_answers(self, work: _Batch, observed_at: float, item: Input | _Due) -> None:
        """Addresses of some endpoint names changed: the services using them are
        translated again, and their names' problems brought up to date."""
        assert isinstance(item, DnsAnswers)
        names = item.names
        refs = {ref for ref, used in self.translator.dns_names.items() if used.keys() & names}
        work.refresh |= refs
        work.dns |= refs
        work.converges = True

    def _certificates(self, work: _Batch, observed_at: float, item: Input | _Due) -> None:
        """Workload certificates were issued or rotated, or node clusters came and went:
        translation brings the SDS Secrets up to date (it sees the new value)."""
        assert isinstance(item, Certificates)
        self.inputs = replace(
            self.inputs, certificates=item.by_cluster, trust_bundle=item.bundle_pem
        )

    # -- outputs after the push ----------------------------------------------------------

    def _after(
        self, changes: ChangeSet, translated: float, lags: list[float], served: bool
    ) -> None:
        if lags:  # (registry updates were in the batch)
            self.metrics.translate_seconds.observe(translated)
            for lag in lags:
                self.metrics.watch_lag.observe(lag)
            self.metrics.registry_revision.set(self.state.revision)
        if served:  # (what is served changed)
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
            if problem.warning:  # (in force as it is: not a rejection, not counted as one)
                log.warning("%s (revision %d): %s", key, problem.revision, problem.message)
                continue
            log.warning("rejected %s (revision %d): %s", key, problem.revision, problem.message)
            self.events.publish(
                "registry_rejected", key=key, revision=problem.revision, message=problem.message
            )
        for key in sorted(changes.problems_cleared):
            log.info("entry %s is valid again", key)
        if changes.problems_set or changes.problems_cleared:
            counts = dict.fromkeys((*KINDS, "unknown"), 0)
            for key, problem in self.problems().items():
                if problem.warning:
                    continue
                kind = key[len(self.state.prefix) :].split("/", 1)[0]
                counts[kind if kind in counts else "unknown"] += 1
            for kind, n in counts.items():
                self.metrics.rejected_entries.labels(kind).set(n)
        self.status.update(changes)
