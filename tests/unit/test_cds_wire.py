"""Clusters encoded from a per-shape template equal the message API, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.golden import translate
from tests.support.wire_checks import check_clusters
from xds_server.ingest.registry import Entry
from xds_server.model import Service
from xds_server.translate import cds_wire


def _services(registry: dict[str, dict[str, Any]]) -> list[Service]:
    entries = tuple(
        Entry(key, json.dumps(value).encode(), i)
        for i, (key, value) in enumerate(registry.items(), start=1)
    )
    state, _, _ = translate(entries)
    return list(state.services.values())


_check = check_clusters
"""(Random registries are checked in tests/unit/test_wire_props.py.)"""


_SHAPES: list[dict[str, Any]] = [
    {},
    {"connect_timeout_ms": 2500},
    {"protocol": "http2"},
    {"protocol": "grpc"},
    {"protocol": "tcp"},
    {"load_balancer": {"algorithm": "least_request"}},
    {"circuit_breaker": {"max_connections": 7}},
    {"circuit_breaker": {"max_requests": 9, "max_retries": 1}},
    {"outlier_detection": {"consecutive_5xx": 3}},
    {"outlier_detection": {"consecutive_5xx": 3, "interval_ms": 2000}},
    {"health_check": {"path": "/h", "every_proxy": True}},
    {"health_check": {"path": "/other", "every_proxy": True}},
    {"health_check": {"path": "/h"}},
    {"subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}}},
]


def test_each_field_of_a_shape_gives_its_own_template() -> None:
    """Services that differ from each other in one field each, translated one after the
    other in one process (so every earlier template is memoized)."""
    registry = {
        f"/mesh/services/default/s{i}": {"port": 80, **fields} for i, fields in enumerate(_SHAPES)
    }
    services = _services(registry)
    assert len(services) == len(_SHAPES)
    for service in services:
        _check(service)


@pytest.mark.parametrize("fields", _SHAPES)
def test_a_lone_service_of_each_shape(fields: dict[str, Any]) -> None:
    for service in _services({"/mesh/services/ns1/web": {"port": 80, **fields}}):
        _check(service)


def test_bytes_that_cannot_be_cut_fall_back_to_the_message_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_split`` refuses anything but field-number order with one field 3 and no name;
    then every cluster of that shape is serialized through the message API."""
    assert cds_wire._split(b"\x08\x01") is None  # a field 1
    assert cds_wire._split(b"\x1a\x00\x1a\x00") is None  # field 3 twice
    assert cds_wire._split(b"\x20\x01\x1a\x00") is None  # field 4 before field 3
    assert cds_wire._split(b"\x10\x03\x1a\x00\x20\x01") == (b"\x10\x03", b"", b"\x20\x01")
    monkeypatch.setattr(cds_wire, "_TEMPLATES", {})
    monkeypatch.setattr(cds_wire, "_split", lambda body: None)
    services = _services(
        {"/mesh/services/default/web": {"port": 80, "subsets": {"a": {"version": "a"}}}}
    )
    assert [s.subset_names for s in services] == [("a",)]
    for service in services:
        _check(service)
    assert list(cds_wire._TEMPLATES.values()) == [None]
