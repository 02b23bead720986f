"""Change routing in the cache: a change wakes only the streams that hold it."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.cache import ConfigCache
from xds_server.cache.watch import Wakeup, Watcher
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.resources.resource import resource_from_bytes
from xds_server.resources.scope import Selection, no_scopes
from xds_server.translate.translator import Delta


def _change(cache: ConfigCache, type_url: str, name: str, body: bytes) -> None:
    delta = Delta()
    delta.changed[type_url][name] = resource_from_bytes(type_url, name, body)
    cache.apply(delta, cache.revision + 1)


def _woken(w: Watcher) -> dict[str, set[str]]:
    woke = w.event.is_set()
    pending, _ = w.take()
    return {t: set(names) for t, names in pending.items()} if woke else {}


def test_changes_reach_only_the_watchers_that_hold_them() -> None:
    cache = ConfigCache()
    _change(cache, ENDPOINT, "a", b"1")
    _change(cache, ENDPOINT, "b", b"1")
    # (a wildcard hears what its scope covers: here, every endpoint)
    cache.apply(Delta(scopes=lambda _: Selection({}, every=frozenset({CLUSTER, ENDPOINT}))), 3)
    undeclared, holds_a, wild, cds_only = (cache.watch() for _ in range(4))
    a = cache.intern({"a"})
    cache.set_interest(holds_a, {ENDPOINT: (False, a)})
    cache.set_interest(wild, {ENDPOINT: (True, frozenset())})
    cache.set_interest(cds_only, {CLUSTER: (True, frozenset())})

    _change(cache, ENDPOINT, "b", b"2")
    assert _woken(undeclared) == {ENDPOINT: {"b"}}
    assert _woken(holds_a) == {}
    assert _woken(wild) == {ENDPOINT: {"b"}}
    assert _woken(cds_only) == {}

    _change(cache, ENDPOINT, "a", b"2")
    assert _woken(holds_a) == {ENDPOINT: {"a"}}
    assert _woken(cds_only) == {}

    # Subscribing to b later: b's changes now reach it; unsubscribing a: a's do not.
    cache.set_interest(holds_a, {ENDPOINT: (False, cache.intern({"b"}))})
    _change(cache, ENDPOINT, "a", b"3")
    _change(cache, ENDPOINT, "b", b"3")
    assert _woken(holds_a) == {ENDPOINT: {"b"}}

    # A new scope rule (listeners changed) may move any stream's scope: everyone wakes.
    delta = Delta(scopes=no_scopes)
    cache.apply(delta, cache.revision + 1)
    for w in (undeclared, holds_a, wild, cds_only):
        assert w.event.is_set() and w.scopes_changed
        w.take()

    cache.unwatch(holds_a)
    assert not cache._sets_by_name[ENDPOINT] and not cache._groups[ENDPOINT]
    _change(cache, ENDPOINT, "b", b"4")
    assert _woken(holds_a) == {}


def test_the_oldest_unseen_value_is_kept() -> None:
    cache = ConfigCache()
    _change(cache, ENDPOINT, "a", b"1")
    first = cache.get(ENDPOINT, "a")
    w = cache.watch()
    cache.set_interest(w, {ENDPOINT: (False, cache.intern({"a"}))})
    _change(cache, ENDPOINT, "a", b"2")
    _change(cache, ENDPOINT, "a", b"3")
    pending, _ = w.take()
    assert pending[ENDPOINT]["a"] is first  # what the client still holds


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.one_of(st.none(), st.binary(max_size=3))),
        max_size=30,
    ),
    st.frozensets(st.sampled_from("abcdefghxy")),
)
def test_memoized_subscription_xor_follows_changes(
    changes: list[tuple[str, bytes | None]], subscription: frozenset[str]
) -> None:
    """The XOR carried over each change equals one computed from scratch (the memo is
    kept for the sets streams watch)."""
    cache = ConfigCache()
    names = cache.intern(subscription)
    cache.set_interest(cache.watch(), {ENDPOINT: (False, names)})
    for name, body in changes:
        cache.subscription_xor(ENDPOINT, names)  # memoize at the current generation
        delta = Delta()
        delta.changed[ENDPOINT][name] = (
            None if body is None else resource_from_bytes(ENDPOINT, name, body)
        )
        cache.apply(delta, cache.revision + 1)
        assert cache.subscription_xor(ENDPOINT, names) == cache.xor_of(ENDPOINT, names)


async def test_wakeup_behaves_as_an_event_for_its_one_waiter() -> None:
    w = Wakeup()
    assert not w.is_set()
    w.set()
    await asyncio.wait_for(w.wait(), 1)  # set before: returns at once
    w.clear()
    waiter = asyncio.ensure_future(w.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # cleared: waits
    w.set()
    w.set()  # (twice: one wake-up)
    await asyncio.wait_for(waiter, 1)
    w.clear()
    first = asyncio.ensure_future(w.wait())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one waiter"):
        await w.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    w.set()  # a cancelled waiter is gone: setting is harmless
    await asyncio.wait_for(w.wait(), 1)
