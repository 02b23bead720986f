"""Calls into the admin API's servicer from inside meshd, as a gRPC client's would be.

The console reads and writes only through :class:`~xds_server.admin.service.AdminServicer`
(the same tokens, roles, namespaces, validation and messages as ``meshctl``): each call
gets a :class:`LocalContext` carrying the session's bearer token as its metadata, and a
status the servicer aborts with comes back as :class:`CallError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message

__all__ = ["CallError", "LocalContext", "Watching", "call"]


class CallError(Exception):
    """A call ended with a status other than OK: its code and the admin API's message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class LocalContext:
    """The part of ``grpc.aio.ServicerContext`` the admin servicer uses."""

    def __init__(self, token: str | None) -> None:
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.metadata_sent = asyncio.Event()
        """Set when the servicer sends initial metadata (``Watch``: once subscribed)."""

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._metadata

    def peer(self) -> str:
        return "console"

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise CallError(code, details)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.metadata_sent.set()

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


async def call(servicer: Any, method: str, request: Message, token: str | None) -> Any:
    """``servicer.<method>(request)`` with ``token``; CallError for a status not OK."""
    context = LocalContext(token)
    response = await getattr(servicer, method)(request, context)
    if context.code not in (None, grpc.StatusCode.OK):
        raise CallError(context.code, context.details)
    return response


class Watching:
    """The admin ``Watch`` stream of one caller, read from inside meshd."""

    def __init__(self, servicer: Any, request: Message, token: str | None) -> None:
        self._context = LocalContext(token)
        self._stream: AsyncIterator[Any] = servicer.Watch(request, self._context)
        self._next: asyncio.Future[Any] | None = None

    async def subscribed(self, timeout: float) -> CallError | None:
        """Wait until the stream is subscribed to the event bus (it sends its initial
        metadata then); the CallError it ended with instead, if it did."""
        self._next = asyncio.ensure_future(anext(self._stream))
        sent = asyncio.ensure_future(self._context.metadata_sent.wait())
        try:
            await asyncio.wait({self._next, sent}, timeout=timeout, return_when=FIRST_COMPLETED)
        finally:
            sent.cancel()
        if self._next.done() and isinstance(self._next.exception(), CallError):
            return self._next.exception()  # type: ignore[return-value]
        return None

    async def next(self, timeout: float) -> Any | None:
        """The next event; None when none came within ``timeout`` seconds. CallError or
        StopAsyncIteration when the stream ended."""
        if self._next is None:
            self._next = asyncio.ensure_future(anext(self._stream))
        done, _ = await asyncio.wait({self._next}, timeout=timeout)
        if not done:
            return None
        future, self._next = self._next, None
        return future.result()

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            with contextlib.suppress(BaseException):
                await self._next
            self._next = None
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
