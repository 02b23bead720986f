"""Checks that meshd's fast encoders give the message API's bytes, for one translated state.

Shared by the per-encoder tests and by the property test that runs them all on each random
registry (``tests/unit/test_wire_props.py``): one registry drawn serves every check, since
drawing it costs more than the checks.
"""

from __future__ import annotations

from tests.support.route_reference import (
    build_proxyless_route_configuration,
    build_route_configuration,
)
from xds_server.ingest.state import RegistryState
from xds_server.model import Service
from xds_server.model.names import cluster_name
from xds_server.translate.cds_wire import cluster_bytes
from xds_server.translate.cluster import build_cluster
from xds_server.translate.rds_wire import route_config_bytes


def check_clusters(service: Service) -> None:
    """Each cluster of ``service`` (one per subset) from its template, as the message API."""
    for subset in ("", *service.subset_names):
        name = cluster_name(service.ref, subset)
        expected = build_cluster(service, subset).SerializeToString(deterministic=True)
        assert cluster_bytes(service, name, build_cluster) == expected, name


def check_route_configs(state: RegistryState) -> None:
    """Each listener's route configuration, assembled, as the message API."""
    for name in state.listeners:
        attached = [r for r in state.routes.values() if r.listener_matches(name)]
        config, refs = build_route_configuration(name, attached, state.services)
        body, fast_refs = route_config_bytes(name, attached, state.services)
        assert body == config.SerializeToString(deterministic=True), name
        assert fast_refs == refs, name


def check_proxyless_route_configs(state: RegistryState) -> None:
    """The route configuration of each ``xds:///<name>.<ns>``: the same assembler, keeping
    only the virtual hosts a client of that name matches, without the local rate limit."""
    for svc in state.services.values():
        name = f"{svc.ref.name}.{svc.ref.namespace}"
        attached = [r for r in state.routes.values() if {name, "*"} & set(r.hosts)]
        config, refs = build_proxyless_route_configuration(name, attached, state.services)
        body, fast_refs = route_config_bytes(name, attached, state.services, proxyless=True)
        assert body == config.SerializeToString(deterministic=True), name
        assert fast_refs == refs, name
