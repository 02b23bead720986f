"""The fast ClusterLoadAssignment encoder equals the message API, byte for byte."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.stream_mesh import Mesh
from xds_server.model import Endpoint, Service, ServiceRef
from xds_server.translate import eds_wire, translator
from xds_server.translate.endpoint import build_cla, encode_assignment, encode_cla, plan

REF = ServiceRef("default", "web")

endpoints = st.lists(
    st.builds(
        Endpoint,
        service=st.just(REF),
        id=st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
        address=st.sampled_from(["10.0.0.1", "::1", "2001:db8::7", "192.168.255.254", "x.test"]),
        port=st.none() | st.integers(1, 65535),
        weight=st.integers(1, 1000),
        zone=st.sampled_from(["", "zone-a", "zone-b", "z" * 130]),
        draining=st.booleans(),
    ),
    max_size=12,
    unique_by=lambda e: e.id,
)


@settings(max_examples=300, deadline=None)
@given(
    endpoints,
    st.dictionaries(
        st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), st.sampled_from([0, 1, 2, 3])
    ),
    st.sampled_from([None, 80, 8080]),
)
def test_encoders_match_message_api(
    eps: list[Endpoint], health: dict[str, int], port: int | None
) -> None:
    """encode_cla (memoized per endpoint) writes the message API's bytes; encode_assignment
    (a bulk translation's one pass) writes what plan() and encode_cla write, and notes the
    same DNS names. (One draw serves both: drawing costs more than the checks.)"""
    service = Service(ref=REF, port=port)
    eps = [e if e.port is not None or port is not None else e._replace(port=9) for e in eps]
    resolve = {"x.test": ("10.9.9.9", "10.9.9.8")}.get
    groups = plan(service, eps, lambda n: resolve(n) or (), health)
    reference = build_cla("web.default", groups)
    assert encode_cla("web.default", groups) == reference.SerializeToString(deterministic=True)
    for group in reference.endpoints:
        assert group.HasField("locality") and group.load_balancing_weight.value > 0

    names: dict[str, set[str]] = {}
    groups = plan(service, eps, lambda n: resolve(n) or (), health or None, names)
    one_pass: dict[str, set[str]] = {}
    fast = encode_assignment(
        "web.default", service, eps, lambda n: resolve(n) or (), health or None, one_pass
    )
    assert fast == encode_cla("web.default", groups, memo=False)
    assert fast == build_cla("web.default", groups).SerializeToString(deterministic=True)
    assert one_pass == names


@settings(max_examples=100, deadline=None)
@given(
    address=st.text(alphabet="0123456789abcdef:.", min_size=1, max_size=300),
    port=st.integers(1, 65535),
    status=st.sampled_from([0, 1, 2, 3]),
    weight=st.integers(0, 1000),
)
def test_any_row_encodes_as_the_message_api(
    address: str, port: int, status: int, weight: int
) -> None:
    """Rows beyond what plan() makes (long addresses, weight 0) take the encoder's
    general path; it too gives protobuf's bytes."""
    groups = [("", [(address, port, status, weight)], max(weight, 1))]
    reference = build_cla("c", groups)
    assert encode_cla("c", groups) == reference.SerializeToString(deterministic=True)


def test_a_bulk_translation_bypasses_the_endpoint_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """From BULK_SERVICES services at once (a cold start), endpoints are encoded without
    the memo, to the same bytes; smaller translations fill it."""
    registry: dict[str, dict[str, Any]] = {}
    for s in range(3):
        registry[f"services/default/b{s}"] = {"port": 80, "subsets": {"v": {"v": "1"}}}
        for e in range(4):
            address = f"10.77.{s}.{e}"
            registry[f"endpoints/default/b{s}/e{e}"] = {"address": address, "labels": {"v": "1"}}
    eds_wire.lb_endpoint.cache_clear()
    monkeypatch.setattr(translator, "BULK_SERVICES", 3)
    bulk = Mesh(registry)
    assert eds_wire.lb_endpoint.cache_info().currsize == 0
    monkeypatch.setattr(translator, "BULK_SERVICES", 4)
    memoized = Mesh(registry)
    assert eds_wire.lb_endpoint.cache_info().currsize == 12
    assert bulk.cache.served() == memoized.cache.served()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "zone-a", "z" * 200]),
            st.lists(
                st.tuples(
                    st.sampled_from(["10.0.0.1", "2001:db8::7", "a" * 150]),
                    st.integers(1, 65535),
                    st.sampled_from([0, 1, 3]),
                    st.integers(1, 1000),
                ),
                max_size=6,
            ),
            st.integers(1, 2**32 - 1),
        ),
        max_size=4,
    )
)
def test_assignment_of_pieces_joins_as_the_grouped_encoder(
    groups: list[tuple[str, list[tuple[str, int, int, int]], int]],
) -> None:
    pieces = [(zone, [eds_wire.lb_endpoint(*row) for row in rows], w) for zone, rows, w in groups]
    reference = eds_wire.cluster_load_assignment(
        "web.default", [eds_wire.locality_group(zone, blobs, w) for zone, blobs, w in pieces]
    )
    joined = eds_wire.assignment_of_pieces(
        "web.default", [(zone, blobs, w, sum(map(len, blobs))) for zone, blobs, w in pieces]
    )
    assert joined == reference
