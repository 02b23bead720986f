"""The Registry protocol on etcd v3: paged list at one revision, then one watch, relist on trouble.

It speaks etcd's gRPC API through aetcd's generated stubs on a ``grpc.aio`` channel it owns,
so it controls channel options (receive limit, reconnect back-off, keepalive) and reads the
raw watch stream (``created``, ``canceled``, ``compact_revision``) itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from adapters.etcd.errors import is_unavailable, map_rpc_error
from xds_server.errors import (
    MeshError,
    RegistryCompacted,
    RegistryConflict,
    RegistryUnavailable,
    TxnTooLarge,
    ValidationError,
)
from xds_server.ingest.registry import (
    Changes,
    ConditionalWrites,
    Entry,
    Event,
    RegistryUpdate,
    Reset,
    check_txn,
)

__all__ = ["EtcdRegistry"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_MiB = 1024 * 1024
_CHANNEL_OPTIONS = (
    # A page is bounded by key count, not bytes, and a watch response may batch many events:
    # never let gRPC's default 4 MiB receive limit turn a big registry into an outage.
    ("grpc.max_receive_message_length", 256 * _MiB),
    # gRPC's default reconnect back-off starts at 1 s and grows to 120 s; etcd restarts far
    # faster than that, so stay close behind it.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Detect a dead peer on a silent watch. etcd answers pings more often than every 5 s with
    # GOAWAY, and refuses pings without an active call, hence no permit_without_calls.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
)

_PAGE_BYTES = 4 * _MiB  # a page above this halves the next page's key count
_DECODE_SLICE = 1_000  # entries decoded between two yields to the event loop while listing

# What the watch loop retries: etcd unreachable, restarted, compacted, or a stream that ended.
_TRANSIENT = (grpc.aio.AioRpcError, grpc.aio.UsageError, MeshError, OSError, TimeoutError)


@dataclass(slots=True)
class _Conn:
    endpoint: str
    channel: Any  # grpc.aio.Channel
    kv: Any
    lease: Any
    watch: Any


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def _key(key: str) -> bytes:
    # surrogateescape round-trips keys that are not UTF-8 (written by other tools).
    return key.encode("utf-8", "surrogateescape")


def _str(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _parse_endpoints(endpoint: str) -> list[str]:
    found = []
    for part in endpoint.split(","):
        part = part.strip().removeprefix("http://")
        if part:
            found.append(part.rstrip("/"))
    if not found:
        raise ValueError(f"no etcd endpoint in {endpoint!r}")
    return found


class EtcdRegistry(ConditionalWrites):
    """Registry backend on etcd. See :class:`xds_server.ingest.registry.Registry` for the contract.

    ``endpoint`` is ``host:port`` or a comma-separated list (the first reachable one is used,
    and the list is tried again after a failure). Observable state for metrics:

    - ``connected``: updates() holds a current view (listed, the watch has not failed since);
    - ``errors_total``, ``last_error``: failed etcd calls, watch breaks included;
    - ``relists_total``: Resets after the first; ``last_list_pages``: range reads of the last.

    Beyond the Registry protocol: ``put_if``/``delete_if``/``txn`` (compare mod_revision,
    atomic), ``lease_grant``/``lease_keepalive``/``lease_revoke``.
    """

    def __init__(
        self,
        endpoint: str = "127.0.0.1:2379",
        prefix: str = "/mesh/",
        *,
        page_size: int = 10_000,
        timeout: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
    ) -> None:
        """Configure; nothing connects until the first call.

        ``page_size`` is the key count per range read while listing: etcd counts the whole
        rest of the range on every page, so small pages make a big relist quadratic (a page of
        registry keys stays far below the receive limit). ``timeout`` bounds each
        call in seconds, including the wait for an etcd that is (re)starting. Failures of
        :meth:`updates` are retried after ``backoff_initial`` seconds, doubling up to
        ``backoff_max``.
        """
        if not prefix.endswith("/"):
            raise ValueError(f"prefix must end with '/': {prefix!r}")
        self.prefix = prefix
        self.endpoints = _parse_endpoints(endpoint)
        self.page_size = max(1, page_size)
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connected = False
        self.errors_total = 0
        self.last_error: str | None = None
        self.relists_total = 0  # Resets after the first one
        self.last_list_pages = 0  # range reads of the latest list
        self._key_prefix = prefix.encode()
        self._status_prefix = self._key_prefix + b"status/"
        # Listing skips meshd's own status keys server-side: [prefix, status/) + [status0, end).
        self._ranges = (
            (self._key_prefix, self._status_prefix),
            (self._key_prefix + b"status0", _prefix_end(self._key_prefix)),
        )
        # wait_for_ready: a call made while the channel reconnects (etcd restarting) waits for
        # it, up to the timeout, instead of failing at once.
        self._call_options: dict[str, Any] = {"timeout": timeout, "wait_for_ready": True}
        self._conn: _Conn | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str | None:
        """The endpoint currently connected to, if any."""
        return self._conn.endpoint if self._conn else None

    def reachable(self) -> bool:
        """A connection to etcd is up now (not: etcd answered a call). Calls made while
        it is down wait for it up to ``timeout``; meshd uses this to say it is waiting."""
        conn = self._conn
        if conn is None:
            return False
        state = conn.channel.get_state(try_to_connect=False)
        return bool(state == grpc.ChannelConnectivity.READY)

    # -- reading -----------------------------------------------------------------------

    async def updates(self) -> AsyncGenerator[RegistryUpdate, None]:
        """Reset at one revision, then one Changes per watch response; relist after trouble."""
        loop = asyncio.get_running_loop()
        delay = self.backoff_initial
        failures = 0
        listed = 0  # becomes 1 after the first Reset: later ones are relists
        while not self._closed:
            started = loop.time()
            conn: _Conn | None = None
            try:
                conn = await self._connection()
                revision = 0
                async with contextlib.aclosing(self._list_parts(conn)) as parts:
                    async for part in parts:
                        if not part.more:  # the listing is complete
                            if failures:
                                log.info(
                                    "etcd %s: listing again after %d failure(s)",
                                    conn.endpoint,
                                    failures,
                                )
                            failures = 0
                            self.connected = True
                            self.relists_total += listed
                            listed = 1
                        revision = part.revision
                        yield part
                async with contextlib.aclosing(self._watch(conn, revision + 1)) as watch:
                    async for changes in watch:
                        yield changes
            except (*_TRANSIENT, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelled_by_caller():
                    raise
                if self._closed:
                    return
                failures += 1
                # Warn once per outage (and now and then while it lasts), not every retry.
                warn = failures == 1 or failures % 60 == 0
                self.connected = False
                self._record_error(exc, "watch failed, relisting", warn=warn)
                if conn is not None and len(self.endpoints) > 1 and _is_connection_error(exc):
                    self._drop(conn)
            if loop.time() - started > self.backoff_max:
                delay = self.backoff_initial  # the last watch lived long: a new outage
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def get(self, key: str) -> Entry | None:
        """Read one key (any key, also outside the prefix), or ``None``."""
        request = rpc.RangeRequest(key=_key(key))
        resp = await self._call(lambda c: c.kv.Range(request, **self._call_options))
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return Entry(
            key, bytes(kv.value), int(kv.mod_revision), int(kv.lease), int(kv.create_revision)
        )

    async def list_prefix(self, prefix: str) -> Reset:
        """Every key starting with ``prefix`` (any prefix), paged, at one revision, key order."""
        start = _key(prefix)
        reset, _ = await self._call(lambda c: self._range_pages(c, ((start, _prefix_end(start)),)))
        return reset

    # -- writing -----------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key`` and return the new revision (RegistryConflict: unknown lease)."""
        request = rpc.PutRequest(key=_key(key), value=value, lease=lease)
        resp = await self._call(lambda c: c.kv.Put(request, **self._call_options))
        return int(resp.header.revision)

    async def delete(self, key: str) -> int:
        """Delete ``key`` (no error when missing) and return the store's revision."""
        request = rpc.DeleteRangeRequest(key=_key(key))
        resp = await self._call(lambda c: c.kv.DeleteRange(request, **self._call_options))
        return int(resp.header.revision)

    async def txn(
        self,
        *,
        puts: Mapping[str, bytes] | None = None,
        deletes: Collection[str] = (),
        expect: Mapping[str, int] | None = None,
        lease: int = 0,
    ) -> int:
        """Apply ``puts`` and ``deletes`` atomically at one revision, all or nothing.

        ``expect`` maps keys to the mod_revision they must still have (0: must not exist);
        any mismatch raises RegistryConflict naming the key and writes nothing. ``lease``
        applies to every put. Returns the revision after the transaction. etcd bounds the
        operations per transaction (``--max-txn-ops``: 128 by default, 1024 in
        EmbeddedEtcd); beyond it this raises TxnTooLarge naming the limit. With no puts or
        deletes nothing is written: the comparisons (and the limit) are checked alone.
        """
        puts = puts or {}
        expect = expect or {}
        check_txn(puts, deletes)
        # etcd counts the largest of the compare, success and failure lists.
        operations = max(len(expect), len(puts) + len(deletes))
        mod = rpc.Compare.CompareTarget.Value("MOD")
        equal = rpc.Compare.CompareResult.Value("EQUAL")
        compare = [
            rpc.Compare(key=_key(k), target=mod, result=equal, mod_revision=r)
            for k, r in expect.items()
        ]
        success = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=_key(k), value=v, lease=lease))
            for k, v in puts.items()
        ] + [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=_key(k))) for k in deletes
        ]
        # On failure, read the expected keys back so the error can say which one moved.
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=_key(k))) for k in expect]
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        try:
            resp = await self._call(lambda c: c.kv.Txn(request, **self._call_options))
        except ValidationError as exc:
            if _TOO_MANY_OPS not in exc.reason:
                raise
            raise TxnTooLarge(operations, await self._max_txn_ops(operations)) from exc
        if not resp.succeeded:
            actual = dict.fromkeys(expect, 0)
            for op in resp.responses:
                for kv in op.response_range.kvs:
                    actual[_str(kv.key)] = int(kv.mod_revision)
            raise RegistryConflict(_conflict_message(expect, actual))
        return int(resp.header.revision)

    async def _max_txn_ops(self, refused: int) -> int:
        """The most operations this etcd takes in one transaction, fewer than ``refused``.

        etcd has no call that tells, so a few read-only transactions of comparisons find it
        (a binary search: about 7 round trips for the default of 128). Learned only after a
        refusal, and never cached: etcd may be restarted with another limit.
        """
        accepted, too_many = 0, refused
        while too_many - accepted > 1:
            middle = (accepted + too_many) // 2
            if await self._txn_accepted(middle):
                accepted = middle
            else:
                too_many = middle
        return accepted

    async def _txn_accepted(self, operations: int) -> bool:
        """Does etcd take a (read-only) transaction of ``operations`` comparisons?"""
        version = rpc.Compare.CompareTarget.Value("VERSION")
        equal = rpc.Compare.CompareResult.Value("EQUAL")
        compare = rpc.Compare(key=self._key_prefix, target=version, result=equal, version=0)
        request = rpc.TxnRequest(compare=[compare] * operations)
        try:
            await self._call(lambda c: c.kv.Txn(request, **self._call_options))
        except ValidationError as exc:
            if _TOO_MANY_OPS not in exc.reason:
                raise
            return False
        return True

    # -- leases ------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> int:
        """Create a lease of ``ttl`` seconds and return its id (``lease_id``: this one,
        0: etcd's next)."""
        request = rpc.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        resp = await self._call(lambda c: c.lease.LeaseGrant(request, **self._call_options))
        if resp.error:
            raise RegistryUnavailable(f"etcd lease grant: {resp.error}")
        return int(resp.ID)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its TTL. RegistryConflict if it already expired."""

        async def once(conn: _Conn) -> int:
            call = conn.lease.LeaseKeepAlive(**self._call_options)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                resp = await call.read()
            finally:
                call.cancel()
            if resp is grpc.aio.EOF:
                raise RegistryUnavailable("etcd closed the lease keepalive stream")
            return int(resp.TTL)

        ttl = await self._call(once)
        if ttl <= 0:
            raise RegistryConflict(f"lease {lease_id:x} expired or does not exist")
        return ttl

    async def lease_keys(self, lease_id: int) -> list[str] | None:
        """The keys held under a lease (None: no such lease, or it expired)."""
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=True)
        try:
            resp = await self._call(
                lambda c: c.lease.LeaseTimeToLive(request, **self._call_options)
            )
        except RegistryConflict:
            return None
        if resp.TTL <= 0:
            return None
        return [_str(k) for k in resp.keys]

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys at one revision. A missing lease is no error."""
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        # Already expired or revoked: the goal is reached.
        with contextlib.suppress(RegistryConflict):
            await self._call(lambda c: c.lease.LeaseRevoke(request, **self._call_options))

    async def close(self) -> None:
        """Close the connection; :meth:`updates` iterators end. Idempotent."""
        self._closed = True
        self.connected = False
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- internals ---------------------------------------------------------------------

    async def _list_parts(self, conn: _Conn) -> AsyncGenerator[Reset, None]:
        """Everything under the prefix but status keys, as Reset parts of a page each, all
        at the first page's revision, yielded while etcd serves the next page. A page is
        held until the next non-empty one is read, so the last part is known to be the
        last (and a registry of one page, the usual case, is one plain Reset)."""
        started = time.monotonic()
        revision = part = total = pages = 0
        held: tuple[Entry, ...] | None = None
        async with contextlib.aclosing(self._pages(conn, self._ranges)) as read:
            async for revision, entries in read:
                pages += 1
                total += len(entries)
                if held is None:
                    held = entries
                elif entries:
                    yield Reset(revision, held, part, more=True)
                    part += 1
                    held = entries
        self.last_list_pages = pages
        log.info(
            "etcd: listed %d keys at revision %d in %d pages, %.2fs (folding them meanwhile)",
            total,
            revision,
            pages,
            time.monotonic() - started,
        )
        yield Reset(revision, held or (), part)

    async def _range_pages(
        self, conn: _Conn, ranges: Iterable[tuple[bytes, bytes]]
    ) -> tuple[Reset, int]:
        """Read ``[start, end)`` ranges, all at the first page's revision: the entries and
        the number of range reads it took."""
        entries: list[Entry] = []
        revision = pages = 0
        async with contextlib.aclosing(self._pages(conn, ranges)) as read:
            async for at, page in read:
                revision = at
                pages += 1
                entries += page
        return Reset(revision, tuple(entries)), pages

    async def _pages(
        self, conn: _Conn, ranges: Iterable[tuple[bytes, bytes]]
    ) -> AsyncGenerator[tuple[int, tuple[Entry, ...]], None]:
        """(revision, entries) of each page of ``[start, end)`` ranges, all at the first
        page's revision. The next page is asked for as soon as a page arrives, before its
        entries are built: etcd serves one page while this process decodes (and its
        consumer folds) the previous one."""
        revision = 0
        limit = self.page_size
        for start, end in ranges:
            resp, limit = await self._page(conn, start, end, limit, revision)
            while True:
                revision = revision or int(resp.header.revision)
                following = self._following(conn, resp, end, limit, revision)
                try:
                    yield revision, await self._decode(resp.kvs)
                except BaseException:
                    if following is not None:
                        following.cancel()
                    raise
                if following is None:
                    break
                resp, limit = await following

    def _following(
        self, conn: _Conn, resp: rpc.RangeResponse, end: bytes, limit: int, revision: int
    ) -> asyncio.Future[tuple[rpc.RangeResponse, int]] | None:
        """The read of the page after ``resp``, started now; None after the last page."""
        kvs = resp.kvs
        if not resp.more or not kvs:
            return None
        if resp.ByteSize() > _PAGE_BYTES:  # (computed in C, cheaper than summing in Python)
            limit = max(1, limit // 2)  # big values: keep pages near a few MiB
        return asyncio.ensure_future(self._page(conn, kvs[-1].key + b"\0", end, limit, revision))

    @staticmethod
    async def _decode(kvs: Sequence[Any]) -> tuple[Entry, ...]:
        """Entries of one page, in slices with a yield to the event loop between them: the
        next page's read is a task that has to run (put its request on the wire) meanwhile."""
        out: list[Entry] = []
        new = tuple.__new__  # (a named tuple's own __new__ is a Python call: slower)
        for at in range(0, len(kvs), _DECODE_SLICE):
            out.extend(
                new(
                    Entry,
                    (_str(kv.key), kv.value, kv.mod_revision, kv.lease, kv.create_revision),
                )
                for kv in kvs[at : at + _DECODE_SLICE]
            )
            await asyncio.sleep(0)
        return tuple(out)

    async def _page(
        self, conn: _Conn, key: bytes, end: bytes, limit: int, revision: int
    ) -> tuple[rpc.RangeResponse, int]:
        """One range read of up to ``limit`` keys; fewer when etcd finds the page too big."""
        while True:
            request = rpc.RangeRequest(key=key, range_end=end, limit=limit, revision=revision)
            try:
                return await conn.kv.Range(request, **self._call_options), limit
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and limit > 1:
                    limit //= 2  # many big values: fewer keys per page
                    continue
                raise

    async def _watch(self, conn: _Conn, start_revision: int) -> AsyncGenerator[Changes, None]:
        """One Changes per watch response with events; raises when the watch breaks."""
        call = conn.watch.Watch(wait_for_ready=True)
        try:
            create = rpc.WatchCreateRequest(
                key=self._key_prefix,
                range_end=_prefix_end(self._key_prefix),
                start_revision=start_revision,
                progress_notify=True,
            )
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise RegistryUnavailable("etcd ended the watch stream")
                if resp.compact_revision:
                    raise RegistryCompacted(int(resp.compact_revision))
                if resp.canceled:
                    raise RegistryUnavailable(f"etcd canceled the watch: {resp.cancel_reason}")
                if resp.created:
                    self.connected = True
                if not resp.events:
                    continue  # created or progress notification
                events = tuple(
                    Event(
                        "delete" if ev.type else "put",
                        _str(ev.kv.key),
                        ev.kv.value,
                        ev.kv.mod_revision,
                        ev.kv.lease,
                        ev.kv.create_revision,
                    )
                    for ev in resp.events
                    if not ev.kv.key.startswith(self._status_prefix)
                )
                if events:
                    # Not the header revision: etcd may split a catch-up batch and report
                    # the store's current revision on the first part.
                    yield Changes(int(resp.events[-1].kv.mod_revision), events)
        finally:
            call.cancel()

    async def _connection(self) -> _Conn:
        if self._conn is not None:
            return self._conn
        async with self._connect_lock:
            if self._closed:
                raise RegistryUnavailable("registry closed")
            if self._conn is None:
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> _Conn:
        reasons = []
        for endpoint in self.endpoints:
            channel = grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
            if len(self.endpoints) > 1:
                # Pick the first that answers; with one endpoint the first real call tells.
                try:
                    await rpc.MaintenanceStub(channel).Status(
                        rpc.StatusRequest(), timeout=min(self.timeout, 1.0)
                    )
                except grpc.aio.AioRpcError as exc:
                    await channel.close()
                    reasons.append(f"{endpoint}: {exc.code().name}")
                    continue
            kv, lease, watch = rpc.KVStub(channel), rpc.LeaseStub(channel), rpc.WatchStub(channel)
            return _Conn(endpoint, channel, kv, lease, watch)
        raise RegistryUnavailable("no etcd endpoint answers: " + "; ".join(reasons))

    def _drop(self, conn: _Conn) -> None:
        """Forget a failed connection so the next call probes the endpoint list again.

        Only with several endpoints: one channel to one endpoint reconnects by itself.
        Calls still running on the old channel get a second to finish.
        """
        self.connected = False
        if self._conn is conn:
            self._conn = None
        task = asyncio.get_running_loop().create_task(conn.channel.close(grace=1.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _call(self, fn: Callable[[_Conn], Awaitable[_T]]) -> _T:
        """Run one RPC, mapping gRPC failures to MeshError subclasses and counting them."""
        conn = await self._connection()
        try:
            return await fn(conn)
        except grpc.aio.AioRpcError as exc:
            error = map_rpc_error(exc, conn.endpoint)
            if is_unavailable(exc):
                self._record_error(exc, "call failed", warn=False)
                if len(self.endpoints) > 1:
                    self._drop(conn)
            raise error from exc
        except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
            # The channel was closed under the call: by close(), or dropped after a failure
            # seen elsewhere. Not the caller's cancellation, which must propagate.
            if isinstance(exc, asyncio.CancelledError) and _cancelled_by_caller():
                raise
            reason = "registry closed" if self._closed else "etcd connection was reset"
            raise RegistryUnavailable(reason) from exc

    def _record_error(self, exc: BaseException, what: str, *, warn: bool) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            reason = f"{exc.code().name}: {exc.details()}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self.errors_total += 1
        self.last_error = reason
        log.log(logging.WARNING if warn else logging.DEBUG, "etcd %s: %s", what, reason)


def _cancelled_by_caller() -> bool:
    """True when the running task is being cancelled (grpc.aio also raises CancelledError
    out of calls whose channel was closed)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, grpc.aio.AioRpcError):
        return is_unavailable(exc)
    return not isinstance(exc, MeshError) or isinstance(exc, RegistryUnavailable)


_TOO_MANY_OPS = "too many operations in txn request"  # etcd's INVALID_ARGUMENT message


def _conflict_message(expect: Mapping[str, int], actual: Mapping[str, int]) -> str:
    moved = [
        f"{k} is at revision {actual[k]}, not {r}" for k, r in expect.items() if actual[k] != r
    ]
    return "; ".join(moved) or "compare failed"
