"""A cheap identity for the subscription a SotW DiscoveryRequest repeats. Pure.

Envoy repeats its whole subscription in every ACK: a cluster name per service. Comparing
them as Python strings costs time in proportion to the registry on every ACK; hashing the
request's bytes, minus the two fields that change from ACK to ACK (``version_info`` and
``response_nonce``), costs a fraction of that, in C. Two requests with equal keys carry
byte-identical resource names (and node and type), so the subscription is unchanged.

Only the fields' exact encodings are removed: ``version_info`` when it is the first field
(protobuf writes fields in number order) and the last occurrence of the nonce field. Any
other placement leaves those varying bytes in, and the key simply never repeats: the slow
path, never a wrong answer.
"""

from __future__ import annotations

import hashlib

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.resources.resource import decode_varint, string_field
from xds_server.resources.types import TYPE_ORDER

MIN_NAMES = 64
"""Below this many names the set comparison is cheaper than hashing."""


def subscription_key(data: bytes, req: discovery_pb2.DiscoveryRequest) -> bytes | None:
    """A 20-byte key of everything in ``data`` but version and nonce, or None when not
    worth it (few names, or a NACK, whose error text makes it unique anyway)."""
    if len(req.resource_names) < MIN_NAMES or req.HasField("error_detail"):
        return None
    view = memoryview(data)
    start = 0
    if req.version_info:
        version = string_field(1, req.version_info)
        if view[: len(version)] == version:
            start = len(version)
    end = len(data)
    tail = b""
    if req.response_nonce:
        nonce = string_field(5, req.response_nonce)
        at = data.rfind(nonce, start)
        if at >= 0:
            tail = data[at + len(nonce) :]
            end = at
    return _digest(view[start:end], tail)


def _digest(middle: memoryview, tail: bytes) -> bytes:
    # SHA-1 runs in hardware on common CPUs (faster than blake2b); a key only has to tell one
    # proxy's consecutive requests apart, not resist an adversary.
    h = hashlib.sha1(middle, usedforsecurity=False)
    h.update(tail)
    return h.digest()


LIGHT_MIN_BYTES = 64 * 1024
"""ACKs this big (thousands of names) are read by :func:`light_request` first: it costs a
fraction of parsing and keying every name. Below it the light read also saves CPU, but
with it meshd's RSS per SotW client was measured higher (why is not found), so small
requests keep the plain parse."""

_TYPE_FIELDS = [string_field(4, t) for t in TYPE_ORDER]
_TAIL_BYTES = 512  # a type URL field (~70 bytes) and a nonce field, with room to spare


def light_request(data: bytes) -> tuple[discovery_pb2.DiscoveryRequest, bytes] | None:
    """The request's type, version and nonce, and its :func:`subscription_key`, read from
    the bytes without parsing the names: most SotW requests are ACKs that repeat the
    subscription, and their names are never read. None unless ``data`` is an ACK laid out
    as Envoy writes it (fields in number order: version, names, type, nonce, nothing else;
    no node, no error): then the caller parses it whole.

    The message returned holds no names: use it only for a stream that knows the key.
    """
    if len(data) < LIGHT_MIN_BYTES:
        return None
    try:
        return _light(data)
    except (IndexError, UnicodeDecodeError):  # truncated, or not UTF-8: the parser says
        return None


def _light(data: bytes) -> tuple[discovery_pb2.DiscoveryRequest, bytes] | None:
    start, version = 0, ""
    if data[0] == 0x0A:  # version_info = 1
        n, at = decode_varint(data, 1)
        start = at + n
        version = data[at:start].decode()  # (invalid UTF-8 raises: the caller parses)
    if data[start] != 0x1A:  # resource_names = 3 must come next: no node (2)
        return None
    # The type (and the nonce after it) end the request: look only at its last bytes.
    window = max(start, len(data) - _TAIL_BYTES)
    type_at = max(data.rfind(f, window) for f in _TYPE_FIELDS)
    if type_at < start:
        return None
    kind = next(i for i, f in enumerate(_TYPE_FIELDS) if data.startswith(f, type_at))
    after = type_at + len(_TYPE_FIELDS[kind])
    # An ACK: response_nonce = 5, and nothing after it. (A request without a nonce opens
    # a type: no stream knows its key yet, so it is parsed straight away.)
    if after >= len(data) or data[after] != 0x2A:
        return None
    n, at = decode_varint(data, after + 1)
    if at + n != len(data) or n == 0:
        return None
    nonce = data[at:].decode()
    end = after
    # What subscription_key hashes: everything but the leading version and the nonce.
    key = _digest(memoryview(data)[start:end], b"")
    return discovery_pb2.DiscoveryRequest(
        type_url=TYPE_ORDER[kind], version_info=version, response_nonce=nonce
    ), key


SOTW_NAMES_TAG = b"\x1a"
"""The tag of ``DiscoveryRequest.resource_names`` (field 3, length-delimited)."""
DELTA_NAMES_TAG = b"\x1a"
"""The tag of ``DeltaDiscoveryRequest.resource_names_subscribe`` (field 3)."""


def may_list_over(data: bytes, tag: bytes, limit: int) -> bool:
    """Whether the request in ``data`` may list more than ``limit`` names: each name starts
    with its field's tag byte, so a request holding no more than ``limit`` such bytes
    cannot (one ``bytes.count``, in C). Only a request that may is counted exactly."""
    return data.count(tag) > limit
