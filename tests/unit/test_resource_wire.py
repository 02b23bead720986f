"""The pre-encoded prefixes of a Resource are exactly what protobuf would serialize."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.resources.resource import (
    BoundedMemo,
    encode_varint,
    resource_from_bytes,
    string_field,
)
from xds_server.resources.types import TYPE_ORDER

# Sizes around every varint length boundary the prefixes meet (1, 2 and 3 bytes).
sizes = st.sampled_from([0, 1, 127, 128, 200, 16_383, 16_384, 20_000, 2_097_151, 2_097_152])


@settings(max_examples=60, deadline=None)
@given(
    type_url=st.sampled_from(TYPE_ORDER),
    name=st.text(max_size=300),
    size=sizes,
    fill=st.binary(min_size=1, max_size=1),
)
def test_prefixes_frame_the_body_as_protobuf_does(
    type_url: str, name: str, size: int, fill: bytes
) -> None:
    body = fill * size
    res = resource_from_bytes(type_url, name, body)
    sotw = discovery_pb2.DiscoveryResponse.FromString(res.sotw_prefix + body)
    assert list(sotw.resources) == [any_pb2.Any(type_url=type_url, value=body)]
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(
        res.delta_prefix + body + res.delta_suffix
    )
    want = discovery_pb2.Resource(name=name, version=res.version)
    want.resource.CopyFrom(any_pb2.Any(type_url=type_url, value=body))
    assert list(delta.resources) == [want]
    if body:  # (protobuf leaves an empty value out; the prefix writes it, length 0)
        assert (res.sotw_prefix + body) == discovery_pb2.DiscoveryResponse(
            resources=[res.any]
        ).SerializeToString(deterministic=True)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varints_are_protobufs(value: int) -> None:
    encoded = wrappers_pb2.UInt64Value(value=value).SerializeToString()
    assert (b"\x08" + encode_varint(value) if value else b"") == encoded


@given(
    number=st.integers(min_value=1, max_value=40),
    value=st.text(max_size=140) | st.binary(max_size=140) | st.just(b"x" * 20_000),
)
def test_length_delimited_fields_are_protobufs(number: int, value: str | bytes) -> None:
    """string_field (its table of short heads, and past it) writes protobuf's bytes."""
    data = value.encode() if isinstance(value, str) else value
    assert (
        string_field(number, value)
        == encode_varint(number << 3 | 2) + encode_varint(len(data)) + data
    )
    if number == 1 and data:  # (a BytesValue's field 1 as protobuf writes it: not empty)
        assert string_field(1, data) == wrappers_pb2.BytesValue(value=data).SerializeToString()


def test_a_bounded_memo_shares_what_it_made_and_stays_bounded() -> None:
    made: list[int] = []

    def make(key: int) -> str:
        made.append(key)
        return f"v{key}"

    memo: BoundedMemo[int, str] = BoundedMemo(make, limit=3)
    first = memo[7]
    assert memo[7] is first and made == [7]  # made once, then shared
    for key in range(10):
        assert memo[key] == f"v{key}"
    assert len(memo) <= 3
