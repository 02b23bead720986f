"""Client Status Discovery Service (``envoy.service.status.v3``): proxy status for xDS tools.

The same facts as the admin API's proxy status, in the standard shape: per connected node,
one ``GenericXdsConfig`` per resource it holds, with the version, when it was last pushed,
and the type's state (ACKED / NACKED with Envoy's message / REQUESTED).

Who may see what is the caller's business (the admin API's tokens): each request first
asks ``access`` for a :class:`ProxyFilter`, which ends the call itself when the caller may
not ask at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeAlias

import grpc
import re2
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2, string_pb2, value_pb2
from google.protobuf import struct_pb2, timestamp_pb2

from xds_server.resources.resource import Resource
from xds_server.resources.secrets import dump_any
from xds_server.resources.types import TYPE_ORDER
from xds_server.server.ads import Connection, StreamRegistry

CSDS_SERVICE = "envoy.service.status.v3.ClientStatusDiscoveryService"
_Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_CONFIG_STATUS = {
    "SYNCED": csds_pb2.SYNCED,
    "STALE": csds_pb2.STALE,
    "NACKED": csds_pb2.ERROR,
    "NOT_SENT": csds_pb2.NOT_SENT,
}
_CLIENT_STATUS = {
    "SYNCED": dump_pb2.ACKED,
    "STALE": dump_pb2.REQUESTED,
    "NACKED": dump_pb2.NACKED,
    "NOT_SENT": dump_pb2.REQUESTED,
}


def string_matches(m: string_pb2.StringMatcher, value: str) -> bool:
    """Envoy's StringMatcher semantics for the cases CSDS clients use."""
    which = m.WhichOneof("match_pattern")

    def norm(s: str) -> str:
        return s.lower() if m.ignore_case else s

    subject = norm(value)

    if which == "exact":
        return subject == norm(m.exact)
    if which == "prefix":
        return subject.startswith(norm(m.prefix))
    if which == "suffix":
        return subject.endswith(norm(m.suffix))
    if which == "contains":
        return norm(m.contains) in subject
    if which == "safe_regex":
        try:
            return re2.fullmatch(m.safe_regex.regex, value) is not None
        except re2.error:
            return False
    return True  # no pattern: matches anything


_PRIMITIVE = frozenset({"null_value", "number_value", "string_value", "bool_value"})


def value_matches(m: value_pb2.ValueMatcher, value: struct_pb2.Value | None) -> bool:
    """Envoy's ValueMatcher on one metadata value (None: the path leads nowhere, which
    nothing matches)."""
    if value is None:
        return False
    which: str | None = m.WhichOneof("match_pattern")
    kind: str | None = value.WhichOneof("kind")
    if which == "null_match":
        return kind == "null_value"
    if which == "double_match":
        if kind != "number_value":
            return False
        d = m.double_match
        if d.WhichOneof("match_pattern") == "range":  # [start, end), as Envoy's range
            return bool(d.range.start <= value.number_value < d.range.end)
        return bool(value.number_value == d.exact)
    if which == "string_match":
        return kind == "string_value" and string_matches(m.string_match, value.string_value)
    if which == "bool_match":
        return kind == "bool_value" and value.bool_value == bool(m.bool_match)
    if which == "present_match":  # a primitive value: a struct or list is never "present"
        return bool(m.present_match) and kind in _PRIMITIVE
    if which == "list_match":
        return kind == "list_value" and any(
            value_matches(m.list_match.one_of, v) for v in value.list_value.values
        )
    if which == "or_match":
        return any(value_matches(v, value) for v in m.or_match.value_matchers)
    return False  # no pattern (or one this version does not know): no match


def _lookup(metadata: struct_pb2.Struct, path: Iterable[str]) -> struct_pb2.Value | None:
    """The value at ``path`` (keys of nested structs), None when a step is missing."""
    value: struct_pb2.Value | None = None
    current: struct_pb2.Struct | None = metadata
    for key in path:
        if current is None or key not in current.fields:
            return None
        value = current.fields[key]
        current = value.struct_value if value.WhichOneof("kind") == "struct_value" else None
    return value


def node_matches(matchers: list[node_pb2.NodeMatcher], conn: Connection) -> bool:
    """Does any matcher select the node? Within one, ``node_id`` and every
    ``node_metadatas`` entry must hold (envoy.type.matcher.v3.NodeMatcher)."""
    if not matchers:
        return True
    metadata: struct_pb2.Struct | None = None
    for m in matchers:
        if m.HasField("node_id") and not string_matches(m.node_id, conn.stream.node_id):
            continue
        if m.node_metadatas and metadata is None:
            metadata = struct_pb2.Struct.FromString(conn.node_metadata)
        if all(
            value_matches(sm.value, _lookup(metadata, (seg.key for seg in sm.path)))
            for sm in m.node_metadatas
            if metadata is not None
        ):
            return True
    return False


class ProxyFilter(Protocol):
    """What one caller may see of the connected proxies."""

    def sees(self, conn: Connection) -> bool:
        """Whether the caller sees this proxy at all."""
        ...

    def held(self, conn: Connection, type_url: str) -> Sequence[Resource]:
        """What the caller may see of the resources ``conn`` holds of ``type_url``."""
        ...


class Everything:
    """A :class:`ProxyFilter` that shows every proxy whole."""

    def sees(self, conn: Connection) -> bool:
        return True

    def held(self, conn: Connection, type_url: str) -> Sequence[Resource]:
        return conn.stream.held(type_url)


Access: TypeAlias = Callable[[_Ctx], Awaitable[ProxyFilter]]
"""Who calls and what they may see; aborts the call (e.g. UNAUTHENTICATED) itself."""


def client_config(
    conn: Connection, *, include_contents: bool, shown: ProxyFilter | None = None
) -> csds_pb2.ClientConfig:
    """One node's config status, per resource (those ``shown`` lets the caller see)."""
    held = (shown or Everything()).held
    out = csds_pb2.ClientConfig(
        node=base_pb2.Node(id=conn.stream.node_id, cluster=conn.stream.node_cluster)
    )
    for t in TYPE_ORDER:
        ts = conn.stream.types.get(t)
        if ts is None:
            continue
        # When this stream last sent the type. A client that came back holding the current
        # version was sent nothing on it: no time is known, and the field stays unset.
        pushed: timestamp_pb2.Timestamp | None = None
        if ts.last_push is not None:
            pushed = timestamp_pb2.Timestamp()
            pushed.FromNanoseconds(int(ts.last_push * 1e9))
        for res in held(conn, t):
            cfg = out.generic_xds_configs.add(
                type_url=t,
                name=res.name,
                version_info=res.version,
                config_status=_CONFIG_STATUS[ts.state],
                client_status=_CLIENT_STATUS[ts.state],
            )
            if pushed is not None:
                cfg.last_updated.CopyFrom(pushed)
            if include_contents:
                cfg.xds_config.CopyFrom(dump_any(res))  # (a Secret's key redacted)
            if ts.nack is not None:
                cfg.error_state.details = ts.nack
                if pushed is not None:
                    cfg.error_state.last_update_attempt.CopyFrom(pushed)
    return out


class CsdsServicer:
    """Serves Fetch/StreamClientStatus from the open ADS streams."""

    def __init__(self, streams: StreamRegistry, access: Access | None = None) -> None:
        """``access``: who may see what (None: everyone sees everything)."""
        self.streams = streams
        self.access = access

    def respond(
        self, req: csds_pb2.ClientStatusRequest, shown: ProxyFilter | None = None
    ) -> csds_pb2.ClientStatusResponse:
        """The status of the nodes ``req`` selects, of those ``shown`` lets the caller see."""
        shown = shown or Everything()
        conns = sorted(
            (c for c in self.streams.connections.values() if c.stream.node_id),
            key=lambda c: (c.stream.node_id, c.id),
        )
        matchers = list(req.node_matchers)
        include = not req.exclude_resource_contents
        return csds_pb2.ClientStatusResponse(
            config=[
                client_config(c, include_contents=include, shown=shown)
                for c in conns
                if shown.sees(c) and node_matches(matchers, c)
            ]
        )

    async def _shown(self, context: _Ctx) -> ProxyFilter:
        return Everything() if self.access is None else await self.access(context)

    async def FetchClientStatus(  # noqa: N802 (gRPC method name)
        self, request: csds_pb2.ClientStatusRequest, context: _Ctx
    ) -> csds_pb2.ClientStatusResponse:
        return self.respond(request, await self._shown(context))

    async def StreamClientStatus(  # noqa: N802
        self, request_iterator: AsyncIterator[csds_pb2.ClientStatusRequest], context: _Ctx
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        async for request in request_iterator:
            # Checked per request: a token removed from the tokens file stops answering.
            yield self.respond(request, await self._shown(context))

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            CSDS_SERVICE,
            {
                "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                    self.FetchClientStatus,
                    request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                    response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
                ),
                "StreamClientStatus": grpc.stream_stream_rpc_method_handler(
                    self.StreamClientStatus,
                    request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                    response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
                ),
            },
        )
