"""Names built and read back by one module: registry keys and Envoy cluster names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xds_server.model import KeyRef, ServiceRef, parse_key
from xds_server.model.names import (
    cluster_name,
    cluster_subset,
    endpoint_key,
    entry_key,
    parse_cluster_name,
    registry_key,
    service_host,
    service_key,
    status_error_key,
)

PREFIX = "/mesh/"
labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
endpoint_ids = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._:-]{0,30}[A-Za-z0-9])?", fullmatch=True)


@st.composite
def key_refs(draw: st.DrawFn) -> KeyRef:
    kind = draw(st.sampled_from(["services", "endpoints", "routes", "listeners"]))
    if kind == "listeners":
        return KeyRef("listeners", "", draw(labels))
    if kind == "endpoints":
        return KeyRef("endpoints", draw(labels), draw(endpoint_ids), draw(labels))
    return KeyRef(kind, draw(labels), draw(labels))  # type: ignore[arg-type]


@given(key_refs(), st.sampled_from(["/mesh/", "/other/prefix/", "/"]))
def test_registry_keys_round_trip(ref: KeyRef, prefix: str) -> None:
    assert parse_key(registry_key(prefix, ref), prefix) == ref


@given(labels, labels, endpoint_ids)
def test_service_and_endpoint_keys_round_trip(ns: str, name: str, endpoint_id: str) -> None:
    svc = ServiceRef(ns, name)
    assert parse_key(service_key(PREFIX, svc), PREFIX) == KeyRef("services", ns, name)
    parsed = parse_key(endpoint_key(PREFIX, svc, endpoint_id), PREFIX)
    assert parsed == KeyRef("endpoints", ns, endpoint_id, name)
    assert parsed.service_ref == svc
    assert entry_key(PREFIX, "services", f"{ns}/{name}") == service_key(PREFIX, svc)


@given(labels, labels, st.one_of(st.just(""), labels))
def test_cluster_names_round_trip(ns: str, name: str, subset: str) -> None:
    ref = ServiceRef(ns, name)
    built = cluster_name(ref, subset)
    parsed = parse_cluster_name(built)
    assert parsed is not None
    assert (parsed.service, parsed.subset) == (ref, subset)
    assert cluster_subset(built) == subset
    assert built.partition("|")[0] == service_host(ref)


@pytest.mark.parametrize("cluster", ["xds_cluster", ".default", "web.", "a.b.c", "a.b.c|v1"])
def test_names_of_other_clusters_are_not_ours(cluster: str) -> None:
    assert parse_cluster_name(cluster) is None


def test_status_error_key_keeps_the_path_of_the_key() -> None:
    key = service_key(PREFIX, ServiceRef("default", "web"))
    assert status_error_key(key, PREFIX) == "/mesh/status/errors/services/default/web"
