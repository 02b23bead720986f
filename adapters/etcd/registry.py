"""The Registry protocol on etcd v3: paged list at one revision, then one watch, resumed
where it broke off (on another member of a cluster if need be); relisted only when etcd
compacted the revisions it would need.

It speaks etcd's gRPC API through aetcd's generated stubs on a ``grpc.aio`` channel it owns
(:mod:`adapters.etcd.members`: which member, TLS, authentication, failover), so it controls
channel options (receive limit, reconnect back-off, keepalive) and reads the raw watch stream
(``created``, ``canceled``, ``compact_revision``) itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncGenerator,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from adapters.etcd.errors import EtcdAccessError, map_rpc_error, member_lost, rpc_reason
from adapters.etcd.members import (
    Conn,
    EtcdTls,
    EtcdUser,
    Members,
    cancelled_by_caller,
    parse_endpoints,
)
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
_PAGE_BYTES = 4 * _MiB  # a page above this halves the next page's key count
_DECODE_SLICE = 1_000  # entries decoded between two yields to the event loop while listing

# What the watch loop retries: etcd unreachable, restarted, compacted, or a stream that ended.
_TRANSIENT = (grpc.aio.AioRpcError, grpc.aio.UsageError, MeshError, OSError, TimeoutError)


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


class EtcdRegistry(ConditionalWrites):
    """Registry backend on etcd. See :class:`xds_server.ingest.registry.Registry` for the contract.

    ``endpoint`` is ``host:port`` or a comma-separated list of the members of one etcd
    cluster (``http://`` or ``https://`` accepted): every member is used, one at a time,
    and a member that is lost or cut off from the leader is left for the next one (see
    :class:`~adapters.etcd.members.Members`). ``tls`` and ``user`` are etcdctl's
    ``--cacert/--cert/--key`` and ``--user``. Observable state for metrics:

    - ``connected``: updates() holds a current view (listed, the watch has not failed since);
    - ``errors_total``, ``last_error``: failed etcd calls, watch breaks included;
    - ``relists_total``: Resets after the first; ``last_list_pages``: range reads of the last;
    - ``failovers_total``: moves to another member after one was lost;
    - ``refused``: etcd refused this client (TLS, user, permission) when last asked, or None.

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
        tls: EtcdTls | None = None,
        user: EtcdUser | None = None,
    ) -> None:
        """Configure; nothing connects until the first call.

        ``page_size`` is the key count per range read while listing: etcd counts the whole
        rest of the range on every page, so small pages make a big relist quadratic (a page of
        registry keys stays far below the receive limit). ``timeout`` bounds each
        call in seconds, including the wait for an etcd that is (re)starting. Failures of
        :meth:`updates` are retried after ``backoff_initial`` seconds, doubling up to
        ``backoff_max``. An ``https://`` endpoint without ``tls`` trusts the system's roots.
        """
        if not prefix.endswith("/"):
            raise ValueError(f"prefix must end with '/': {prefix!r}")
        self.prefix = prefix
        endpoints, https = parse_endpoints(endpoint)
        self.page_size = max(1, page_size)
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connected = False
        self.relists_total = 0  # Resets after the first one
        self.last_list_pages = 0  # range reads of the latest list
        self._key_prefix = prefix.encode()
        self._status_prefix = self._key_prefix + b"status/"
        # Listing skips meshd's own status keys server-side: [prefix, status/) + [status0, end).
        self._ranges = (
            (self._key_prefix, self._status_prefix),
            (self._key_prefix + b"status0", _prefix_end(self._key_prefix)),
        )
        if https and tls is None:
            tls = EtcdTls()
        self._members = Members(endpoints, timeout=timeout, tls=tls, user=user)
        self._cluster_id = 0  # etcd's cluster id, once seen: another one means another store
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        """Every member's ``host:port``, as given."""
        return self._members.endpoints

    @property
    def endpoint(self) -> str | None:
        """The endpoint currently connected to, if any."""
        conn = self._members.current
        return conn.endpoint if conn else None

    @property
    def errors_total(self) -> int:
        """Failed etcd calls, watch breaks included."""
        return self._members.errors_total

    @property
    def last_error(self) -> str | None:
        """The reason of the last failed call or watch."""
        return self._members.last_error

    @property
    def failovers_total(self) -> int:
        """Moves to another member after one was lost."""
        return self._members.failovers_total

    @property
    def refused(self) -> EtcdAccessError | None:
        """etcd refused this client (TLS, user or password, permission) when last asked."""
        return self._members.refused

    def reachable(self) -> bool:
        """A connection to etcd is up now (not: etcd answered a call). Calls made while
        it is down wait for it up to ``timeout``; meshd uses this to say it is waiting."""
        conn = self._members.current
        if conn is None:
            return False
        state = conn.channel.get_state(try_to_connect=False)
        return bool(state == grpc.ChannelConnectivity.READY)

    # -- reading -----------------------------------------------------------------------

    async def updates(self) -> AsyncGenerator[RegistryUpdate, None]:
        """Reset at one revision, then one Changes per watch response.

        After trouble (a member lost, etcd restarted, a watch ended) the watch goes on from
        the revision after the last one seen, on whichever member serves, and the consumer
        sees nothing but the changes it missed; a Reset follows only when etcd compacted
        those revisions away, or its store went back (restored, or another cluster).
        """
        loop = asyncio.get_running_loop()
        delay = self.backoff_initial
        failures = 0
        listed = 0  # becomes 1 after the first Reset: later ones are relists
        resume = [0]  # the revision the watch goes on from; 0: list first
        reauthenticate = False
        while not self._closed:
            started = loop.time()
            conn: Conn | None = None
            try:
                conn = await self._members.connection()
                if reauthenticate and self._members.user is not None:
                    await self._members.authenticate(conn)
                reauthenticate = False
                if resume[0] and not await self._can_resume(conn, resume[0]):
                    resume[0] = 0
                resumed = bool(resume[0])
                if not resumed:
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
                                # (not before: a listing broken off is started again)
                                resume[0] = part.revision + 1
                                self._cluster_id = conn.cluster_id
                            yield part

                def created(endpoint: str = conn.endpoint, resumed: bool = resumed) -> None:
                    nonlocal failures
                    self._members.refused = None
                    if failures and resumed:
                        log.info(
                            "etcd %s: watching again from revision %d after %d failure(s), "
                            "nothing relisted",
                            endpoint,
                            resume[0],
                            failures,
                        )
                    failures = 0

                async with contextlib.aclosing(self._watch(conn, resume, created)) as watch:
                    async for changes in watch:
                        yield changes
            except (*_TRANSIENT, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and cancelled_by_caller():
                    raise
                if self._closed:
                    return
                failures += 1
                if not isinstance(exc, MeshError | grpc.aio.AioRpcError) and conn and conn.left:
                    # (the channel was closed under the watch: a call on it found it gone)
                    exc = RegistryUnavailable(f"etcd {conn.endpoint} was left ({conn.left})")
                if isinstance(exc, RegistryCompacted):
                    resume[0] = 0  # the revisions the watch needs are gone: list again
                if isinstance(exc, grpc.aio.AioRpcError) and conn is not None:
                    mapped = map_rpc_error(exc, conn.endpoint)
                    if isinstance(mapped, EtcdAccessError):
                        exc = mapped
                if isinstance(exc, EtcdAccessError):
                    self._members.refused = exc
                    # (a watch refused for an expired token says "permission denied" too)
                    reauthenticate = True
                # Warn once per outage (and now and then while it lasts), not every retry.
                warn = failures == 1 or failures % 60 == 0
                self.connected = False
                if not listed:
                    what = "listing failed"
                else:
                    what = "watch failed, relisting" if not resume[0] else "watch failed"
                self._members.record(exc, what, warn=warn)
                if conn is not None and _is_connection_error(exc):
                    self._members.drop(conn, _short(exc))
            if loop.time() - started > self.backoff_max:
                delay = self.backoff_initial  # the last watch lived long: a new outage
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def get(self, key: str) -> Entry | None:
        """Read one key (any key, also outside the prefix), or ``None``."""
        request = rpc.RangeRequest(key=_key(key))
        resp = await self._members.call(lambda c: c.kv.Range(request, **c.options))
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return Entry(
            key, bytes(kv.value), int(kv.mod_revision), int(kv.lease), int(kv.create_revision)
        )

    async def list_prefix(self, prefix: str) -> Reset:
        """Every key starting with ``prefix`` (any prefix), paged, at one revision, key order."""
        start = _key(prefix)
        reset, _ = await self._members.call(
            lambda c: self._range_pages(c, ((start, _prefix_end(start)),))
        )
        return reset

    # -- writing -----------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key`` and return the new revision (RegistryConflict: unknown lease)."""
        request = rpc.PutRequest(key=_key(key), value=value, lease=lease)
        resp = await self._members.call(lambda c: c.kv.Put(request, **c.options))
        return int(resp.header.revision)

    async def delete(self, key: str) -> int:
        """Delete ``key`` (no error when missing) and return the store's revision."""
        request = rpc.DeleteRangeRequest(key=_key(key))
        resp = await self._members.call(lambda c: c.kv.DeleteRange(request, **c.options))
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
            resp = await self._members.call(
                lambda c: c.kv.Txn(request, **c.options), idempotent=False
            )
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
            await self._members.call(lambda c: c.kv.Txn(request, **c.options))
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
        resp = await self._members.call(
            lambda c: c.lease.LeaseGrant(request, **c.options), idempotent=False
        )
        if resp.error:
            raise RegistryUnavailable(f"etcd lease grant: {resp.error}")
        return int(resp.ID)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its TTL. RegistryConflict if it already expired."""

        async def once(conn: Conn) -> int:
            call = conn.lease.LeaseKeepAlive(**conn.options)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                resp = await call.read()
            finally:
                call.cancel()
            if resp is grpc.aio.EOF:
                raise RegistryUnavailable("etcd closed the lease keepalive stream")
            return int(resp.TTL)

        ttl = await self._members.call(once)
        if ttl <= 0:
            raise RegistryConflict(f"lease {lease_id:x} expired or does not exist")
        return ttl

    async def lease_keys(self, lease_id: int) -> list[str] | None:
        """The keys held under a lease (None: no such lease, or it expired)."""
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=True)
        try:
            resp = await self._members.call(lambda c: c.lease.LeaseTimeToLive(request, **c.options))
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
            await self._members.call(lambda c: c.lease.LeaseRevoke(request, **c.options))

    async def close(self) -> None:
        """Close the connection; :meth:`updates` iterators end. Idempotent."""
        self._closed = True
        self.connected = False
        await self._members.close()

    # -- internals ---------------------------------------------------------------------

    async def _list_parts(self, conn: Conn) -> AsyncGenerator[Reset, None]:
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
        self, conn: Conn, ranges: Iterable[tuple[bytes, bytes]]
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
        self, conn: Conn, ranges: Iterable[tuple[bytes, bytes]]
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
        self, conn: Conn, resp: rpc.RangeResponse, end: bytes, limit: int, revision: int
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
        self, conn: Conn, key: bytes, end: bytes, limit: int, revision: int
    ) -> tuple[rpc.RangeResponse, int]:
        """One range read of up to ``limit`` keys; fewer when etcd finds the page too big."""
        while True:
            request = rpc.RangeRequest(key=key, range_end=end, limit=limit, revision=revision)
            try:
                return await conn.kv.Range(request, **conn.options), limit
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and limit > 1:
                    limit //= 2  # many big values: fewer keys per page
                    continue
                raise

    async def _can_resume(self, conn: Conn, resume: int) -> bool:
        """Can the watch go on from ``resume`` on this member? Not when etcd's store went
        back before it (restored from a backup, a new cluster at the same address): then
        those revisions mean other changes, and only a listing tells what is there.

        A linearizable read: the member answers once it has applied everything the leader
        committed, so a member that merely lags is not taken for one that went back."""
        request = rpc.RangeRequest(key=self._key_prefix, keys_only=True)
        resp = await conn.kv.Range(request, **conn.options)
        at = int(resp.header.revision)
        cluster = int(resp.header.cluster_id)
        known = self._cluster_id
        if at >= resume - 1 and known in (0, cluster):
            return True
        log.warning(
            "etcd %s: the store is at revision %d (cluster %x), behind the revision %d "
            "already seen (cluster %x): listing again",
            conn.endpoint,
            at,
            cluster,
            resume - 1,
            known,
        )
        return False

    async def _watch(
        self, conn: Conn, resume: list[int], created: Callable[[], None]
    ) -> AsyncGenerator[Changes, None]:
        """One Changes per watch response with events, from revision ``resume[0]`` on;
        ``resume[0]`` follows the events received (status keys' too). Raises when the
        watch breaks; ``created()`` is called once etcd has set it up."""
        call = conn.watch.Watch(wait_for_ready=not self._members.multi, metadata=conn.metadata)
        try:
            create = rpc.WatchCreateRequest(
                key=self._key_prefix,
                range_end=_prefix_end(self._key_prefix),
                start_revision=resume[0],
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
                    reason = f"etcd canceled the watch: {resp.cancel_reason}"
                    if "permission denied" in resp.cancel_reason:
                        raise EtcdAccessError(f"etcd {conn.endpoint}: {reason}", "permission")
                    raise RegistryUnavailable(reason)
                if resp.created:
                    self.connected = True
                    created()
                if not resp.events:
                    continue  # created or progress notification
                resume[0] = int(resp.events[-1].kv.mod_revision) + 1
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


def _is_connection_error(exc: BaseException) -> bool:
    """A failure that says the member is no good now (gone, no leader, a broken stream),
    not one of the request (compacted revision, refused credentials) nor etcd's own
    transient answer during an election ("leader changed")."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return member_lost(exc)
    if isinstance(exc, EtcdAccessError):
        return False
    return not isinstance(exc, MeshError) or isinstance(exc, RegistryUnavailable)


def _short(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return rpc_reason(exc)
    return str(exc) or type(exc).__name__


_TOO_MANY_OPS = "too many operations in txn request"  # etcd's INVALID_ARGUMENT message


def _conflict_message(expect: Mapping[str, int], actual: Mapping[str, int]) -> str:
    moved = [
        f"{k} is at revision {actual[k]}, not {r}" for k, r in expect.items() if actual[k] != r
    ]
    return "; ".join(moved) or "compare failed"
