"""grpc.aio servicer for ADS, state of the world and Delta: thin loops over
:class:`SotwStream` and :class:`DeltaStream`.

Responses are written as pre-joined bytes (the method is registered with an
identity serializer), so every stream shares the resources' one serialization.
Each stream has a reader, which handles requests as they arrive (an ACK wakes
nothing else), and a writer, which writes the queued responses in the order they
were computed and turns cache changes into pushes: a slow client only delays itself.
Bytes that are no request end their stream with INVALID_ARGUMENT and one log line.

Only the stream plumbing is here: metrics, the log and event bus, convergence and heap
trimming are :mod:`~xds_server.server.observers` the composition root subscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from xds_server.cache import ConfigWatcher
from xds_server.errors import ProtocolError
from xds_server.log_limit import clip
from xds_server.metrics import check_node_cluster
from xds_server.server.connections import (
    Connection,
    StreamRegistry,
    XdsResponse,
    XdsStream,
)
from xds_server.server.delta_stream import DeltaResponse, DeltaStream
from xds_server.server.observers import StreamHooks, StreamObserver
from xds_server.server.request_key import (
    DELTA_NAMES_TAG,
    SOTW_NAMES_TAG,
    light_request,
    may_list_over,
    subscription_key,
)
from xds_server.server.stream import Response, SotwStream
from xds_server.stream_auth import (
    StreamAuthenticator,
    StreamPeer,
    StreamRejected,
    authenticate_stream,
)
from xds_server.stream_limits import QUICK_REQUESTS, LimitExceeded, StreamGuard

__all__ = ["ADS_SERVICE", "AdsServicer", "Connection", "StreamRegistry", "admin_address"]

log = logging.getLogger("meshd.ads")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


class AdsServicer:
    """Serves ``StreamAggregatedResources`` and ``DeltaAggregatedResources`` from the
    cache (through its :class:`~xds_server.cache.ConfigWatcher` contract)."""

    def __init__(
        self,
        cache: ConfigWatcher,
        streams: StreamRegistry,
        observers: Iterable[StreamObserver] = (),
        clock: Callable[[], float] = time.time,
        auth: StreamAuthenticator | None = None,
        guard: StreamGuard | None = None,
    ) -> None:
        self.cache = cache
        self.streams = streams
        self.clock = clock
        self.auth = auth
        """Who may open a stream and for which node (``--xds-auth``); None: everyone."""
        self.guard = guard or StreamGuard()
        """Per-client limits (streams per address, names, request rate, queued responses),
        shared with HDS and LRS."""
        self.hooks = StreamHooks(observers)
        """What the observers hear of every stream (metrics, events, convergence, ...)."""

    def handler(self) -> grpc.GenericRpcHandler:
        # Subscriptions over the names limit are refused from the bytes, before a parse.
        cap = self.guard.limits.max_names
        sotw = grpc.stream_stream_rpc_method_handler(
            self.stream_aggregated_resources,
            request_deserializer=functools.partial(_sotw_request, max_names=cap),
            response_serializer=bytes,
        )
        delta = grpc.stream_stream_rpc_method_handler(
            self.delta_aggregated_resources,
            request_deserializer=functools.partial(_delta_request, max_names=cap),
            response_serializer=bytes,
        )
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {"StreamAggregatedResources": sotw, "DeltaAggregatedResources": delta},
        )

    async def stream_aggregated_resources(
        self,
        request_iterator: AsyncIterator[
            KeyedRequest | MalformedRequest | OversizedRequest | UncountedRequest
        ],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> None:
        """ADS state of the world."""
        await self._serve(SotwStream(self.cache, self.clock), request_iterator, context)

    async def delta_aggregated_resources(
        self,
        request_iterator: AsyncIterator[
            discovery_pb2.DeltaDiscoveryRequest
            | MalformedRequest
            | OversizedRequest
            | UncountedRequest
        ],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> None:
        """ADS incremental (Delta)."""
        await self._serve(DeltaStream(self.cache, self.clock), request_iterator, context)

    async def _serve(
        self,
        stream: XdsStream,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> None:
        guard = self.guard
        where = context.peer()
        try:
            host = guard.open(where, "ADS")
        except LimitExceeded as exc:
            await context.abort(exc.code, exc.message)
        try:
            await self._serve_counted(stream, request_iterator, context, guard, where)
        finally:
            guard.close(host)

    async def _serve_counted(
        self,
        stream: XdsStream,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
        guard: StreamGuard,
        where: str,
    ) -> None:
        hooks = self.hooks
        auth = self.auth
        # Before anything is watched or read: a stream without a valid token costs nothing
        # but this check.
        peer = await authenticate_stream(auth, context)
        watcher = self.cache.watch()
        # Lists and a flag, not deques and an Event: thousands of streams each hold these,
        # and they hold a few items at most.
        inbox: list[Any] = []  # requests that came before the first snapshot
        outbox: list[tuple[XdsResponse, bool]] = []  # (response, from change)
        closed = False  # the reader has ended
        failure: list[Exception] = []
        live = False
        conn: Connection | None = None
        admin: str | None = None
        bucket = guard.bucket()
        writer = asyncio.current_task()
        writing = False  # the writer is in a write (which a client that never reads blocks)
        blocked = False  # ... and was cut out of it to end the stream

        def handle(raw: Any) -> None:
            """One request, handled where it is read: an ACK (most requests) costs no
            wake-up of the writer; responses it calls for are queued for the writer."""
            nonlocal admin, conn
            if isinstance(raw, MalformedRequest):
                raise raw
            if isinstance(raw, OversizedRequest):
                guard.check_names(where, raw.type_url, raw.names)  # (raises)
            if isinstance(raw, KeyedRequest):
                assert isinstance(stream, SotwStream)  # (only SotW requests are keyed)
                req, key = raw.for_stream(stream)
            else:
                req, key = raw, None
            if peer is not None:
                _claim(auth, peer, req)
            if req.HasField("node"):  # (a label value: bounded, or the stream is refused)
                check_node_cluster(req.node)
            if admin is None and req.HasField("node"):
                admin = admin_address(req.node, context.peer())
            _check_names(guard, where, stream, req)
            if key is not None:
                assert isinstance(stream, SotwStream)
                out: list[Response] | list[DeltaResponse] = stream.on_request(req, key)
            else:
                out = stream.on_request(req)
            for hook in hooks.request:
                hook(stream, stream.last_outcome)
            # From here on, only changes to what it asked for wake this stream
            # (no await in between: no change can fall through the gap).
            if stream.interest_stale:
                stream.interest_stale = False
                self.cache.set_interest(watcher, stream.interest(), stream.node_cluster)
            if conn is None and stream.node_id:
                conn = self.streams.add(context.peer(), stream.protocol, stream)
                conn.admin_address = admin
                if req.HasField("node"):  # (the request that named the node)
                    conn.node_metadata = req.node.metadata.SerializeToString()
                for connected in hooks.connected:
                    connected(conn)
            if out:
                outbox.extend((resp, False) for resp in out)
                guard.check_queued(where, len(outbox))
                watcher.event.set()
            elif stream.settled and not (outbox or watcher.pending or watcher.scopes_changed):
                # An ACK that completes a push: in sync with everything so far.
                for synced in hooks.synced:
                    synced(watcher, self.cache.generation)

        async def read() -> None:
            nonlocal closed
            try:
                async for req in request_iterator:
                    await guard.pace(bucket, where)
                    if isinstance(req, UncountedRequest):
                        req = await guard.turns.run(req.parse, req.data)
                    if not live:
                        inbox.append(req)
                        watcher.event.set()
                        continue
                    try:
                        if bucket.deep(QUICK_REQUESTS):
                            await guard.in_turn(handle, req)
                        else:
                            handle(req)
                    except Exception as exc:  # ends the RPC with it, raised by the writer
                        # Without its traceback: that holds handle()'s frame, and so the
                        # request (a hostile one may be megabytes) for as long as gRPC
                        # keeps the RPC's final error, which it does in a reference cycle.
                        failure.append(exc.with_traceback(None))
                        req = None
                        if writing and writer is not None:
                            # Blocked on a client that does not read: end it now, not
                            # when (if ever) the write completes.
                            writer.cancel()
                        return
                    # Hold nothing of it while waiting for the next one: a SotW ACK repeats
                    # every name, times thousands of streams.
                    del req
            finally:
                closed = True
                watcher.event.set()

        if peer is not None:
            peer.on_end(watcher.event.set)  # revoked, or replaced: the writer ends the RPC
        reader = asyncio.create_task(read())
        ending: tuple[grpc.StatusCode, str, bool] | None = None  # (code, message, behind unread)
        try:
            await self.cache.wait_ready()
            # Changes before the first snapshot (the snapshot itself) are not changes to this
            # stream: it has been sent nothing, and its first requests are answered from the
            # current cache. Pushing them would resend a reconnecting proxy what it holds.
            watcher.take()
            for opened in hooks.opened:
                opened(watcher, self.cache.generation)
            while inbox:  # (no local holds a request: see the note on ending the RPC)
                handle(inbox.pop(0))
            live = True
            watcher.event.set()
            while True:
                await watcher.event.wait()
                pending, scopes_changed = watcher.take()
                generation = self.cache.generation  # every change up to it is in ``pending``
                if peer is not None:
                    peer.check()
                if failure:
                    raise failure[0]
                if pending or scopes_changed:
                    outbox.extend((r, True) for r in stream.on_change(pending, scopes_changed))
                    if stream.interest_stale:  # (a new scope may alias other route variants)
                        stream.interest_stale = False
                        self.cache.set_interest(watcher, stream.interest(), stream.node_cluster)
                while outbox:
                    if failure:  # (found by the reader while the last write was blocked)
                        outbox.clear()
                        raise failure[0]
                    resp, from_change = outbox.pop(0)
                    writing = True
                    try:
                        await context.write(resp.wire(self.cache))
                    except asyncio.CancelledError:
                        if not failure or writer is None:
                            raise
                        writer.uncancel()  # (cancelled by the reader, for this failure)
                        outbox.clear()
                        blocked = True
                        raise failure[0] from None
                    finally:
                        writing = False
                    for pushed in hooks.pushed:
                        pushed(stream, resp, from_change)
                if stream.settled and not watcher.pending and not watcher.scopes_changed:
                    for synced in hooks.synced:
                        synced(watcher, generation)
                if closed:
                    if failure:
                        raise failure[0]
                    return
        # The RPC is ended only after this block, and without raising where it can be (see
        # below): an error raised inside an ``except`` would carry the caught one as its
        # context, with its traceback and the frames (and requests) it holds.
        except MalformedRequest as exc:
            # One bounded line: the request's size and first bytes, never all of them.
            log.warning(
                "ending stream from peer=%s node=%.64s: %s (%d bytes, starting %s)",
                context.peer(),
                stream.node_id or "-",
                exc,
                exc.size,
                exc.head,
            )
            ending = (grpc.StatusCode.INVALID_ARGUMENT, str(exc), False)
        except StreamRejected as exc:
            log.warning(
                "ending stream from peer=%s node=%.64s: %s", context.peer(), stream.node_id, exc
            )
            ending = (exc.code, exc.message, False)
        except LimitExceeded as exc:  # (counted and logged where it was found)
            ending = (exc.code, exc.message, blocked or exc.limit == "queued_responses")
        finally:
            inbox.clear()
            outbox.clear()
            failure.clear()
            reader.cancel()
            if peer is not None and auth is not None:
                auth.release(peer)
            self.cache.unwatch(watcher)
            if conn is not None:
                self.streams.remove(conn)
            for closed_hook in hooks.closed:
                closed_hook(watcher, stream, conn)
        if ending is None:
            return
        code, message, behind_unread = ending
        if behind_unread:
            # Sending the status waits behind the unread response of a client that does
            # not read: give up on telling it after a moment, the stream's state goes anyway.
            # (Only then: a status send cut short is never sent again, and a client that
            # reads would wait for its stream's end until its channel closes.)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(context.abort(code, message), _ABORT_WAIT_S)
            return
        # The status without raising: gRPC keeps the error ``abort`` raises in a reference
        # cycle with the RPC (its traceback holds this frame, which holds the context), and
        # with it the call's buffers (the request, which may be megabytes), until the
        # collector's next full pass.
        context.set_code(code)
        context.set_details(message)


def _check_names(guard: StreamGuard, where: str, stream: XdsStream, req: Any) -> None:
    """Refuse a subscription over the limit before it is stored: a SotW request names its
    whole subscription (none when it was read lightly: it repeats a known one); a Delta
    request adds names to it, or lists those it holds on a new stream."""
    if isinstance(stream, SotwStream):
        if req.resource_names:
            guard.check_names(where, req.type_url, len(req.resource_names))
        return
    added = len(req.resource_names_subscribe)
    held = len(req.initial_resource_versions)
    if not added and not held:
        return
    ts = stream.types.get(req.type_url)
    before = len(ts.subscribed) if ts is not None else 0
    guard.check_names(where, req.type_url, max(before + added, held))


def _claim(auth: StreamAuthenticator | None, peer: StreamPeer, req: Any) -> None:
    """Bind an authenticated stream to the node its request names (every request that
    names one: a later request may name another node). The first must name it."""
    assert auth is not None
    if req.HasField("node") and req.node.id:
        auth.claim(peer, "ads", req.node.id, req.node.cluster)
    elif peer.claimed is None:
        raise StreamRejected(
            grpc.StatusCode.INVALID_ARGUMENT, "the first request must name its node (node.id)"
        )


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A SotW request with the key of the subscription it repeats (see request_key).

    ``data`` is set when ``msg`` was read lightly (type, version and nonce only): it is
    parsed whole unless the stream already holds the subscription ``key`` names.
    """

    msg: discovery_pb2.DiscoveryRequest
    key: bytes | None
    data: bytes | None = None

    def for_stream(self, stream: SotwStream) -> tuple[discovery_pb2.DiscoveryRequest, bytes | None]:
        """The request and key ``stream`` is to handle: as read, or parsed whole when it
        was read lightly but does not repeat the subscription the stream holds."""
        if self.data is None or stream.knows_key(self.msg.type_url, self.key):
            return self.msg, self.key
        msg = _parse(discovery_pb2.DiscoveryRequest, self.data)
        if isinstance(msg, MalformedRequest):
            raise msg
        return msg, subscription_key(self.data, msg)


class MalformedRequest(ProtocolError):
    """Request bytes that do not parse as the method's request message.

    The deserializers return it (raising there would leave grpc to end the stream with OK);
    the stream ends with INVALID_ARGUMENT and its message. It keeps only the size and first
    bytes of the request, for the log line.
    """

    def __init__(self, message_type: str, data: bytes, error: BaseException) -> None:
        reason = " ".join(str(error).split())  # one line, whatever the parser said
        if reason.startswith("Error parsing message"):  # (protobuf names the type first)
            reason = reason.partition("': ")[2] or reason
        reason = reason[:100] or type(error).__name__
        super().__init__(f"malformed {message_type}: {reason}")
        self.size = len(data)
        self.head = data[:_HEAD_BYTES].hex()


_ABORT_WAIT_S = 1.0
"""How long a stream ended for a limit waits to send its status (see LimitExceeded)."""

_HEAD_BYTES = 16
"""How much of a malformed request its log line shows."""

_M = TypeVar("_M", discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest)


def _parse(cls: type[_M], data: bytes) -> _M | MalformedRequest:
    try:
        return cls.FromString(data)
    except (DecodeError, ValueError, RecursionError) as exc:  # (deep nesting: RecursionError)
        return MalformedRequest(cls.DESCRIPTOR.name, data, exc)


@dataclass(frozen=True, slots=True)
class OversizedRequest:
    """A request over the names limit, as its deserializer found it: it lists ``names``
    names of ``type_url``. The message itself is not kept (the stream is refused for it, as
    for a parsed one): hundreds of thousands of names cost megabytes parsed, and gRPC
    queues what deserializers return until the stream reads it."""

    names: int
    type_url: str


@dataclass(frozen=True, slots=True)
class UncountedRequest:
    """Request bytes that may list more names than the limit allows (each name starts with
    its field's tag byte, and more such bytes were found). Only a parse counts them exactly,
    and a few megabytes of names take the loop tens of milliseconds to parse: the stream's
    reader does it in its turn (:class:`~xds_server.stream_limits.Turns`), not the
    deserializer, which gRPC calls as each message comes."""

    data: bytes
    parse: Callable[[bytes], Any]


def _sotw_request(
    data: bytes, max_names: int = 1 << 62
) -> KeyedRequest | MalformedRequest | OversizedRequest | UncountedRequest:
    if may_list_over(data, SOTW_NAMES_TAG, max_names):
        return UncountedRequest(data, functools.partial(_sotw_parsed, max_names=max_names))
    light = light_request(data)
    if light is not None:
        return KeyedRequest(light[0], light[1], data)
    return _sotw_parsed(data, max_names)


def _sotw_parsed(data: bytes, max_names: int) -> KeyedRequest | MalformedRequest | OversizedRequest:
    msg = _parse(discovery_pb2.DiscoveryRequest, data)
    if isinstance(msg, MalformedRequest):
        return msg
    if len(msg.resource_names) > max_names:
        return OversizedRequest(len(msg.resource_names), clip(msg.type_url, 200))
    return KeyedRequest(msg, subscription_key(data, msg))


def _delta_request(
    data: bytes, max_names: int = 1 << 62
) -> discovery_pb2.DeltaDiscoveryRequest | MalformedRequest | OversizedRequest | UncountedRequest:
    if may_list_over(data, DELTA_NAMES_TAG, max_names):
        return UncountedRequest(data, functools.partial(_delta_parsed, max_names=max_names))
    return _parse(discovery_pb2.DeltaDiscoveryRequest, data)


def _delta_parsed(
    data: bytes, max_names: int
) -> discovery_pb2.DeltaDiscoveryRequest | MalformedRequest | OversizedRequest:
    msg = _parse(discovery_pb2.DeltaDiscoveryRequest, data)
    if not isinstance(msg, MalformedRequest) and len(msg.resource_names_subscribe) > max_names:
        return OversizedRequest(len(msg.resource_names_subscribe), clip(msg.type_url, 200))
    return msg


def admin_address(node: Any, peer: str) -> str | None:
    """``host:port`` of a proxy's admin listener, from the node metadata the generated
    bootstrap sets (``admin_port``, optional ``admin_host``), for Prometheus discovery.

    An unspecified or wildcard host means "where the stream comes from": the peer's IP.
    None when the node does not say (a bootstrap of ours with a kernel-picked admin port).
    """
    fields = node.metadata.fields
    port_value = fields.get("admin_port")
    if port_value is None or not port_value.HasField("number_value"):
        return None
    port = int(port_value.number_value)
    if not 0 < port < 65536:
        return None
    host_value = fields.get("admin_host")
    host = host_value.string_value if host_value is not None else ""
    if host in ("", "0.0.0.0", "::"):
        host = _peer_host(peer)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_host(peer: str) -> str:
    """The IP of a gRPC peer string (``ipv4:127.0.0.1:5555``, ``ipv6:[::1]:5555``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or "::1"
    if kind == "ipv4":
        return rest.rpartition(":")[0] or "127.0.0.1"
    return "127.0.0.1"
