"""Proxy status and proxy config from the open ADS streams. Pure reads, no I/O.

The states are those of ``docs/xds.md`` / ``docs/admin-api.md``: ``SYNCED`` (the last
response was ACKed), ``STALE`` (sent, not answered yet), ``NACKED`` (rejected, with the
proxy's error_detail message), ``NOT_SENT`` (never asked for or nothing sent yet).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import grpc
from google.protobuf import json_format, timestamp_pb2

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.errors import AdminError
from xds_server.resources.resource import Resource
from xds_server.resources.secrets import dump_any
from xds_server.resources.types import SECRET, SHORT, TYPE_ORDER
from xds_server.server.ads import Connection, StreamRegistry

STATE_TO_PB = {
    "SYNCED": pb.SYNC_STATE_SYNCED,
    "STALE": pb.SYNC_STATE_STALE,
    "NACKED": pb.SYNC_STATE_NACKED,
    "NOT_SENT": pb.SYNC_STATE_NOT_SENT,
}
SHORT_TO_TYPE = {v: k for k, v in SHORT.items()}

Held = Callable[[Connection, str], Sequence[Resource]]
"""What a caller may see of a connection's resources of one type
(:meth:`~xds_server.admin.proxy_view.ProxyView.held`)."""


def _all_held(conn: Connection, t: str) -> Sequence[Resource]:
    return conn.stream.held(t)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def type_statuses(conn: Connection, held: Held = _all_held) -> list[pb.TypeStatus]:
    """One entry per xDS type (CDS, EDS, LDS, RDS; SDS once the proxy asked for Secrets),
    in push order; ``resources`` counts what ``held`` shows."""
    out = []
    for t in TYPE_ORDER:
        ts = conn.stream.types.get(t)
        if ts is None and t == SECRET:
            continue  # (a proxy without TLS never asks for Secrets: nothing to say)
        if ts is None:
            out.append(pb.TypeStatus(type=SHORT[t], state=pb.SYNC_STATE_NOT_SENT))
            continue
        status = pb.TypeStatus(
            type=SHORT[t],
            state=STATE_TO_PB[ts.state],
            sent_version=ts.version if ts.nonce else "",
            acked_version=ts.acked_version,
            error=ts.nack or "",
            resources=len(held(conn, t)),
        )
        if ts.last_push is not None:
            status.last_push.CopyFrom(timestamp(ts.last_push))
        out.append(status)
    return out


def proxy_status(conn: Connection, held: Held = _all_held) -> pb.ProxyStatus:
    """One connection's status, per type."""
    return pb.ProxyStatus(
        node_id=conn.stream.node_id,
        node_cluster=conn.stream.node_cluster,
        protocol=conn.protocol,
        peer=conn.peer,
        connected_at=timestamp(conn.connected_at),
        types=type_statuses(conn, held),
    )


def not_connected(node_id: str) -> AdminError:
    """NOT_FOUND for a node that is not connected, or that the caller may not see."""
    return AdminError(grpc.StatusCode.NOT_FOUND, f"node {node_id!r} is not connected")


def connections(streams: StreamRegistry, node_id: str = "") -> list[Connection]:
    """Open streams that named their node, by node id then connection order."""
    conns = [
        c
        for c in streams.connections.values()
        if c.stream.node_id and (not node_id or c.stream.node_id == node_id)
    ]
    return sorted(conns, key=lambda c: (c.stream.node_id, c.id))


def resource_json(res: Resource) -> str:
    """The resource in protobuf JSON form with its ``@type``."""
    try:
        # (a Secret's private key redacted: the admin API never serves one)
        data = json_format.MessageToDict(dump_any(res), preserving_proto_field_name=True)
    except (TypeError, KeyError) as exc:
        # A nested Any of a type this process never imported: say so, do not fail the call.
        return json.dumps({"@type": res.type_url, "error": f"cannot render: {exc}"})
    return json.dumps(data, indent=2, sort_keys=True)


def proxy_resources(
    conn: Connection, short_type: str = "", held: Held = _all_held
) -> list[pb.ProxyResource]:
    """What ``conn`` was last sent, per type (every type when ``short_type`` is empty), as
    far as ``held`` shows it."""
    types = [SHORT_TO_TYPE[short_type]] if short_type else list(TYPE_ORDER)
    return [
        pb.ProxyResource(type=SHORT[t], name=r.name, version=r.version, json=resource_json(r))
        for t in types
        for r in held(conn, t)
    ]
