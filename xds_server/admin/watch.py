"""Mesh events as admin ``Watch`` messages."""

from __future__ import annotations

from collections.abc import Iterable

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.errors import invalid
from xds_server.admin.proxies import timestamp
from xds_server.errors import ValidationError
from xds_server.events import EventType, MeshEvent
from xds_server.model.names import parse_key

TYPE_TO_PB: dict[EventType, pb.EventType] = {
    "registry_put": pb.EVENT_TYPE_REGISTRY_PUT,
    "registry_delete": pb.EVENT_TYPE_REGISTRY_DELETE,
    "registry_rejected": pb.EVENT_TYPE_REGISTRY_REJECTED,
    "push": pb.EVENT_TYPE_PUSH,
    "nack": pb.EVENT_TYPE_NACK,
    "proxy_connected": pb.EVENT_TYPE_PROXY_CONNECTED,
    "proxy_disconnected": pb.EVENT_TYPE_PROXY_DISCONNECTED,
    "health": pb.EVENT_TYPE_HEALTH,
}
PB_TO_TYPE = {v: k for k, v in TYPE_TO_PB.items()}


def event_types(requested: Iterable[pb.EventType]) -> list[EventType]:
    """The event types a WatchRequest selects (empty: all); INVALID_ARGUMENT if unknown."""
    out = []
    for i, value in enumerate(requested):
        if value not in PB_TO_TYPE:
            raise invalid("", f"types[{i}]", f"unknown event type {value}")
        out.append(PB_TO_TYPE[value])
    return out


def event_namespace(event: MeshEvent, prefix: str) -> str:
    """The namespace a registry event is about ("" when none: visible to every reader)."""
    if not event.key:
        return ""
    try:
        return parse_key(event.key, prefix).namespace
    except ValidationError:
        return ""


def event_message(event: MeshEvent) -> pb.WatchResponse:
    return pb.WatchResponse(
        type=TYPE_TO_PB[event.type],
        time=timestamp(event.time),
        key=event.key,
        node_id=event.node_id,
        resource_type=event.resource_type,
        version=event.version,
        message=event.message,
        revision=event.revision,
    )
