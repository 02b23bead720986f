"""Calls into the admin API's servicer from inside meshd, as a gRPC client's would be.

The console reads and writes only through :class:`~xds_server.admin.service.AdminServicer`
(the same tokens, roles, namespaces, validation and messages as ``meshctl``): each call
gets a :class:`LocalContext` carrying the session's bearer token as its metadata, and a
status the servicer aborts with comes back as :class:`CallError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message

__all__ = ["CallError", "LocalContext", "call", "stream"]


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

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._metadata

    def peer(self) -> str:
        return "console"

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise CallError(code, details)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        return None

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


async def stream(
    servicer: Any, method: str, request: Message, token: str | None
) -> AsyncIterator[Any]:
    """The messages of the server-streaming ``servicer.<method>(request)`` with ``token``;
    CallError when it ends with a status."""
    context = LocalContext(token)
    async for message in getattr(servicer, method)(request, context):
        yield message
