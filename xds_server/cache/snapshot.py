"""The config cache: the resource index served, node scopes, and change fan-out.

Resources live once in the index (serialized once, shared by every stream), and it is
the only index: translation computes its changes against it (:meth:`ConfigCache.served`).
A :class:`~xds_server.cache.scope.Scope` is what a node gets by wildcard; which names
that is, per node cluster, is decided by the scope rule translation hands over with its
changes (the cache knows names and selections, not what a listener is). Scopes are
memoized per node cluster and shared by every node with the same selection, and their
type versions are XORs of per-resource digests so they update in O(changed).

Per-stream state is kept small by sharing: subscription sets are interned (every Envoy
of a scope asks for the same cluster names), the complete set of a type in a scope and
the version of a subscription are memoized per type generation, and encoded responses
that come out identical for many streams are built once (:meth:`ConfigCache.shared_wire`).

Streams register a :class:`~xds_server.cache.watch.Watcher`; each change records, per
type, the names that changed with the resource each had before the first unseen change,
and wakes the stream, when it holds them: by name for explicit subscriptions, by its node
cluster's scope for wildcard ones (a name outside the scope wakes nobody there). A new
scope rule wakes every stream, or only those of the node clusters it says it moved. A slow
stream only accumulates names; it never holds up the others (backpressure stays per stream).
Servers use the cache through :mod:`xds_server.cache.contract` only.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable, Mapping

from xds_server.cache.contract import WILDCARD_TYPES, TranslatedChanges
from xds_server.cache.scope import Scope
from xds_server.cache.watch import Interest, Pending, Watcher, merge_pending
from xds_server.resources.resource import Resource
from xds_server.resources.scope import ScopeRule, is_private, no_scopes
from xds_server.resources.types import TYPE_ORDER

__all__ = ["WILDCARD_TYPES", "ConfigCache", "Pending", "Scope", "Watcher"]

_UNSHARED_SWEEP_BYTES = 1024 * 1024
"""Below this many bytes kept, a stream's end does not look for responses to drop."""


class ConfigCache:
    """Global index of translated resources plus scopes, watchers and shared memos."""

    def __init__(self, wire_budget: int = 64 * 1024 * 1024) -> None:
        """``wire_budget``: bytes of encoded responses :meth:`shared_wire` keeps at most."""
        self.index: dict[str, dict[str, Resource]] = {t: {} for t in TYPE_ORDER}
        self.xors: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)
        self.type_generation: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)
        self.generation = 0
        self.revision = 0
        self.changed_at = 0.0  # time.monotonic() when the change being pushed reached meshd
        self.ready = asyncio.Event()
        self.last_woken: set[Watcher] = set()
        """Watchers the last :meth:`apply` woke (valid until the next one)."""
        self._scope_rule: ScopeRule = no_scopes
        self._scopes: dict[str, Scope] = {}
        self._scope_by_key: dict[object, Scope] = {}
        self._watchers: set[Watcher] = set()
        # Who hears a change: undeclared watchers hear all; the others by type or by name.
        self._open: set[Watcher] = set()
        # Wildcard watchers by node cluster: a change wakes those whose scope covers it.
        self._wild: dict[str, dict[str, set[Watcher]]] = {t: {} for t in TYPE_ORDER}
        self._by_cluster: dict[str, set[Watcher]] = {}
        self.private_xors: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)
        """Per type, XOR of the digests of the private names (resources/scope.py)."""
        self.private_counts: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)
        """Per type, how many private names the index holds."""
        # Explicit subscriptions are indexed by subscription set, not by watcher: thousands of
        # proxies share one interned set (every sidecar asks for the same clusters), so the
        # name index costs O(distinct sets x names), not O(streams x names).
        self._groups: dict[str, dict[frozenset[str], set[Watcher]]] = {t: {} for t in TYPE_ORDER}
        self._sets_by_name: dict[str, dict[str, set[frozenset[str]]]] = {t: {} for t in TYPE_ORDER}
        self._interned: dict[frozenset[str], frozenset[str]] = {}
        self._intern_limit = 1024
        # Per type: XOR of each watched subscription set, kept current by every change.
        self._set_xors: dict[str, dict[frozenset[str], int]] = {t: {} for t in TYPE_ORDER}
        self._wire: dict[tuple[object, ...], bytes] = {}
        self._wire_generation = -1
        self._wire_bytes = 0
        self._wire_budget = wire_budget
        self._wire_shared: set[tuple[object, ...]] = set()  # keys asked for more than once
        self.wire_evictions = 0
        """Encoded responses dropped to stay within the budget (or never kept: too big)."""

    # -- writes -----------------------------------------------------------------------

    def apply(self, delta: TranslatedChanges, revision: int, observed_at: float = 0.0) -> None:
        """Install translated changes and wake the watchers they concern (every watcher
        when the scope rule changed)."""
        self.revision = revision
        self.changed_at = observed_at
        olds: dict[str, dict[str, Resource | None]] = {}
        for type_url, changed in delta.changed.items():
            if not changed:
                continue
            index = self.index[type_url]
            before = olds[type_url] = {}
            flips: dict[str, int] = {}  # name -> old digest ^ new digest
            for name, res in changed.items():
                old = index.pop(name, None)
                before[name] = old
                flip = 0
                if old is not None:
                    flip = old.digest
                if res is not None:
                    index[name] = res
                    flip ^= res.digest
                self.xors[type_url] ^= flip
                flips[name] = flip
                if is_private(name):
                    self.private_xors[type_url] ^= flip
                    self.private_counts[type_url] += (res is not None) - (old is not None)
            self.type_generation[type_url] += 1
            self._advance_set_xors(type_url, flips)
        scopes = delta.scopes
        rescoped = delta.rescoped if scopes is not None else None
        if scopes is not None:
            self._scope_rule = scopes
            if rescoped is None:
                self._scopes.clear()
                self._scope_by_key.clear()
            else:
                for node_cluster in rescoped:
                    self._scopes.pop(node_cluster, None)
                self._sweep_scopes()
        self.generation += 1
        self.ready.set()
        self.last_woken = set()
        if not olds and scopes is None:
            return
        woken: set[Watcher] = set()
        for type_url, before in olds.items():
            for w in self._open:
                merge_pending(w, type_url, before)
                woken.add(w)
            self._wake_wild(type_url, before, woken)
            sets_by_name = self._sets_by_name[type_url]
            if not sets_by_name:
                continue
            groups = self._groups[type_url]
            for name, old in before.items():
                for subscription in sets_by_name.get(name, ()):
                    for w in groups[subscription]:
                        mine = w.pending.setdefault(type_url, {})
                        mine.setdefault(name, old)  # the oldest unseen value: what it holds
                        woken.add(w)
        if scopes is not None:
            if rescoped is None:
                moved: Iterable[Watcher] = self._watchers
            else:
                moved = [w for nc in rescoped for w in self._by_cluster.get(nc, ())]
            for w in moved:
                w.scopes_changed = True
                woken.add(w)
        for w in woken:
            w.event.set()
        self.last_woken = woken

    def _wake_wild(
        self, type_url: str, before: dict[str, Resource | None], woken: set[Watcher]
    ) -> None:
        """Give the wildcard watchers of ``type_url`` the changed names their scope covers
        (the names it held or now holds), and wake them; the others hear nothing. Node
        clusters that share a scope share one filtered copy."""
        groups = self._wild[type_url]
        if not groups:
            return
        private = any(is_private(n) for n in before)
        by_scope: dict[int, dict[str, Resource | None]] = {}
        for node_cluster, watchers in groups.items():
            scope = self.scope(node_cluster)
            mine = by_scope.get(id(scope))
            if mine is None:
                mine = by_scope[id(scope)] = _covered(scope, type_url, before, private)
            if not mine:
                continue
            for w in watchers:
                merge_pending(w, type_url, mine)
                woken.add(w)

    def _sweep_scopes(self) -> None:
        """Forget shared scopes no node cluster has any more (after a targeted rule change:
        the others keep theirs)."""
        if len(self._scope_by_key) <= 2 * len(self._scopes) + 64:
            return
        live = {id(s) for s in self._scopes.values()}
        self._scope_by_key = {k: s for k, s in self._scope_by_key.items() if id(s) in live}

    # -- reads ------------------------------------------------------------------------

    def scope(self, node_cluster: str) -> Scope:
        """The scope of nodes whose ``cluster`` is ``node_cluster`` (memoized, shared)."""
        scope = self._scopes.get(node_cluster)
        if scope is not None:
            return scope
        selection = self._scope_rule(node_cluster)
        key = selection.key()
        scope = self._scope_by_key.get(key)
        if scope is None:
            scope = self._scope_by_key[key] = Scope(selection, self)
        self._scopes[node_cluster] = scope
        return scope

    def served(self) -> Mapping[str, Mapping[str, Resource]]:
        """Type URL -> name -> resource served now (read-only, not a copy): translation
        computes its changes against it, so the served index is the only one."""
        return self.index

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        """Every resource of ``type_url`` served now, by name (read-only, not a copy)."""
        return self.index[type_url]

    def count(self, type_url: str) -> int:
        """How many resources of ``type_url`` are served."""
        return len(self.index[type_url])

    async def wait_ready(self) -> None:
        """Return once the first snapshot is in (at once after that)."""
        await self.ready.wait()

    def get(self, type_url: str, name: str) -> Resource | None:
        """One resource served now, if it exists."""
        return self.index[type_url].get(name)

    def xor_of(self, type_url: str, names: Iterable[str]) -> int:
        """XOR of the digests of the existing resources among ``names``."""
        index = self.index[type_url]
        acc = 0
        for name in names:
            res = index.get(name)
            if res is not None:
                acc ^= res.digest
        return acc

    def intern(self, names: Iterable[str]) -> frozenset[str]:
        """One shared frozenset per distinct subscription (every Envoy asks the same)."""
        fs = frozenset(names)
        shared = self._interned.setdefault(fs, fs)
        if len(self._interned) > self._intern_limit:
            self._sweep_interned()
        return shared

    def _sweep_interned(self) -> None:
        # Drop sets no stream holds any more: the table and getrefcount's argument are
        # the only references left (key and value are the same object).
        for fs in [fs for fs in self._interned if sys.getrefcount(fs) <= 4]:
            del self._interned[fs]
        self._intern_limit = max(1024, 2 * len(self._interned))

    def _advance_set_xors(self, type_url: str, flips: Mapping[str, int]) -> None:
        """Carry memoized subscription XORs over a change: XOR each changed name's flip into
        the watched sets that hold it (found through the name index). O(changed names x
        sets holding them): thousands of sidecars with a subscription set each cost a change
        nothing unless they hold what changed."""
        memo = self._set_xors[type_url]
        if not memo:
            return
        if len(flips) > 1024:  # a relist: recompute lazily instead
            memo.clear()
            return
        by_name = self._sets_by_name[type_url]
        for name, flip in flips.items():
            if not flip:
                continue
            for names in by_name.get(name, ()):
                xor = memo.get(names)
                if xor is not None:
                    memo[names] = xor ^ flip

    def subscription_xor(self, type_url: str, names: frozenset[str]) -> int:
        """XOR of the digests of the existing resources among ``names``, memoized for the
        sets streams watch (only those are in the name index each change walks)."""
        memo = self._set_xors[type_url]
        xor = memo.get(names)
        if xor is not None:
            return xor
        xor = self.xor_of(type_url, names)
        if names in self._groups[type_url]:
            memo[names] = xor
        return xor

    def shared_wire(self, key: tuple[object, ...], build: Callable[[], bytes]) -> bytes:
        """Encoded responses that many streams get identically are built once per generation.

        At most ``wire_budget`` bytes are kept (the oldest go first): a client that asks for
        a new subscription over and over makes a new response each time, and none of them
        may stay until the next registry change. When a stream ends, the responses only one
        stream asked for are dropped (:meth:`unwatch`).
        """
        if self._wire_generation != self.generation:
            self._drop_wire()
            self._wire_generation = self.generation
        wire = self._wire.get(key)
        if wire is not None:
            self._wire_shared.add(key)
            return wire
        wire = build()
        size = len(wire)
        if size > self._wire_budget:
            self.wire_evictions += 1
            return wire
        while self._wire and self._wire_bytes + size > self._wire_budget:
            old = next(iter(self._wire))
            self._wire_bytes -= len(self._wire.pop(old))
            self._wire_shared.discard(old)
            self.wire_evictions += 1
        self._wire[key] = wire
        self._wire_bytes += size
        return wire

    @property
    def wire_bytes(self) -> int:
        """Bytes of encoded responses kept for sharing now."""
        return self._wire_bytes

    def _drop_wire(self) -> None:
        self._wire.clear()
        self._wire_shared.clear()
        self._wire_bytes = 0

    def _drop_unshared_wire(self) -> None:
        """Drop the responses only one stream asked for: the stream that ended may have
        been the one. Cheap to rebuild if another stream asks after all."""
        if self._wire_bytes < _UNSHARED_SWEEP_BYTES:
            return
        for key in [k for k in self._wire if k not in self._wire_shared]:
            self._wire_bytes -= len(self._wire.pop(key))

    def watch(self) -> Watcher:
        """A new inbox that hears every change until :meth:`set_interest` narrows it."""
        w = Watcher()
        self._watchers.add(w)
        self._open.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        """``w`` hears nothing more."""
        self.set_interest(w, {}, w.node_cluster)
        self._leave_cluster(w)
        self._watchers.discard(w)
        self._open.discard(w)
        self._drop_unshared_wire()

    def set_interest(self, w: Watcher, interest: Interest, node_cluster: str = "") -> None:
        """Declare what ``w`` listens to from now on (see :class:`Watcher`): its wildcard
        types within the scope of ``node_cluster``, its subscribed names.

        Subscriptions are interned sets, so an unchanged one is recognised by identity and
        costs nothing; a set's names are indexed once, when its first watcher joins.
        """
        if w.interest == interest and w.node_cluster == node_cluster:
            # Most requests are ACKs that change no subscription: the same interned sets,
            # so this compares by identity, far cheaper than the walk below.
            return
        old = w.interest or {}
        old_cluster = w.node_cluster
        if w.interest is None or old_cluster != node_cluster:
            self._leave_cluster(w)
            self._by_cluster.setdefault(node_cluster, set()).add(w)
        self._open.discard(w)
        for t in set(old) | set(interest):
            before = old.get(t)
            after = interest.get(t)
            was_wild = before is not None and before[0]
            is_wild = after is not None and after[0]
            if was_wild and (not is_wild or old_cluster != node_cluster):
                _discard(self._wild[t], old_cluster, w)
            if is_wild:
                self._wild[t].setdefault(node_cluster, set()).add(w)
            names_before = before[1] if before is not None else None
            names_after = after[1] if after is not None else None
            if names_before is names_after:
                continue
            if names_before:
                self._leave(t, names_before, w)
            if names_after:
                self._join(t, names_after, w)
        w.interest = dict(interest)
        w.node_cluster = node_cluster

    def _leave_cluster(self, w: Watcher) -> None:
        if w.interest is not None:
            _discard(self._by_cluster, w.node_cluster, w)

    def _join(self, t: str, subscription: frozenset[str], w: Watcher) -> None:
        group = self._groups[t].get(subscription)
        if group is None:
            group = self._groups[t][subscription] = set()
            by_name = self._sets_by_name[t]
            for name in subscription:
                by_name.setdefault(name, set()).add(subscription)
        group.add(w)

    def _leave(self, t: str, subscription: frozenset[str], w: Watcher) -> None:
        group = self._groups[t].get(subscription)
        if group is None:
            return
        group.discard(w)
        if group:
            return
        del self._groups[t][subscription]
        by_name = self._sets_by_name[t]
        for name in subscription:
            holders = by_name.get(name)
            if holders is not None:
                holders.discard(subscription)
                if not holders:
                    del by_name[name]
        # No stream watches this set any more (it changed its subscription, or ended): let
        # it go now rather than at the next sweep, which a quiet cache may never reach
        # (a large set holds its names, and its memoized XOR, until then).
        self._set_xors[t].pop(subscription, None)
        if not any(subscription in groups for groups in self._groups.values()):
            self._interned.pop(subscription, None)


def _discard(groups: dict[str, set[Watcher]], key: str, w: Watcher) -> None:
    """Take ``w`` out of ``groups[key]``, and the group with it once empty."""
    group = groups.get(key)
    if group is not None:
        group.discard(w)
        if not group:
            del groups[key]


def _covered(
    scope: Scope, type_url: str, before: dict[str, Resource | None], private: bool
) -> dict[str, Resource | None]:
    """The changes of ``before`` that ``scope`` covers, visiting the smaller side (a
    relist changes every name; a scoped sidecar holds a few dozen)."""
    selection = scope.selection
    if type_url in selection.every:
        if not private:
            return before  # (shared read-only: merge_pending copies what it keeps)
        covers = selection.covers
        return {n: old for n, old in before.items() if covers(type_url, n)}
    names = selection.names.get(type_url)
    if not names:
        return {}
    if len(names) < len(before):
        return {n: before[n] for n in names if n in before}
    return {n: old for n, old in before.items() if n in names}
