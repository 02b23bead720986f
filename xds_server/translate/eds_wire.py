"""Fast path: ClusterLoadAssignment bytes encoded directly, endpoint by endpoint.

A cold start translates every endpoint; building them as upb messages is slow in
Python, encoding the few fields directly is many times faster, and an
endpoint's bytes are memoized so an incremental change re-encodes only the
endpoints that changed. Fields are written in field-number order, as
protobuf's own serializer does, and ``tests/unit/test_eds_wire.py`` checks with
hypothesis that the bytes parse to exactly what :func:`endpoint.build_cla`
builds with the message API.

Field numbers (envoy.config.endpoint.v3):
ClusterLoadAssignment{cluster_name=1, endpoints=2}
LocalityLbEndpoints{locality=1, lb_endpoints=2, load_balancing_weight=3}
Locality{region=1, zone=2, sub_zone=3}
LbEndpoint{endpoint=1, health_status=2, load_balancing_weight=4}
Endpoint{address=1}; Address{socket_address=1}; SocketAddress{address=2, port_value=3}
google.protobuf.UInt32Value{value=1}
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from xds_server.resources.resource import encode_varint


def _field(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def _uint32_value(number: int, value: int) -> bytes:
    """A google.protobuf.UInt32Value field; value 0 is an empty (present) message."""
    inner = b"\x08" + encode_varint(value) if value else b""
    return _field(number, inner)


_SMALL = [bytes((i,)) for i in range(128)]
_VARINTS: dict[int, bytes] = {}


def _int(value: int) -> bytes:
    """Varint of a port, weight or status: few distinct values, each encoded once
    (ports are at most 65535 and weights at most 1000: the memo stays bounded)."""
    out = _VARINTS.get(value)
    if out is None:
        out = _VARINTS[value] = encode_varint(value)
    return out


def _len(n: int) -> bytes:
    return _SMALL[n] if n < 128 else encode_varint(n)


@functools.lru_cache(maxsize=1 << 18)
def lb_endpoint(address: str, port: int, health_status: int, weight: int) -> bytes:
    """One LbEndpoint as a ``lb_endpoints`` field (tag and length included), memoized:
    endpoints change one at a time, and re-encoding a big assignment after one change
    is then a join of cached bytes."""
    a = address.encode()
    p = _int(port)
    tail = _TAILS.get((health_status, weight))
    if tail is None:
        tail = _TAILS[(health_status, weight)] = _lb_tail(health_status, weight)
    # Nested lengths, innermost first: SocketAddress, Address, Endpoint, LbEndpoint.
    n_socket = 3 + len(a) + len(p)  # (an address is shorter than 128 bytes)
    n_address = n_socket + 2
    n_endpoint = n_address + 2
    n_lb = n_endpoint + 2 + len(tail)
    if n_lb < 128:  # every length one byte: the common case, one join
        return b"".join(
            (
                b"\x12",  # LocalityLbEndpoints.lb_endpoints = 2
                _SMALL[n_lb],
                b"\x0a",  # LbEndpoint.endpoint
                _SMALL[n_endpoint],
                b"\x0a",  # Endpoint.address
                _SMALL[n_address],
                b"\x0a",  # Address.socket_address
                _SMALL[n_socket],
                b"\x12",  # SocketAddress.address
                _SMALL[len(a)],
                a,
                b"\x18",  # SocketAddress.port_value
                p,
                tail,
            )
        )
    socket_address = b"\x12" + _len(len(a)) + a + b"\x18" + p
    addr = b"\x0a" + _len(len(socket_address)) + socket_address
    endpoint = b"\x0a" + _len(len(addr)) + addr
    out = b"\x0a" + _len(len(endpoint)) + endpoint + tail
    return b"\x12" + _len(len(out)) + out


encode_lb_endpoint = lb_endpoint.__wrapped__
""":func:`lb_endpoint` without the memo, for a bulk translation (a cold start): every one is
a miss then, and the memo's bookkeeping costs more than the encoding and keeps bytes, in proportion
to the registry, that few changes will ask for again."""


class Pieces(NamedTuple):
    """The parts of an ``lb_endpoints`` field (:func:`lb_endpoint`) that do not depend on
    its address, for a bulk translation: ``head + address + tail`` is the field, one
    concatenation per endpoint instead of a call that builds the nested fields."""

    tail: bytes
    """What follows the address: the port, the health status and the weight."""
    heads: dict[int, bytes]
    """What precedes an address of each length: filled by :func:`lb_endpoint_head`."""
    port_size: int
    """The size of the port field, at the start of ``tail``."""


_PIECES: dict[tuple[int, int, int], Pieces] = {}
_PIECES_MAX = 4096


def pieces(port: int, health_status: int, weight: int) -> Pieces:
    """The :class:`Pieces` of the ``lb_endpoints`` fields of this port, status and weight
    (kept: they are few)."""
    key = (port, health_status, weight)
    found = _PIECES.get(key)
    if found is None:
        if len(_PIECES) >= _PIECES_MAX:
            _PIECES.clear()
        port_field = b"\x18" + _int(port)
        tail = port_field + _lb_tail(health_status, weight)
        found = _PIECES[key] = Pieces(tail, {}, len(port_field))
    return found


def lb_endpoint_head(of: Pieces, size: int) -> bytes | None:
    """The bytes of an ``lb_endpoints`` field of ``of`` before an address of ``size`` bytes
    (noted in ``of.heads``); None when a length in the field takes more than one byte
    (then :func:`encode_lb_endpoint` writes it)."""
    n_socket = 2 + size + of.port_size
    n_address = n_socket + 2
    n_endpoint = n_address + 2
    n_lb = n_endpoint + 2 + len(of.tail) - of.port_size
    if n_lb >= 128:
        return None
    head = bytes((0x12, n_lb, 0x0A, n_endpoint, 0x0A, n_address, 0x0A, n_socket, 0x12, size))
    of.heads[size] = head
    return head


def _lb_tail(health_status: int, weight: int) -> bytes:
    """LbEndpoint's fields after ``endpoint``: health_status = 2, load_balancing_weight = 4."""
    out = b"\x10" + _int(health_status) if health_status else b""
    if weight:
        weight_value = b"\x08" + _int(weight)
        return out + b"\x22" + _SMALL[len(weight_value)] + weight_value
    return out + b"\x22\x00"


_TAILS: dict[tuple[int, int], bytes] = {}
"""Encoded (health status, weight) tails: a few statuses times at most 1,000 weights."""


def locality_group(zone: str, lb_endpoints: list[bytes], weight: int) -> bytes:
    """One LocalityLbEndpoints message (locality always present, weight always set);
    ``lb_endpoints`` are :func:`lb_endpoint` fields."""
    locality = _field(2, zone.encode()) if zone else b""
    return b"".join([_field(1, locality), *lb_endpoints, _uint32_value(3, weight)])


def cluster_load_assignment(name: str, groups: list[bytes]) -> bytes:
    """The ClusterLoadAssignment message bytes."""
    return b"".join([_field(1, name.encode()), *(_field(2, g) for g in groups)])


def assignment_of_pieces(name: str, groups: list[tuple[str, list[bytes], int, int]]) -> bytes:
    """The same bytes as :func:`cluster_load_assignment` of :func:`locality_group`\\ s, joined
    once: ``groups`` are (zone, :func:`lb_endpoint` fields, weight, their total size), so
    a group's header is written from the size without joining its fields first."""
    parts = [_field(1, name.encode())]
    for zone, lb_endpoints, weight, size in groups:
        locality = _field(1, _field(2, zone.encode()) if zone else b"")
        tail = _uint32_value(3, weight)
        n = len(locality) + size + len(tail)
        parts.append(b"\x12" + encode_varint(n) + locality)  # ClusterLoadAssignment.endpoints
        parts += lb_endpoints
        parts.append(tail)
    return b"".join(parts)
