"""The SotW subscription key: equal exactly when a request repeats the same names."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.resources import ENDPOINT, TYPE_ORDER
from xds_server.server.request_key import (
    DELTA_NAMES_TAG,
    MIN_NAMES,
    SOTW_NAMES_TAG,
    light_request,
    may_list_over,
    subscription_key,
)
from xds_server.server.stream import SotwStream

NAMES = [f"s{i}.default" for i in range(200)]


def _req(names: list[str], version: str = "", nonce: str = "", node: bool = False) -> bytes:
    req = discovery_pb2.DiscoveryRequest(
        type_url=ENDPOINT, resource_names=names, version_info=version, response_nonce=nonce
    )
    if node:
        req.node.id = "gw-1"
    return req.SerializeToString()


def _key(data: bytes) -> bytes | None:
    return subscription_key(data, discovery_pb2.DiscoveryRequest.FromString(data))


def test_acks_of_the_same_subscription_share_a_key() -> None:
    first = _key(_req(NAMES, "v1", "3.0"))
    assert first is not None
    assert _key(_req(NAMES, "v2-longer-version", "17.4")) == first
    assert _key(_req(NAMES)) == first  # the initial request too
    assert _key(_req([*NAMES[:-1], "other"], "v1", "3.0")) != first
    assert _key(_req(list(reversed(NAMES)), "v1", "3.0")) != first  # order counts: safe side
    assert _key(_req(NAMES, "v1", "3.0", node=True)) != first


def test_small_subscriptions_and_nacks_have_no_key() -> None:
    assert _key(_req(NAMES[: MIN_NAMES - 1], "v1", "1.0")) is None
    req = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=NAMES)
    req.error_detail.CopyFrom(status_pb2.Status(message="bad"))
    assert subscription_key(req.SerializeToString(), req) is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=6), min_size=MIN_NAMES, max_size=MIN_NAMES + 4),
    st.lists(st.text(min_size=1, max_size=6), min_size=MIN_NAMES, max_size=MIN_NAMES + 4),
    st.text(alphabet="0123456789.", min_size=1, max_size=5),
    st.text(alphabet="0123456789.", min_size=1, max_size=5),
    st.booleans(),
)
def test_equal_keys_mean_equal_names(
    a: list[str], b: list[str], nonce_a: str, nonce_b: str, embed: bool
) -> None:
    """Whatever the names contain, even the encoded nonce field itself, keys are equal
    exactly when the names are."""
    if embed:  # a name carrying the exact bytes of the nonce field: "*" + length + nonce
        b = [*b[:-1], f"*{chr(len(nonce_b))}{nonce_b}"]
    ka = _key(_req(a, "v1", nonce_a))
    kb = _key(_req(b, "v2", nonce_b))
    assert ka is not None and kb is not None
    assert (ka == kb) == (a == b)


def _sotw_stream(services: list[str]) -> tuple[SotwStream, list[str]]:
    """A SotW stream on a mesh of these services (default namespace), and their clusters."""
    from tests.support.stream_mesh import Mesh

    mesh = Mesh({f"services/default/{name}": {"port": 80} for name in services})
    s, _ = mesh.stream()
    return s, sorted(f"{name}.default" for name in services)


def test_a_sotw_stream_uses_the_key_and_still_sees_every_change() -> None:
    s, names = _sotw_stream([f"s{i}" for i in range(80)])

    def request(names: list[str], resp: discovery_pb2.DiscoveryResponse | None = None):  # type: ignore[no-untyped-def]
        req = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=names)
        req.node.id, req.node.cluster = "gw", "gateway"
        if resp is not None:
            req.version_info, req.response_nonce = resp.version_info, resp.nonce
        data = req.SerializeToString()
        return s.on_request(req, subscription_key(data, req))

    first = request(names)
    assert len(first) == 1 and len(first[0].resources) == 80
    resp = discovery_pb2.DiscoveryResponse.FromString(first[0].encode())
    assert request(names, resp) == []  # the ACK: same key, nothing to do
    assert s.types[ENDPOINT].acked
    request(names[:-1], resp)  # a changed subscription is seen
    assert s.types[ENDPOINT].subscribed == frozenset(names[:-1])


BIG = [f"cluster-{i:04d}.default" for i in range(3500)]  # ~77 KB: over LIGHT_MIN_BYTES


def _full(data: bytes) -> tuple[str, str, str, bytes | None]:
    req = discovery_pb2.DiscoveryRequest.FromString(data)
    return req.type_url, req.version_info, req.response_nonce, subscription_key(data, req)


@settings(max_examples=200, deadline=None)
@given(
    type_url=st.sampled_from(TYPE_ORDER),
    version=st.text(max_size=30),
    nonce=st.text(max_size=12),
    node=st.booleans(),
    error=st.booleans(),
    cut=st.integers(min_value=0, max_value=40),
    tricky=st.sampled_from(["", "type.googleapis.com/x", ENDPOINT, "\x2a\x03abc"]),
)
def test_light_reading_agrees_with_the_parser(
    type_url: str, version: str, nonce: str, node: bool, error: bool, cut: int, tricky: str
) -> None:
    """Whatever light_request reads from a request (type, version, nonce, key) is what the
    parser reads; requests laid out otherwise (node, error, truncated) it leaves alone."""
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url,
        resource_names=[*BIG, f'"{chr(len(tricky))}{tricky}'],  # a name that looks like a field
        version_info=version,
        response_nonce=nonce,
    )
    if node:
        req.node.id = "gw"
    if error:
        req.error_detail.message = "rejected"
    data = req.SerializeToString()
    light = light_request(data)
    if node or error or not nonce:  # (only ACKs are read lightly)
        assert light is None
    elif light is not None:
        msg, key = light
        assert (msg.type_url, msg.version_info, msg.response_nonce, key) == _full(data)
        assert not msg.resource_names and not msg.HasField("node")
    else:
        raise AssertionError("a request laid out as Envoy writes it was not read lightly")
    truncated = data[: len(data) - 1 - cut]
    got = light_request(truncated)
    if got is not None:  # (a cut can still leave a well-formed request: then it agrees)
        assert (got[0].type_url, got[0].version_info, got[0].response_nonce, got[1]) == _full(
            truncated
        )


def test_a_sotw_stream_reads_repeated_acks_lightly() -> None:
    """Through the servicer's path: the ACK that repeats the subscription is read lightly
    and recognised; one that changes it is parsed whole and the change is seen."""
    from xds_server.server.ads import _sotw_request

    s, names = _sotw_stream([f"s{i:04d}-with-a-longer-name" for i in range(3000)])

    def request(names: list[str], resp: discovery_pb2.DiscoveryResponse | None = None):  # type: ignore[no-untyped-def]
        req = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=names)
        if resp is None:
            req.node.id, req.node.cluster = "gw", "gateway"
        else:
            req.version_info, req.response_nonce = resp.version_info, resp.nonce
        keyed = _sotw_request(req.SerializeToString())
        return keyed, s.on_request(*keyed.for_stream(s))

    keyed, first = request(names)
    assert keyed.data is None  # the first request (node, no nonce): parsed whole
    resp = discovery_pb2.DiscoveryResponse.FromString(first[0].encode())
    keyed, out = request(names, resp)
    assert keyed.data is not None and s.knows_key(ENDPOINT, keyed.key) and out == []
    assert s.types[ENDPOINT].acked
    keyed, out = request(names[:-1], resp)  # read lightly, unknown key: parsed whole
    assert keyed.data is not None
    assert s.types[ENDPOINT].subscribed == frozenset(names[:-1])


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(st.text(min_size=0, max_size=40), max_size=60),
    limit=st.integers(min_value=0, max_value=70),
    node=st.booleans(),
    delta=st.booleans(),
)
def test_a_request_over_the_names_limit_is_never_let_through_unparsed(
    names: list[str], limit: int, node: bool, delta: bool
) -> None:
    """The byte count that spares most requests the exact count never misses one over the
    limit (whatever bytes the names, node or version hold)."""
    if delta:
        req: Any = discovery_pb2.DeltaDiscoveryRequest(
            type_url=ENDPOINT, resource_names_subscribe=names, response_nonce="7"
        )
        tag = DELTA_NAMES_TAG
    else:
        req = discovery_pb2.DiscoveryRequest(
            type_url=ENDPOINT, resource_names=names, version_info="v\x1a", response_nonce="7"
        )
        tag = SOTW_NAMES_TAG
    if node:
        req.node.id, req.node.cluster = "gw\x1a-1", "x" * 26
    if len(names) > limit:
        assert may_list_over(req.SerializeToString(), tag, limit)


@pytest.mark.parametrize("limit", [0, 1, 7, 1000])
def test_the_shortest_request_over_the_names_limit_is_still_found(limit: int) -> None:
    """``limit + 1`` empty names and nothing else: two bytes a name, the fewest a request
    over the limit can take, found over it (and one more name allowed, not)."""
    sotw = discovery_pb2.DiscoveryRequest(resource_names=[""] * (limit + 1))
    delta = discovery_pb2.DeltaDiscoveryRequest(resource_names_subscribe=[""] * (limit + 1))
    for req, tag in ((sotw, SOTW_NAMES_TAG), (delta, DELTA_NAMES_TAG)):
        data = req.SerializeToString()
        assert len(data) == 2 * (limit + 1)
        assert may_list_over(data, tag, limit)
        assert not may_list_over(data, tag, limit + 1)
