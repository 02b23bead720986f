"""Fast path: Cluster bytes from a template per service shape.

A cold start translates every service, and building each Cluster as an upb message and
serializing it is slow in Python. A service's clusters differ from those
of every other service of the same *shape* (load balancing, timeouts, circuit breakers,
outlier detection, health check, protocol) only in their name, which the Cluster holds
twice: ``name`` (field 1) and ``eds_cluster_config.service_name`` (field 3, its field 2).
So the message API builds one Cluster per shape, with both names empty (proto3 leaves
them out), and every cluster of that shape is that serialization with the two names put
in: the name first (field 1 comes first in field-number order), then what precedes field
3, field 3 with the name appended, and the rest. ``tests/unit/test_cds_wire.py`` checks with
hypothesis that the bytes equal the message API's deterministic serialization.

Field numbers (envoy.config.cluster.v3): Cluster{name=1, type=2, eds_cluster_config=3};
EdsClusterConfig{eds_config=1, service_name=2}.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from google.protobuf.message import Message

from xds_server.model import Service
from xds_server.resources.resource import decode_varint, string_field

_Template = tuple[bytes, bytes, bytes]
"""(fields before ``eds_cluster_config``, the EdsClusterConfig's fields, fields after it)"""

_TEMPLATES: dict[Hashable, _Template | None] = {}
_TEMPLATES_MAX = 4096
"""Shapes are few in a real registry; the memo is cleared if they are not."""


def shape(service: Service) -> Hashable:
    """Everything of a service that :func:`cluster.build_cluster` reads, but its name.

    Keep it in step with ``build_cluster``: a field read there and missing here would give
    two services that differ in it the same cluster (the hypothesis test catches that).
    """
    return (
        service.load_balancer.algorithm,
        service.connect_timeout_ms,
        service.circuit_breaker,
        service.outlier_detection,
        service.health_check,
        service.protocol,
    )


def cluster_bytes(service: Service, name: str, build: Callable[[Service, str], Message]) -> bytes:
    """The Cluster ``build(service, subset)`` makes, named ``name``, serialized
    deterministically. ``build`` makes the shape's template the first time it is seen; the
    clusters it makes for one service must differ only in their names (subsets do)."""
    key = shape(service)
    try:
        template = _TEMPLATES[key]
    except KeyError:
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        template = _TEMPLATES[key] = _split(_serialize(build(service, ""), ""))
    if template is None:  # (bytes this module could not cut: never seen so far)
        return _serialize(build(service, ""), name)
    head, eds, tail = template
    name_bytes = name.encode()
    eds_field = string_field(3, eds + string_field(2, name_bytes))
    return string_field(1, name_bytes) + head + eds_field + tail


def _serialize(cluster: Any, name: str) -> bytes:
    cluster.name = cluster.eds_cluster_config.service_name = name
    body: bytes = cluster.SerializeToString(deterministic=True)
    return body


def _split(body: bytes) -> _Template | None:
    """Cut a nameless Cluster's bytes around field 3 (``eds_cluster_config``); None unless
    its fields are in field-number order, with no field 1 and one field 3."""
    fields: list[tuple[int, int, int, int]] = []  # (number, start, payload start, end)
    at = 0
    while at < len(body):
        start = at
        key, at = decode_varint(body, at)
        number, wire_type = key >> 3, key & 7
        payload = at
        if wire_type == 0:
            _, at = decode_varint(body, at)
        elif wire_type == 2:
            length, payload = decode_varint(body, at)
            at = payload + length
        elif wire_type == 1:
            at += 8
        elif wire_type == 5:
            at += 4
        else:
            return None
        fields.append((number, start, payload, at))
    numbers = [f[0] for f in fields]
    if at != len(body) or numbers != sorted(numbers) or 1 in numbers or numbers.count(3) != 1:
        return None
    _, start, payload, end = fields[numbers.index(3)]
    return body[:start], body[payload:end], body[end:]
