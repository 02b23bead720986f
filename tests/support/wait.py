"""Waiting for something to become true: the one polling helper of the suite.

:func:`wait_until` (blocking) and :func:`eventually` (async) call ``probe()`` until
``until(value)`` holds (by default: the value is truthy) and return that value. After
``timeout`` seconds they fail with an AssertionError that says what was awaited, the last value
the probe returned (or the exception it raised, for exceptions named in ``ignoring``), the
timeout, and ``context()`` when given (say, a process's log tail)::

    timed out after 10 s waiting for RDS SYNCED; last value seen: {'state': 'NACKED', ...}

``probe`` is called once more at the deadline, so a slow probe is not cut short. For
:func:`eventually` the probe may be a coroutine function; ``blocking=True`` runs a blocking
probe (HTTP, a subprocess) in a thread so the event loop keeps serving meanwhile.

An Envoy under test has its own :meth:`integration.harness.EnvoyProcess.wait_for`, which also
fails at once (with Envoy's log) when Envoy dies: use that for conditions read from Envoy.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

_NOTHING = object()
_KEEP = 2000  # characters of a long last value kept from each end (a log's tail matters)


class _Tracker:
    """The deadline and the last value of one wait, and the failure message."""

    def __init__(self, what: str, timeout: float, context: Callable[[], object] | None) -> None:
        self.what = what
        self.timeout = timeout
        self.context = context
        self.deadline = time.monotonic() + timeout
        self.last: object = _NOTHING

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def failure(self) -> AssertionError:
        if self.last is _NOTHING:
            seen = "the probe never returned"
        elif isinstance(self.last, BaseException):
            seen = f"last error: {self.last!r}"
        else:
            seen = f"last value seen: {self.last!r}"
        if len(seen) > 2 * _KEEP:
            seen = f"{seen[:_KEEP]} ... ({len(seen) - 2 * _KEEP} characters) ... {seen[-_KEEP:]}"
        message = f"timed out after {self.timeout:g} s waiting for {self.what}; {seen}"
        if self.context is not None:
            message += f"\n{self.context()}"
        return AssertionError(message)


def wait_until(
    probe: Callable[[], T],
    what: str,
    timeout: float,
    *,
    until: Callable[[T], object] = bool,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
    context: Callable[[], object] | None = None,
) -> T:
    """Call ``probe()`` every ``interval`` seconds until ``until(value)`` holds; return the value.

    Exceptions of the types in ``ignoring`` count as "not yet"; any other propagates at once.
    AssertionError (naming ``what``, the last value and ``timeout``, then ``context()`` if
    given) after ``timeout`` seconds.
    """
    wait = _Tracker(what, timeout, context)
    while True:
        try:
            value = probe()
        except ignoring as exc:
            wait.last = exc
        else:
            if until(value):
                return value
            wait.last = value
        if wait.remaining() <= 0:
            raise wait.failure()
        time.sleep(max(0.0, min(interval, wait.remaining())))


async def eventually(
    probe: Callable[[], T] | Callable[[], Awaitable[T]],
    what: str,
    timeout: float,
    *,
    until: Callable[[T], object] = bool,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
    context: Callable[[], object] | None = None,
    blocking: bool = False,
) -> T:
    """:func:`wait_until` for async tests: ``probe`` may return an awaitable (a coroutine
    function), and with ``blocking=True`` it runs in a thread (``asyncio.to_thread``)."""
    wait = _Tracker(what, timeout, context)
    while True:
        try:
            if blocking:
                result: object = await asyncio.to_thread(probe)
            else:
                result = probe()
            if inspect.isawaitable(result):
                result = await result
            value = cast(T, result)
        except ignoring as exc:
            wait.last = exc
        else:
            if until(value):
                return value
            wait.last = value
        if wait.remaining() <= 0:
            raise wait.failure()
        await asyncio.sleep(max(0.0, min(interval, wait.remaining())))
