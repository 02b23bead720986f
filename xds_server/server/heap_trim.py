"""Give memory freed after a burst back to the OS (glibc ``malloc_trim``).

A burst of work allocates far more than meshd keeps: many proxies connecting each get
the full config (gRPC copies every response into its own buffers until the socket takes
it), and a cold start translates every endpoint. When the burst is over, glibc keeps
most of what was freed: the main heap only shrinks from its top, and free chunks in the
middle, and in gRPC's thread arenas, stay resident. ``malloc_trim(0)`` walks every arena
and returns the free pages inside it too (``madvise(MADV_DONTNEED)``), so meshd's RSS
falls back towards what it really holds.

:class:`TrimSchedule` decides *when* (pure, clock passed in): once activity has been quiet
for ``quiet`` seconds, or ``max_delay`` after the first unanswered poke if it never goes
quiet (steady churn). :class:`HeapTrimmer` runs it on the event loop and calls the trim
in a worker thread: ctypes releases the GIL, so the loop keeps serving meanwhile.
Elsewhere than glibc (musl, macOS) there is no ``malloc_trim`` and the trimmer does
nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TrimFn = Callable[[], object]

YOUNG_COLLECT_DELAY_S = 0.2
"""After an RPC ends, how long until the young generation is collected (and at most how
often)."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def load_malloc_trim() -> TrimFn | None:
    """``malloc_trim(0)`` from the C library, or ``None`` where there is none."""
    try:
        # The symbols already loaded into this process (libc among them): no search for
        # the library file (``ctypes.util.find_library`` runs ``ldconfig``, a subprocess).
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: fn(0)


MMAP_THRESHOLD = 1 << 20
"""Allocations from this size up get their own mapping (see :func:`pin_mmap_threshold`)."""

_M_MMAP_THRESHOLD = -3  # (mallopt's parameter number, glibc malloc.h)


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``nbytes`` and more from their own ``mmap``, at a fixed
    threshold; False where the C library has no ``mallopt``.

    glibc starts at 128 KiB but raises the threshold to the size of each mapped chunk
    freed (up to 32 MiB), so once a client sends one multi-megabyte request (gRPC holds
    each received message in one buffer) every later buffer below that size comes from
    the heap, where one survivor pins the pages around it and no trim returns them. A
    fixed threshold also turns that adjustment off: big messages and responses go back to
    the OS when freed, and everything below a megabyte (every response but the largest
    sets) stays on the faster heap."""
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return bool(fn(_M_MMAP_THRESHOLD, nbytes))


def rss_bytes() -> int:
    """This process's resident set size as the OS sees it (0 where unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class TrimSchedule:
    """When to trim: after ``quiet`` seconds without a poke, at most ``max_delay`` after the
    first poke since the last trim."""

    def __init__(self, quiet: float, max_delay: float) -> None:
        if quiet < 0 or max_delay < quiet:
            raise ValueError(f"need 0 <= quiet ({quiet}) <= max_delay ({max_delay})")
        self.quiet = quiet
        self.max_delay = max_delay
        self._first: float | None = None
        self._last = 0.0

    @property
    def pending(self) -> bool:
        return self._first is not None

    def poke(self, now: float) -> None:
        """Something allocated (or freed) a lot: trim once it is over."""
        if self._first is None:
            self._first = now
        self._last = now

    def wait(self, now: float) -> float | None:
        """Seconds until a trim is due (0: now), or ``None`` when nothing is pending."""
        if self._first is None:
            return None
        due = min(self._last + self.quiet, self._first + self.max_delay)
        return max(0.0, due - now)

    def trimmed(self) -> None:
        """A trim started: pokes from now on call for the next one."""
        self._first = None


class HeapTrimmer:
    """Trims the heap after bursts; ``poke()`` from the event loop thread."""

    def __init__(
        self,
        quiet: float = 1.0,
        max_delay: float = 10.0,
        *,
        trim: TrimFn | None = None,
        rss: Callable[[], int] = rss_bytes,
        clock: Callable[[], float] = time.monotonic,
        on_trim: Callable[[float, int], None] | None = None,
    ) -> None:
        self.schedule = TrimSchedule(quiet, max_delay)
        self._trim = trim if trim is not None else load_malloc_trim()
        self._rss = rss
        self._clock = clock
        self._on_trim = on_trim
        """Called with (seconds taken, RSS bytes released) after each trim."""
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[tuple[float, int]] | None = None
        self._closed = False
        self._young: asyncio.TimerHandle | None = None
        self.trims = 0

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def poke(self) -> None:
        """Note a burst of allocation; a trim follows once it is over."""
        if self._trim is None or self._closed:
            return
        self.schedule.poke(self._clock())
        if self._timer is None and self._running is None:
            self._arm()

    def stream_ended(self) -> None:
        """An RPC ended: gRPC leaves each one in a reference cycle (call state, context,
        request iterator) holding its C buffers, the request among them; collect the
        young generation shortly (at most every :data:`YOUNG_COLLECT_DELAY_S`), so that a
        stream of short RPCs with big requests does not pile up until a trim."""
        self.poke()
        if self._young is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # Later, not now: the RPC becomes garbage only once gRPC has sent its status.
        self._young = loop.call_later(YOUNG_COLLECT_DELAY_S, self._collect_young)

    def _collect_young(self) -> None:
        self._young = None
        gc.collect(0)  # (bounded by the young generation's threshold)

    def _arm(self) -> None:
        wait = self.schedule.wait(self._clock())
        if wait is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # poked outside the loop (a test driving code directly)
            return  # the next poke from within the loop arms it
        self._timer = loop.call_later(wait, self._due)

    def _due(self) -> None:
        self._timer = None
        wait = self.schedule.wait(self._clock())
        if wait is None:
            return
        if wait > 0:  # poked since the timer was set: wait for quiet again
            self._timer = asyncio.get_running_loop().call_later(wait, self._due)
            return
        self.schedule.trimmed()
        # First free what only reference cycles hold: meshd raises the young generation's
        # threshold (few collections during pushes), so the cycles a burst leaves (ended
        # RPCs, with their C buffers) can wait long for one. The two younger generations
        # only: bounded by that threshold, and the long-lived registry is frozen.
        gc.collect(1)
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(None, self._run_trim)
        self._running.add_done_callback(self._finished)

    def _run_trim(self) -> tuple[float, int]:
        assert self._trim is not None
        before = self._rss()
        started = time.perf_counter()
        self._trim()
        took = time.perf_counter() - started
        return took, max(0, before - self._rss())

    def _finished(self, fut: asyncio.Future[tuple[float, int]]) -> None:
        self._running = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:  # never expected; a trim is an optimisation, not a duty
            log.warning("heap trim failed: %s", exc)
        else:
            took, released = fut.result()
            self.trims += 1
            log.debug("heap trim: %.1f MB returned in %.1f ms", released / 2**20, took * 1e3)
            if self._on_trim is not None:
                self._on_trim(took, released)
        if self.schedule.pending and not self._closed:  # poked while trimming
            self._arm()

    def close(self) -> None:
        """Cancel a pending trim and ignore pokes from now on (one already running
        finishes in its thread)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._young is not None:
            self._young.cancel()
            self._young = None
