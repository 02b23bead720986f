"""The open ADS streams that named their node, for proxy status, CSDS and the gauges."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from xds_server.server.delta_stream import DeltaResponse, DeltaStream
from xds_server.server.stream import Response, SotwStream

XdsStream = SotwStream | DeltaStream
"""One ADS stream's state machine, either protocol."""

XdsResponse = Response | DeltaResponse
"""One response either state machine computed."""


@dataclass
class Connection:
    """A connected proxy, as proxy status reports it."""

    id: int
    peer: str
    protocol: str
    stream: XdsStream
    connected_at: float = field(default_factory=time.time)
    admin_address: str | None = None  # host:port of the proxy's admin (node metadata)
    node_metadata: bytes = b""  # the node's metadata Struct, serialized (CSDS matchers)
    node_cluster: str = ""
    """The node cluster it named when it connected (a later request may name another)."""


class StreamRegistry:
    """Every open stream that named its node."""

    def __init__(self) -> None:
        self.connections: dict[int, Connection] = {}
        self._ids = itertools.count(1)

    def add(self, peer: str, protocol: str, stream: XdsStream) -> Connection:
        """List ``stream``, which just named its node."""
        conn = Connection(next(self._ids), peer, protocol, stream, node_cluster=stream.node_cluster)
        self.connections[conn.id] = conn
        return conn

    def remove(self, conn: Connection) -> None:
        """``conn``'s stream ended."""
        self.connections.pop(conn.id, None)
