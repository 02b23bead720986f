"""A translated resource: serialized once, versioned by content, shared by every stream."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message


@dataclass(frozen=True, slots=True)
class Resource:
    """One Envoy resource ready to send.

    ``version`` is a hash of the deterministic serialization, so replicas and
    restarts agree on it. ``digest`` is the same hash of ``name`` and
    ``version`` as an integer: type versions XOR these, which makes a set's
    version independent of order and updatable in O(changed).
    ``refs`` names what this resource needs in force first (the clusters a
    route configuration points at) for make-before-break removal.
    """

    type_url: str
    name: str
    version: str
    any: any_pb2.Any
    digest: int
    refs: frozenset[str] = field(default=frozenset())
    sotw_wire: bytes = b""
    """The resource as field 2 (``resources``) of a DiscoveryResponse, encoded once."""

    @property
    def size(self) -> int:
        return len(self.any.value)


def make_resource(
    type_url: str, name: str, msg: Message, refs: frozenset[str] = frozenset()
) -> Resource:
    """Serialize ``msg`` deterministically and wrap it for sending."""
    body = msg.SerializeToString(deterministic=True)
    version = hashlib.blake2b(body, digest_size=12).hexdigest()
    digest = int.from_bytes(
        hashlib.blake2b(f"{name}\0{version}".encode(), digest_size=16).digest(), "big"
    )
    packed = any_pb2.Any(type_url=type_url, value=body)
    any_bytes = packed.SerializeToString(deterministic=True)
    wire = b"\x12" + encode_varint(len(any_bytes)) + any_bytes
    return Resource(type_url, name, version, packed, digest, refs, wire)


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint."""
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def string_field(number: int, value: str | bytes) -> bytes:
    """A length-delimited protobuf field (string, bytes or embedded message)."""
    data = value.encode() if isinstance(value, str) else value
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


def set_version(digests: int) -> str:
    """The version string of a set of resources from the XOR of their digests."""
    return f"{digests:032x}"
