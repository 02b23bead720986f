"""The etcd members a registry may use: which one it uses now, how it reaches it (TLS, an
authentication token), and moving to another one when it is lost.

One gRPC channel at a time, to one member. A member is chosen by asking it etcd's
Maintenance Status (which also says whether it knows a leader): with several endpoints the
first that answers and has a leader is used, starting after the one that was lost, so a
dead or partitioned member is left at once. Every call carries etcd's ``hasleader``
metadata (clientv3's ``WithRequireLeader``): a member cut off from the leader refuses calls
and ends its watches ("etcdserver: no leader") instead of stalling, and the caller moves on.
Reads are etcd's default, linearizable ranges: a member answers only once it has caught up
with the leader, so a read after a failover never goes back in time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from aetcd import rpc
from grpc.aio import AioRpcError

from adapters.etcd.errors import (
    EtcdAccessError,
    is_unavailable,
    map_rpc_error,
    member_lost,
    never_reached,
    rpc_reason,
    token_rejected,
)
from xds_server.errors import RegistryUnavailable

__all__ = ["Conn", "EtcdTls", "EtcdUser", "Members", "parse_endpoints"]

log = logging.getLogger("adapters.etcd.registry")

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

_REQUIRE_LEADER = ("hasleader", "true")  # etcd's rpctypes.MetadataRequireLeaderKey
_RETRY_INTERVAL = 0.05  # seconds between two rounds over the members while none serves


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """Client TLS to etcd, as etcdctl's ``--cacert``, ``--cert``, ``--key`` (PEM bytes).

    No ``ca``: the system's trusted roots. ``cert`` and ``key`` (together): the client
    certificate etcd's ``--client-cert-auth`` asks for."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials of these files."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


@dataclass(frozen=True, slots=True)
class EtcdUser:
    """etcd authentication: etcdctl's ``--user`` and its password (never shown)."""

    name: str
    password: str = field(repr=False)


@dataclass(slots=True)
class Conn:
    """A channel to one member, its stubs, and what every call on it carries."""

    endpoint: str
    channel: Any  # grpc.aio.Channel
    kv: Any
    lease: Any
    watch: Any
    options: dict[str, Any]
    """Keyword arguments of every unary call: timeout, wait_for_ready, metadata."""
    cluster_id: int = 0
    """etcd's id of the member's cluster (from its Status)."""
    left: str | None = None
    """Why this member was left (see :meth:`Members.drop`), once it was."""
    token: str | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What a call or watch sends: the leader requirement and the auth token."""
        md: tuple[tuple[str, str], ...] = self.options["metadata"]
        return md


def parse_endpoints(endpoint: str) -> tuple[list[str], bool]:
    """``host:port`` entries of a comma-separated list (``http://`` and ``https://``
    accepted, as etcdctl takes them), and whether any said ``https``."""
    found = []
    https = False
    for part in endpoint.split(","):
        part = part.strip()
        if part.startswith("https://"):
            https = True
        part = part.removeprefix("http://").removeprefix("https://")
        if part:
            found.append(part.rstrip("/"))
    if not found:
        raise ValueError(f"no etcd endpoint in {endpoint!r}")
    return found, https


class Members:
    """The endpoints, the connection in use, and failover between members.

    ``timeout`` bounds each call. With one endpoint a call waits for it (a restarting
    etcd) up to the timeout; with several, a call to a member that is gone fails at once
    and is tried on the next member when that is safe (see :meth:`call`).
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        timeout: float,
        tls: EtcdTls | None = None,
        user: EtcdUser | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.multi = len(endpoints) > 1
        self.timeout = timeout
        self.tls = tls
        self.user = user
        self.refused: EtcdAccessError | None = None
        """etcd refused this client (TLS, user, permission) the last time it was asked."""
        self.failovers_total = 0
        self.errors_total = 0
        self.last_error: str | None = None
        self.closed = False
        self._conn: Conn | None = None
        self._next = 0  # index of the endpoint tried first by the next connect
        self._lost: tuple[str, str] | None = None  # (endpoint, why) of the member left
        self._connecting: asyncio.Task[Conn] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def current(self) -> Conn | None:
        """The connection in use, if any."""
        return self._conn

    async def connection(self) -> Conn:
        """The connection in use, or a new one to the first member that serves, waited
        for up to the timeout (callers meanwhile share that one attempt)."""
        if self._conn is not None:
            return self._conn
        if self.closed:
            raise RegistryUnavailable("registry closed")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect_patiently())
            # (its failure is every waiter's; retrieved here too in case none is left)
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    def drop(self, conn: Conn, why: str) -> None:
        """Leave a member that failed: the next call connects to another one (the first
        after it that serves). Calls still running on it get a second to finish. With one
        endpoint the channel stays: it reconnects by itself."""
        if not self.multi or self._conn is not conn:
            return
        self._conn = None
        conn.left = why
        self._next = (self.endpoints.index(conn.endpoint) + 1) % len(self.endpoints)
        self._lost = (conn.endpoint, why)
        task = asyncio.get_running_loop().create_task(conn.channel.close(grace=1.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def call(self, fn: Callable[[Conn], Awaitable[_T]], *, idempotent: bool = True) -> _T:
        """Run one RPC, mapping gRPC failures to MeshError subclasses.

        An expired auth token is renewed and the call made again. With several endpoints, a
        call that failed for want of a member (gone, or without a leader) leaves it and is
        made again on the next member, each member once: any call when the failure says the
        request never reached etcd, an ``idempotent`` one also when it might have.
        """
        tried: list[str] = []
        while True:
            conn = await self.connection()
            try:
                try:
                    return await fn(conn)
                except grpc.aio.AioRpcError as exc:
                    if not (self.user and token_rejected(exc)):
                        raise
                    await self.authenticate(conn)  # the token expired: a new one, once
                    return await fn(conn)
            except grpc.aio.AioRpcError as exc:
                error = map_rpc_error(exc, conn.endpoint)
                if isinstance(error, EtcdAccessError):
                    self.refused = error
                if not is_unavailable(exc):
                    raise error from exc
                self.record(exc, "call failed", warn=False)
                tried.append(f"{conn.endpoint}: {rpc_reason(exc)}")
                lost = member_lost(exc)
                if lost:
                    self.drop(conn, rpc_reason(exc))
                again = idempotent or never_reached(exc)
                if not (self.multi and again and len(tried) < len(self.endpoints)):
                    if len(tried) > 1:
                        raise RegistryUnavailable(
                            "no etcd member served: " + "; ".join(tried)
                        ) from exc
                    raise error from exc
                if not lost:  # an election under way: give it a moment
                    await asyncio.sleep(_RETRY_INTERVAL * 4)
            except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
                # The channel was closed under the call: by close(), or dropped after a
                # failure seen elsewhere. Not the caller's cancellation, which must propagate.
                if isinstance(exc, asyncio.CancelledError) and cancelled_by_caller():
                    raise
                if self.closed:
                    raise RegistryUnavailable("registry closed") from exc
                why = f"etcd {conn.endpoint} was left ({conn.left or 'connection reset'})"
                tried.append(why)
                if self.multi and idempotent and len(tried) < len(self.endpoints):
                    continue
                raise RegistryUnavailable(why) from exc

    def record(self, exc: BaseException, what: str, *, warn: bool) -> None:
        """Count a failed call or watch and keep its reason (``last_error``)."""
        if isinstance(exc, grpc.aio.AioRpcError):
            reason = f"{exc.code().name}: {exc.details()}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self.errors_total += 1
        self.last_error = reason
        log.log(logging.WARNING if warn else logging.DEBUG, "etcd %s: %s", what, reason)

    async def close(self) -> None:
        """Close the channel; later calls fail with RegistryUnavailable. Idempotent."""
        self.closed = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- connecting --------------------------------------------------------------------

    def _channel(self, endpoint: str) -> Any:
        if self.tls is not None:
            return grpc.aio.secure_channel(endpoint, self.tls.credentials(), _CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)

    async def _connect_patiently(self) -> Conn:
        """:meth:`_connect` again every few milliseconds until a member serves or the
        timeout passed (etcd starting, an election under way); a refusal ends it at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                conn = await self._connect()
            except EtcdAccessError as exc:
                self.record(exc, "refused this client", warn=False)
                raise
            except RegistryUnavailable as exc:
                if self.closed:
                    raise
                if loop.time() + _RETRY_INTERVAL >= deadline:
                    error = RegistryUnavailable(
                        f"DEADLINE_EXCEEDED: no etcd member served within {self.timeout:g}s ({exc})"
                    )
                    self.record(error, "connect failed", warn=False)
                    raise error from exc
                await asyncio.sleep(_RETRY_INTERVAL)
                continue
            if self.closed:
                await conn.channel.close()
                raise RegistryUnavailable("registry closed")
            self._conn = conn
            return conn

    async def _connect(self) -> Conn:
        """A connection to the first member, from ``_next`` on, that answers etcd's
        Status, knows a leader and (with a user) authenticates it; RegistryUnavailable
        naming each member's reason when none does, EtcdAccessError when one refuses this
        client (its TLS, its user or password) and none serves."""
        order = self.endpoints[self._next :] + self.endpoints[: self._next]
        reasons: list[str] = []
        refused: EtcdAccessError | None = None
        for endpoint in order:
            channel = self._channel(endpoint)
            try:
                status = await rpc.MaintenanceStub(channel).Status(
                    rpc.StatusRequest(), timeout=min(self.timeout, 1.0)
                )
                if not status.leader:
                    raise RegistryUnavailable("no leader")
                conn = self._conn_on(endpoint, channel, int(status.header.cluster_id))
                if self.user is not None:
                    await self.authenticate(conn)
            except (RegistryUnavailable, grpc.aio.AioRpcError) as exc:
                await channel.close()
                error = map_rpc_error(exc, endpoint) if isinstance(exc, AioRpcError) else exc
                if isinstance(error, EtcdAccessError):
                    refused = error
                reason = rpc_reason(exc) if isinstance(exc, AioRpcError) else str(exc)
                reasons.append(f"{endpoint}: {reason}")
                continue
            self.refused = None
            self._connected(conn)
            return conn
        if refused is not None:
            self.refused = refused
            raise refused
        raise RegistryUnavailable("; ".join(reasons))

    def _conn_on(self, endpoint: str, channel: Any, cluster_id: int) -> Conn:
        options: dict[str, Any] = {
            "timeout": self.timeout,
            # One endpoint: a call made while it restarts waits for it (up to the timeout).
            # Several: a call to a member that is gone fails at once, and goes to another.
            "wait_for_ready": not self.multi,
            "metadata": (_REQUIRE_LEADER,),
        }
        return Conn(
            endpoint,
            channel,
            rpc.KVStub(channel),
            rpc.LeaseStub(channel),
            rpc.WatchStub(channel),
            options,
            cluster_id,
        )

    async def authenticate(self, conn: Conn) -> None:
        """A token for ``self.user`` from this member, carried by every later call on it.

        etcd without authentication enabled answers so; then no token is sent (as
        clientv3 does)."""
        assert self.user is not None
        request = rpc.AuthenticateRequest(name=self.user.name, password=self.user.password)
        try:
            response = await rpc.AuthStub(conn.channel).Authenticate(
                request, timeout=self.timeout, metadata=(_REQUIRE_LEADER,)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "not enabled" in (
                exc.details() or ""
            ):
                conn.token = None
                conn.options["metadata"] = (_REQUIRE_LEADER,)
                return
            raise
        conn.token = str(response.token)
        conn.options["metadata"] = (_REQUIRE_LEADER, ("token", conn.token))

    def _connected(self, conn: Conn) -> None:
        """Say which member is used now: a failover once (which member, why), as a warning."""
        lost, self._lost = self._lost, None
        if lost is None:
            if self.multi:
                log.info("etcd: using member %s (of %d)", conn.endpoint, len(self.endpoints))
            return
        endpoint, why = lost
        if endpoint != conn.endpoint:
            self.failovers_total += 1
            log.warning("etcd: failover from %s (%s) to %s", endpoint, why, conn.endpoint)
        else:
            log.info("etcd: reconnected to %s after %s", conn.endpoint, why)


def _retrieve(task: asyncio.Task[Conn]) -> None:
    if not task.cancelled():
        task.exception()


def cancelled_by_caller() -> bool:
    """True when the running task is being cancelled (grpc.aio also raises CancelledError
    out of calls whose channel was closed)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
