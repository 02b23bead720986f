"""Giving freed memory back after a burst: the schedule, the trimmer, glibc, and meshd."""

from __future__ import annotations

import asyncio
import ctypes
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.stream_mesh import BASE
from tests.support.xds_client import running_meshd, sotw_client
from xds_server.server import heap_trim
from xds_server.server.heap_trim import HeapTrimmer, TrimSchedule, load_malloc_trim, rss_bytes


def test_schedule_waits_for_quiet_after_the_last_poke() -> None:
    s = TrimSchedule(quiet=1.0, max_delay=10.0)
    assert s.wait(0.0) is None and not s.pending
    s.poke(0.0)
    assert s.wait(0.0) == 1.0
    s.poke(0.6)
    assert s.wait(0.6) == pytest.approx(1.0)
    assert s.wait(1.2) == pytest.approx(0.4)
    assert s.wait(1.6) == 0.0
    s.trimmed()
    assert s.wait(2.0) is None and not s.pending


def test_schedule_trims_by_max_delay_under_steady_activity() -> None:
    s = TrimSchedule(quiet=1.0, max_delay=3.0)
    for i in range(40):  # a poke every 0.1 s never leaves a quiet second
        s.poke(i / 10)
    assert s.wait(3.9) == 0.0  # due at 3.0, first poke + max_delay
    s.trimmed()
    s.poke(4.0)
    assert s.wait(4.0) == 1.0  # a new burst starts its own count


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=50))
def test_schedule_is_never_due_later_than_either_bound(times: list[float]) -> None:
    times.sort()
    s = TrimSchedule(quiet=0.5, max_delay=2.0)
    for t in times:
        s.poke(t)
    now = times[-1]
    wait = s.wait(now)
    assert wait is not None
    bound = min(times[-1] + 0.5, times[0] + 2.0)  # quiet after the last, or max_delay
    assert now + wait == pytest.approx(max(now, bound))


def test_schedule_refuses_bounds_that_contradict() -> None:
    with pytest.raises(ValueError, match="quiet"):
        TrimSchedule(quiet=2.0, max_delay=1.0)


async def test_trimmer_coalesces_a_burst_into_one_trim() -> None:
    calls: list[float] = []
    done: list[tuple[float, int]] = []
    # Quiet of 0.25 s against pokes 0.01 s apart: only a stall of the whole loop longer
    # than that could let a trim in early.
    t = HeapTrimmer(
        0.25,
        2.0,
        trim=lambda: calls.append(time.monotonic()),
        on_trim=lambda s, r: done.append((s, r)),
    )
    started = time.monotonic()
    for _ in range(10):
        t.poke()
        await asyncio.sleep(0.01)
    assert calls == []  # still busy: no trim yet
    await asyncio.sleep(0.6)
    assert len(calls) == 1 and t.trims == 1 and len(done) == 1
    assert calls[0] - started >= 0.09 + 0.25  # after the last poke, plus quiet
    t.poke()
    await asyncio.sleep(0.6)
    assert len(calls) == 2  # a later burst gets its own trim
    t.close()


async def test_trimmer_trims_under_steady_activity_within_max_delay() -> None:
    calls: list[float] = []
    t = HeapTrimmer(0.1, 0.3, trim=lambda: calls.append(time.monotonic()))
    started = time.monotonic()
    while time.monotonic() - started < 0.8:  # never 0.1 s quiet: only max_delay trims
        t.poke()
        await asyncio.sleep(0.01)
    t.close()
    assert 1 <= len(calls) <= 4  # ~2: at 0.3 and 0.6 s (more only if the loop stalled)
    assert calls[0] - started < 0.3 + 0.15


async def test_trimmer_does_nothing_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap_trim, "load_malloc_trim", lambda: None)
    t = HeapTrimmer(0.0, 0.0)
    assert not t.enabled
    t.poke()
    await asyncio.sleep(0.05)
    assert t.trims == 0 and not t.schedule.pending


def test_glibc_malloc_trim_gives_back_freed_pages_in_the_middle_of_the_heap() -> None:
    trim = load_malloc_trim()
    if trim is None:
        pytest.skip("no malloc_trim in this C library (glibc only)")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 32 * 1024, 2048  # 64 MB in blocks under the mmap threshold: heap memory
    blocks = [libc.malloc(size) for _ in range(count)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    kept = blocks[::64]  # the heap cannot shrink from its top around these
    for b in blocks:
        if b not in kept:
            libc.free(b)
    before = rss_bytes()
    trim()
    after = rss_bytes()
    for b in kept:
        libc.free(b)
    assert before - after > 32 * 2**20, (before, after)


async def test_meshd_trims_after_a_proxy_connects() -> None:
    async with running_meshd(BASE, heap_trim_quiet=0.05, heap_trim_max_delay=0.5) as (_, app):
        if not app.trimmer.enabled:
            pytest.skip("no malloc_trim in this C library (glibc only)")
        await asyncio.sleep(0.2)  # the start's own trim
        before = app.trimmer.trims
        async with sotw_client(app.xds_port, "gateway"):
            await asyncio.sleep(0.3)
        assert app.trimmer.trims > before
        assert app.metrics.registry.get_sample_value("meshd_heap_trims_total") == app.trimmer.trims


async def test_trimmer_ignores_pokes_once_closed() -> None:
    calls: list[float] = []
    t = HeapTrimmer(0.01, 0.1, trim=lambda: calls.append(0.0))
    t.poke()
    t.close()
    t.poke()  # (a stream closing while meshd stops)
    await asyncio.sleep(0.1)
    assert calls == [] and t.trims == 0


def test_a_poke_outside_the_event_loop_waits_for_one_inside() -> None:
    calls: list[float] = []
    t = HeapTrimmer(0.01, 0.1, trim=lambda: calls.append(0.0))
    t.poke()  # no running loop: nothing to schedule on, and no error
    assert t.schedule.pending

    async def later() -> None:
        t.poke()
        await asyncio.sleep(0.1)

    asyncio.run(later())
    assert len(calls) == 1
