"""Mesh events as admin ``Watch`` messages, and which of them a caller may see."""

from __future__ import annotations

from collections.abc import Iterable

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.errors import invalid
from xds_server.admin.proxies import connections, timestamp
from xds_server.admin.proxy_view import ProxyView
from xds_server.errors import ValidationError
from xds_server.events import EventType, MeshEvent
from xds_server.model.names import parse_key
from xds_server.server.ads import StreamRegistry

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


class EventFilter:
    """The events one ``Watch`` caller may see: registry and health events of its
    namespaces (and listeners'), node events (pushes, NACKs, connections) of the proxies
    it sees (:class:`ProxyView`: gateways and its own sidecars). An event meshd cannot
    attribute (a malformed key) is for tokens of namespaces ``["*"]`` only."""

    def __init__(self, view: ProxyView, streams: StreamRegistry, prefix: str) -> None:
        self.view = view
        self.streams = streams
        self.prefix = prefix
        self._nodes: dict[str, tuple[int, bool]] = {}
        """node id -> (registry revision, visible): a node's streams are looked up once
        per registry revision (a service registered makes a gateway-looking node a
        sidecar); forgotten when the node disconnects."""

    def admits(self, event: MeshEvent) -> bool:
        """Whether the caller may see ``event``."""
        if self.view.everything:
            return True
        if event.key:
            try:
                namespace = parse_key(event.key, self.prefix).namespace
            except ValidationError:
                return False
            return self.view.who.may("read", namespace)  # ("": a listener, read by all)
        if event.node_id:
            return self._node_visible(event)
        return False

    def _node_visible(self, event: MeshEvent) -> bool:
        node = event.node_id
        revision = self.view.state.revision
        known = self._nodes.get(node)
        if known is not None and known[0] == revision and event.type != "proxy_connected":
            visible = known[1]
        else:
            conns = connections(self.streams, node)
            # A node that already left is judged by what was known of it, else hidden.
            visible = self.view.node_visible(conns) if conns else bool(known and known[1])
        if event.type == "proxy_disconnected":
            self._nodes.pop(node, None)
        else:
            if len(self._nodes) > 2 * len(self.streams.connections) + 1024:
                # (a watcher of pushes only never hears of disconnections: stay bounded)
                self._nodes.clear()
            self._nodes[node] = (revision, visible)
        return visible
