"""Bounded logging of what clients send: clipped strings and rate-limited repeated lines.

A proxy chooses its NACK text, its node id and the type URLs it asks for; logged as they
are, one client can write megabytes per line and thousands of lines a second. Every such
string goes through :func:`clip`, and every line a client can repeat at will goes through a
:class:`LogLimiter`, which lets a few lines per key through in each window (per stream and
in all) and then says once how many it held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["CLIP_CHARS", "LogLimiter", "clip"]

CLIP_CHARS = 200
"""How much of a client-supplied string a log line shows."""


def clip(text: object, limit: int = CLIP_CHARS, *, one_line: bool = True) -> str:
    """``text`` cut to ``limit`` characters plus ``... (N bytes)`` when longer, and on one
    line (line breaks escaped) unless ``one_line`` is False."""
    s = text if isinstance(text, str) else str(text)
    if len(s) > limit:
        size = len(s.encode("utf-8", "surrogatepass"))
        s = f"{s[:limit]}... ({size} bytes)"
    if one_line and ("\n" in s or "\r" in s):
        s = s.replace("\r", "\\r").replace("\n", "\\n")
    return s


@dataclass(slots=True)
class _Window:
    start: float
    lines: int = 0
    held: int = 0


class LogLimiter:
    """Lets through at most ``per_key`` lines per key and ``overall`` lines in all per
    ``window`` seconds; the lines held back are counted, and the next line let through for
    that key (or a line of its own, at the end of a window) says how many.

    Keys are what a line repeats by: its template and, for per-stream limits, the stream.
    Only keys seen in the current window are kept, so the table is bounded by the lines
    allowed, not by the clients.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        per_key: int = 5,
        overall: int = 50,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_suppressed: Callable[[int], None] | None = None,
    ) -> None:
        self.log = logger
        self.per_key = per_key
        self.overall = overall
        self.window = window
        self.clock = clock
        self.on_suppressed = on_suppressed
        """Called with the number of lines just held back (a metric, say)."""
        self.suppressed_total = 0
        self._all = _Window(clock())
        self._keys: dict[Hashable, _Window] = {}

    def log_line(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` (or everything) is over its
        budget in this window; True when it was logged. Clip client strings in ``args``
        first (:func:`clip`)."""
        now = self.clock()
        self._roll(now)
        win = self._keys.get(key)
        if win is None:
            if len(self._keys) >= self.overall:  # (only keys that logged in this window)
                self._hold(None)
                return False
            win = self._keys[key] = _Window(now)
        if win.lines >= self.per_key or self._all.lines >= self.overall:
            self._hold(win)
            return False
        win.lines += 1
        self._all.lines += 1
        if win.held:
            msg += " (%d similar lines held back)"
            args = (*args, win.held)
            win.held = 0
        self.log.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        """:meth:`log_line` at WARNING."""
        return self.log_line(logging.WARNING, key, msg, *args)

    def _hold(self, win: _Window | None) -> None:
        if win is not None:
            win.held += 1
        self._all.held += 1
        self.suppressed_total += 1
        if self.on_suppressed is not None:
            self.on_suppressed(1)

    def _roll(self, now: float) -> None:
        if now - self._all.start < self.window:
            return
        if self._all.held:
            # Said once per window, whatever the number of keys that were held back.
            self.log.warning(
                "held back %d repeated log lines in the last %.0f s (client-driven lines are "
                "limited to %d per stream and %d in all per window)",
                self._all.held,
                now - self._all.start,
                self.per_key,
                self.overall,
            )
        self._all = _Window(now)
        self._keys.clear()
