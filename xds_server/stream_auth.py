"""Who is at the other end of an xDS stream: the seam the ADS, HDS and LRS servicers call.

With ``meshd --xds-auth required`` every stream carries a join token (gRPC metadata
``authorization: Bearer <token>``). A servicer asks its :class:`StreamAuthenticator` who
the caller is when the stream opens (:meth:`~StreamAuthenticator.authenticate`), claims
the node the stream names (:meth:`~StreamAuthenticator.claim`: the node's cluster must be
the token's identity, and the node id must not be held by another identity) and releases
it when the stream ends. The authenticator may end a live stream (its token revoked, or a
newer stream of the same identity took its node id): it calls :meth:`StreamPeer.end`, which
wakes the servicer, and the servicer ends the RPC with the status it was given.

Servicers given no authenticator (``--xds-auth off``) serve everyone, as before.
This module is a leaf: the servicers (``server/``, ``health/``, ``topology/``) and the
token authority that implements it (``tokens/``) all import it, none of them each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc

__all__ = [
    "Metadata",
    "StreamAuthenticator",
    "StreamPeer",
    "StreamRejected",
    "UnknownToken",
    "admit",
    "authenticate_stream",
    "authenticated_stream",
    "bearer_token",
    "until_ended",
]

_T = TypeVar("_T")

Metadata = Sequence[tuple[str, str | bytes]]
"""A call's invocation metadata, as grpc.aio gives it."""


class StreamRejected(Exception):
    """A stream refused or ended, with the gRPC status to end it with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnknownToken(StreamRejected):
    """Refused for a token the authenticator does not know (yet): see
    :meth:`StreamAuthenticator.look_up`."""


class StreamPeer:
    """One authenticated stream: its identity (short form) and token, and whether it was
    ended from outside (``ended``: the status to end it with)."""

    __slots__ = ("_wakers", "claimed", "ended", "identity", "token_id")

    def __init__(self, identity: str, token_id: str) -> None:
        self.identity = identity
        """The identity its token was issued for (``ns/name`` or ``gateway:<cluster>``)."""
        self.token_id = token_id
        self.ended: StreamRejected | None = None
        self.claimed: tuple[str, str, str] | None = None
        """(kind, node id, node cluster) once the stream named its node."""
        self._wakers: list[Callable[[], None]] = []

    def on_end(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when the stream is ended from outside (at once if it already is)."""
        self._wakers.append(wake)
        if self.ended is not None:
            wake()

    def end(self, code: grpc.StatusCode, message: str) -> None:
        """End the stream: its servicer wakes and ends the RPC with ``code``."""
        if self.ended is None:
            self.ended = StreamRejected(code, message)
            for wake in self._wakers:
                wake()

    def check(self) -> None:
        """Raise the status the stream was ended with, if it was."""
        if self.ended is not None:
            raise self.ended


class StreamAuthenticator(Protocol):
    """What the xDS servicers ask about the peer of each stream."""

    def authenticate(self, metadata: Metadata | None) -> StreamPeer:
        """The peer of a new stream; StreamRejected (UNAUTHENTICATED) when its token is
        missing, unknown (UnknownToken), expired or revoked."""
        ...

    async def look_up(self, metadata: Metadata | None) -> bool:
        """After an UnknownToken: whether the token is in force after all (issued a moment
        ago, not heard of here yet). True: authenticate again."""
        ...

    def claim(self, peer: StreamPeer, kind: str, node_id: str, node_cluster: str) -> None:
        """``peer``'s stream of ``kind`` (``ads``, ``hds``, ``lrs``) names this node.

        StreamRejected (PERMISSION_DENIED) when the node's cluster is not the token's
        identity, or another identity holds the node id. A stream of the same kind and node
        id held before by the same identity is ended: the newer one replaces it."""
        ...

    def release(self, peer: StreamPeer) -> None:
        """``peer``'s stream ended: its node id is free again if nothing else holds it."""
        ...


def bearer_token(metadata: Metadata | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header (None: there is none)."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


async def until_ended(peer: StreamPeer, items: AsyncIterator[_T]) -> AsyncIterator[_T]:
    """``items`` until ``peer`` is ended from outside; then StreamRejected, without waiting
    for the next item (a stream that reports seldom, such as LRS, still ends at once)."""
    ended = asyncio.Event()
    peer.on_end(ended.set)
    source = aiter(items)
    stop = asyncio.ensure_future(ended.wait())
    try:
        while True:
            item = asyncio.ensure_future(anext(source, _DONE))
            await asyncio.wait({item, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                item.cancel()
                peer.check()
            value = item.result()
            if value is _DONE:
                return
            yield value  # type: ignore[misc]
    finally:
        stop.cancel()


_DONE = object()


async def admit(auth: StreamAuthenticator, metadata: Metadata | None) -> StreamPeer:
    """The peer of a new stream: :meth:`~StreamAuthenticator.authenticate`, and once more
    if its token was unknown but turned out to be in force (StreamRejected otherwise)."""
    try:
        return auth.authenticate(metadata)
    except UnknownToken:
        if not await auth.look_up(metadata):
            raise
    return auth.authenticate(metadata)


async def authenticate_stream(auth: StreamAuthenticator | None, context: Any) -> StreamPeer | None:
    """The peer of a new stream as ``auth`` authenticates it (None without ``auth``); a
    stream without a valid token is ended (``context.abort``) with the status it was
    refused with."""
    if auth is None:
        return None
    try:
        return await admit(auth, context.invocation_metadata())
    except StreamRejected as exc:
        await context.abort(exc.code, exc.message)
    return None


@contextlib.asynccontextmanager
async def authenticated_stream(
    auth: StreamAuthenticator | None, context: Any, log: logging.Logger, kind: str
) -> AsyncIterator[StreamPeer | None]:
    """A stream RPC's peer as ``auth`` authenticates it (None without ``auth``), for the
    time the stream is served.

    A stream without a valid token is refused before anything is served; a StreamRejected
    from the body ends the RPC with its status, logged on ``log`` as a ``kind`` stream
    (``HDS``, ``LRS``); the peer is released however the stream ends.
    """
    peer = await authenticate_stream(auth, context)
    try:
        yield peer
    except StreamRejected as exc:
        log.warning("ending %s stream from %s: %s", kind, context.peer(), exc)
        await context.abort(exc.code, exc.message)
    finally:
        if peer is not None and auth is not None:
            auth.release(peer)
