"""What one xDS client may cost meshd: streams per peer address, names per subscription,
requests per second, responses queued for a client that does not read.

The ADS, HDS and LRS servicers share one :class:`StreamGuard`. Each limit that refuses ends
the stream with RESOURCE_EXHAUSTED and a message naming the limit and its flag, counts the
refusal (``on_limit``, a Prometheus counter in meshd) and logs it, a few lines per window at
most. The request rate does not refuse: a stream over it is paced (its next request is read
only when the bucket allows), which holds the client back through HTTP/2 flow control and
never drops a request, so the xDS state of a legitimate burst stays intact.

A request that may list more names than the limit is counted exactly only by parsing it,
which costs the event loop tens of milliseconds for a few megabytes; such parses take turns
(:class:`Turns`), so that a flood of them delays a configuration change by one parse
at most, not by all of them. So do the requests of a burst past its first few
(:data:`QUICK_REQUESTS`): a client that queues up a hundred requests at once (each may call
for a response) has them handled one piece at a time, with the loop's other work between.

The defaults are far beyond what a large mesh asks of one stream or one address; the
``--xds-max-*`` flags change them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from xds_server.log_limit import LogLimiter, clip

__all__ = [
    "DEFAULT_SHARED_WIRE_MB",
    "QUICK_REQUESTS",
    "LimitExceeded",
    "StreamGuard",
    "StreamLimits",
    "TokenBucket",
    "Turns",
    "peer_host",
]

log = logging.getLogger("meshd.limits")
_T = TypeVar("_T")
_A = TypeVar("_A")

QUICK_REQUESTS = 16
"""Requests of one stream's burst handled at once, as they come: more than a proxy sends at
a time (one per type it asks for, an ACK per response). Past them, the burst's requests are
handled in :class:`Turns`, so that a client queueing up its whole burst takes at most half
of the loop while it lasts, and a change being pushed meanwhile waits behind one of them."""

DEFAULT_SHARED_WIRE_MB = 64
"""Encoded responses the cache keeps to share between streams, in MB (``--xds-shared-cache-mb``)."""


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Per-client limits of the xDS port (see ``meshd --help`` for their flags)."""

    max_names: int = 100_000
    """Resource names one stream may subscribe to, per type (``--xds-max-names``)."""
    max_streams_per_peer: int = 10_000
    """Open ADS, HDS and LRS streams from one IP address (``--xds-max-streams-per-peer``)."""
    request_rate: float = 100.0
    """Requests per second one stream may send, sustained (``--xds-request-rate``)."""
    request_burst: int = 100
    """... and at once, above that rate (``--xds-request-burst``). A proxy sends a few
    requests at a time (one per type it asks for, then an ACK per response); each request
    let through at once is work done at once, ahead of every other stream's."""
    max_queued_responses: int = 1_000
    """Responses waiting to be written to a stream whose client does not read them
    (``--xds-max-queued-responses``)."""


class LimitExceeded(Exception):
    """A stream went over a limit: it is ended with :attr:`code` and this message."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.message = message


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; one per request."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self._tokens = self.burst
        self._at = now

    def take(self, now: float) -> float:
        """Take a token; the seconds to wait first (0.0: none, go on)."""
        self._refill(now)
        self._tokens -= 1.0
        if self._tokens >= 0.0:
            return 0.0
        return -self._tokens / self.rate

    def take_if_any(self, now: float) -> bool:
        """Take a token if one is saved (True); else take nothing (a refusal, not a wait)."""
        self._refill(now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def deep(self, quick: int) -> bool:
        """True once the requests taken at once (above the rate) are more than ``quick``."""
        return self._tokens < self.burst - quick


def peer_host(peer: str) -> str:
    """The IP of a gRPC peer string (``ipv4:127.0.0.1:5555``, ``ipv6:[::1]:5555``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or "::1"
    if kind == "ipv4":
        return rest.rpartition(":")[0] or "127.0.0.1"
    return peer  # (unix sockets and the like: the whole string)


class Turns:
    """Work a client may ask for in bulk, one piece at a time, each followed by as long a rest.

    Two kinds go through here: parsing a request that may be over the names limit, and
    handling the requests of a burst past its first :data:`QUICK_REQUESTS`. The loop's other
    work (a change being pushed, other streams' requests) runs during the rest, so such
    work can take at most half of the loop's time, and a change waits behind one piece of it
    at most. Up to ``queue`` parses wait their turn (each holds its request's bytes, which
    may be megabytes); beyond that a parse runs at once, so what waits stays bounded in
    memory. A burst's request always waits its turn: it is parsed already, and a stream has
    one waiting at most, so burst turns never take a parse's place in the queue.
    """

    def __init__(self, queue: int = 8, clock: Callable[[], float] = time.perf_counter) -> None:
        self.queue = queue
        self.clock = clock
        self.waiting = 0
        """Parses waiting for their turn now (``bounded`` pieces)."""
        self._lock = asyncio.Lock()  # (bound to the loop that first waits on it)

    async def run(self, work: Callable[[_A], _T], arg: _A, *, bounded: bool = True) -> _T:
        """``work(arg)`` in its turn; at once when it is ``bounded`` and the queue is full."""
        if not bounded:
            return await self._in_turn(work, arg)
        if self.waiting >= self.queue:
            return work(arg)
        self.waiting += 1
        try:
            return await self._in_turn(work, arg)
        finally:
            self.waiting -= 1

    async def _in_turn(self, work: Callable[[_A], _T], arg: _A) -> _T:
        async with self._lock:
            started = self.clock()
            result = work(arg)
            await asyncio.sleep(self.clock() - started)
        return result


class StreamGuard:
    """The limits in force, the streams open per peer address, and what a refusal does."""

    def __init__(
        self,
        limits: StreamLimits | None = None,
        on_limit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or StreamLimits()
        self.on_limit = on_limit
        """Called with the limit's name at every refusal or paced request (a counter)."""
        self.clock = clock
        self.log = LogLimiter(log)
        self._per_peer: dict[str, int] = {}
        self.turns = Turns()
        """Where requests that may be over the names limit are counted, and where a burst's
        requests past its first few are handled (see Turns)."""

    # -- streams per peer ---------------------------------------------------------------

    def open(self, peer: str, kind: str) -> str:
        """Count a new ``kind`` stream (ADS, HDS, LRS) from ``peer``; its host, to pass to
        :meth:`close`. LimitExceeded when that host has too many open already."""
        host = peer_host(peer)
        n = self._per_peer.get(host, 0)
        cap = self.limits.max_streams_per_peer
        if n >= cap:
            raise self.refuse(
                "streams_per_peer",
                peer,
                f"{kind} stream refused: {n} xDS streams are open from {clip(host, 64)}, at "
                f"most {cap} (--xds-max-streams-per-peer)",
            )
        self._per_peer[host] = n + 1
        return host

    def close(self, host: str) -> None:
        """A stream :meth:`open` counted has ended."""
        n = self._per_peer.get(host, 0) - 1
        if n > 0:
            self._per_peer[host] = n
        else:
            self._per_peer.pop(host, None)

    def open_streams(self, host: str) -> int:
        """Streams open from ``host`` now."""
        return self._per_peer.get(host, 0)

    @contextlib.asynccontextmanager
    async def stream(self, context: Any, kind: str) -> AsyncIterator[str]:
        """A ``kind`` stream RPC (HDS, LRS) counted against its peer address for as long as
        it is served; ended with RESOURCE_EXHAUSTED when that address has too many. Yields
        the peer, for :meth:`paced`."""
        where: str = context.peer()
        try:
            host = self.open(where, kind)
        except LimitExceeded as exc:
            await context.abort(exc.code, exc.message)
        try:
            yield where
        finally:
            self.close(host)

    async def paced(self, requests: AsyncIterator[_T], where: str) -> AsyncIterator[_T]:
        """``requests``, each read only when the stream's request rate allows."""
        bucket = self.bucket()
        async for request in requests:
            await self.pace(bucket, where)
            yield request

    # -- per stream ---------------------------------------------------------------------

    def bucket(self) -> TokenBucket:
        """A new stream's request budget."""
        return TokenBucket(self.limits.request_rate, self.limits.request_burst, self.clock())

    async def pace(self, bucket: TokenBucket, peer: str) -> None:
        """Wait until ``bucket`` allows one more request from this stream."""
        delay = bucket.take(self.clock())
        if delay > 0.0:
            self._count("request_rate")
            self.log.warning(
                ("request_rate", peer),
                "xDS stream from %s over %g requests/s (--xds-request-rate): paced",
                clip(peer, 64),
                self.limits.request_rate,
            )
            await asyncio.sleep(delay)

    def check_names(self, peer: str, type_url: str, count: int) -> None:
        """LimitExceeded when a subscription of ``count`` names of ``type_url`` is too big."""
        cap = self.limits.max_names
        if count > cap:
            raise self.refuse(
                "names",
                peer,
                f"subscription to {count} names of {clip(type_url, 100)}, at most {cap} per "
                "type and stream (--xds-max-names)",
            )

    def check_queued(self, peer: str, queued: int) -> None:
        """LimitExceeded when more responses wait for a client than it may leave unread."""
        cap = self.limits.max_queued_responses
        if queued > cap:
            raise self.refuse(
                "queued_responses",
                peer,
                f"{queued} responses wait to be written to a client that does not read them, "
                f"at most {cap} (--xds-max-queued-responses)",
            )

    def refuse(self, limit: str, peer: str, message: str) -> LimitExceeded:
        """Count and log a refusal; the exception to end the stream with."""
        self._count(limit)
        self.log.warning((limit, peer), "ending xDS stream from %s: %s", clip(peer, 64), message)
        return LimitExceeded(limit, message)

    async def in_turn(self, handle: Callable[[_A], None], request: _A) -> None:
        """``handle(request)`` in its turn (:class:`Turns`), counted as
        ``limit="request_burst"``: a request of a burst past its first
        :data:`QUICK_REQUESTS`. Not logged: nothing is refused or delayed beyond the turn."""
        self._count("request_burst")
        await self.turns.run(handle, request, bounded=False)

    def _count(self, limit: str) -> None:
        if self.on_limit is not None:
            self.on_limit(limit)
