"""A translated resource: serialized once, versioned by content, shared by every stream."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

_SMALL_VARINTS = [bytes((i,)) for i in range(128)]

K = TypeVar("K")
V = TypeVar("V")


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint."""
    if value < 128:
        return _SMALL_VARINTS[value]
    if value < 16384:  # lengths of most fields and resources: two bytes, no loop
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def decode_varint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    """(value, position after it) of the protobuf varint at ``at``."""
    value = shift = 0
    while True:
        b = data[at]
        at += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, at
        shift += 7


_SHORT_HEADS = [[bytes((number << 3 | 2, n)) for n in range(128)] for number in range(16)]
"""The tag and length of a length-delimited field numbered below 16 holding fewer than 128
bytes (most fields a translation writes), by field number and length."""


def string_field(number: int, value: str | bytes) -> bytes:
    """A length-delimited protobuf field (string, bytes or embedded message)."""
    data = value.encode() if isinstance(value, str) else value
    if number < 16 and len(data) < 128:
        return _SHORT_HEADS[number][len(data)] + data
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


class Resource(NamedTuple):
    """One Envoy resource ready to send.

    ``body`` is the message's deterministic serialization, held once. The
    prefixes turn it into a ``resources`` entry of a SotW DiscoveryResponse
    (``sotw_prefix + body``) or of a DeltaDiscoveryResponse
    (``delta_prefix + body + delta_suffix``) without another copy per stream.
    ``version`` is a hash of ``body``, so replicas and restarts agree on it;
    ``digest`` is a hash of name and version as an integer: set versions XOR
    these, which makes them order-independent and updatable in O(changed).
    ``refs`` names the clusters a route configuration or listener points at,
    for make-before-break removal.

    A named tuple (immutable like a frozen dataclass, and built much faster): a cold start
    makes one per cluster and assignment of the whole registry.
    """

    type_url: str
    name: str
    version: str
    body: bytes
    digest: int
    refs: frozenset[str] = frozenset()
    sotw_prefix: bytes = b""
    delta_prefix: bytes = b""
    delta_suffix: bytes = b""

    def __repr__(self) -> str:
        # Never the body: a Secret's holds a private key, and reprs end up in logs.
        return f"Resource({self.type_url!r}, {self.name!r}, {self.version!r}, {len(self.body)} B)"

    @property
    def any(self) -> any_pb2.Any:
        """The resource as a protobuf Any (built on demand: for tools and tests)."""
        return any_pb2.Any(type_url=self.type_url, value=self.body)


_new = tuple.__new__


def make_resource(
    type_url: str, name: str, msg: Message, refs: frozenset[str] = frozenset()
) -> Resource:
    """Serialize ``msg`` deterministically and wrap it for sending."""
    return resource_from_bytes(type_url, name, msg.SerializeToString(deterministic=True), refs)


def resource_from_bytes(
    type_url: str, name: str, body: bytes, refs: frozenset[str] = frozenset()
) -> Resource:
    """Wrap an already serialized message (see :mod:`xds_server.translate.eds_wire`)."""
    version = hashlib.blake2b(body, digest_size=12).hexdigest()
    version_bytes = version.encode()
    name_bytes = name.encode()
    digest = int.from_bytes(
        hashlib.blake2b(name_bytes + b"\0" + version_bytes, digest_size=16).digest(), "big"
    )
    # google.protobuf.Any: type_url = 1, value = 2.
    type_field = _TYPE_URL_FIELDS.get(type_url)
    if type_field is None:
        type_field = _TYPE_URL_FIELDS[type_url] = string_field(1, type_url)
    any_head = type_field + b"\x12" + encode_varint(len(body))
    any_len = len(any_head) + len(body)
    any_len_varint = encode_varint(any_len)
    sotw_prefix = b"\x12" + any_len_varint + any_head
    # envoy.service.discovery.v3.Resource: version = 1, resource = 2, name = 3.
    version_field = b"\n\x18" + version_bytes  # field 1, 24 hex digits (string_field's bytes)
    name_field = string_field(3, name_bytes)
    inner = len(version_field) + 1 + len(any_len_varint) + any_len + len(name_field)
    delta_prefix = (
        b"\x12" + encode_varint(inner) + version_field + b"\x12" + any_len_varint + any_head
    )
    # (tuple.__new__: a named tuple's own __new__ is a Python call, twice as slow)
    return _new(
        Resource,
        (type_url, name, version, body, digest, refs, sotw_prefix, delta_prefix, name_field),
    )


_TYPE_URL_FIELDS: dict[str, bytes] = {}
"""``Any.type_url`` fields by type URL (a handful of them, each encoded once)."""


def set_version(digests: int) -> str:
    """The version string of a set of resources from the XOR of their digests.

    One string per set version, shared: each stream keeps the version of every type it
    holds, and streams with the same subscription hold the same ones. Formatting a new
    string per stream would cost memory in every stream.
    """
    return _SET_VERSIONS[digests]


class BoundedMemo(dict[K, V]):
    """``memo[key]`` is ``make(key)``, made once and shared by every caller. It forgets
    everything once it holds ``limit`` keys, so it stays bounded. A hit is a dict lookup
    in C; only a miss calls Python (``__missing__``)."""

    __slots__ = ("_limit", "_make")

    def __init__(self, make: Callable[[K], V], limit: int = 4096) -> None:
        super().__init__()
        self._make, self._limit = make, limit

    def __missing__(self, key: K) -> V:
        if len(self) >= self._limit:
            self.clear()
        value = self[key] = self._make(key)
        return value


_SET_VERSIONS: BoundedMemo[int, str] = BoundedMemo(lambda digests: f"{digests:032x}")
"""Set version strings by XOR of digests (see :func:`set_version`)."""
