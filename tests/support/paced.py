"""Load from a few threads, each calling at a steady pace, with every answer kept: the load
the rotation tests hold across a certificate change."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType


class PacedCallers:
    """``callers`` threads each calling ``call`` ``rate`` times a second; every result is
    kept, an exception of ``errors`` as its type's name. Use as a context manager: the
    threads start on entry and stop on exit."""

    def __init__(
        self,
        call: Callable[[], int],
        *,
        callers: int,
        rate: float,
        errors: tuple[type[BaseException], ...] = (OSError,),
    ) -> None:
        self.results: list[int | str] = []
        self._call, self._rate, self._errors = call, rate, errors
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(callers)]
        self._started = self._stopped = 0.0

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                self.results.append(self._call())
            except self._errors as exc:
                self.results.append(type(exc).__name__)
            due += 1 / self._rate
            time.sleep(max(0.0, due - time.monotonic()))

    def __enter__(self) -> PacedCallers:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._stopped = time.monotonic()

    @property
    def rate(self) -> float:
        """Results a second, over the time the threads ran."""
        return len(self.results) / (self._stopped - self._started)

    @property
    def failed(self) -> list[int | str]:
        """Every result but a 200."""
        return [r for r in self.results if r != 200]
