"""A translated resource: serialized once, versioned by content, shared by every stream."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint."""
    if value < 128:
        return _SMALL_VARINTS[value]
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


@dataclass(frozen=True, slots=True)
class Resource:
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
    """

    type_url: str
    name: str
    version: str
    body: bytes
    digest: int
    refs: frozenset[str] = field(default=frozenset())
    sotw_prefix: bytes = b""
    delta_prefix: bytes = b""
    delta_suffix: bytes = b""

    @property
    def any(self) -> any_pb2.Any:
        """The resource as a protobuf Any (built on demand: for tools and tests)."""
        return any_pb2.Any(type_url=self.type_url, value=self.body)


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
    digest = int.from_bytes(
        hashlib.blake2b(f"{name}\0{version}".encode(), digest_size=16).digest(), "big"
    )
    # google.protobuf.Any: type_url = 1, value = 2.
    any_head = string_field(1, type_url) + b"\x12" + encode_varint(len(body))
    any_len = len(any_head) + len(body)
    sotw_prefix = b"\x12" + encode_varint(any_len) + any_head
    # envoy.service.discovery.v3.Resource: version = 1, resource = 2, name = 3.
    version_field = string_field(1, version)
    name_field = string_field(3, name)
    inner = len(version_field) + 1 + len(encode_varint(any_len)) + any_len + len(name_field)
    delta_prefix = (
        b"\x12" + encode_varint(inner) + version_field + b"\x12" + encode_varint(any_len) + any_head
    )
    return Resource(
        type_url, name, version, body, digest, refs, sotw_prefix, delta_prefix, name_field
    )


def set_version(digests: int) -> str:
    """The version string of a set of resources from the XOR of their digests."""
    return f"{digests:032x}"
