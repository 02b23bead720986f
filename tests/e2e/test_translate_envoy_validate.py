"""Every golden case, embedded as static resources, passes the real ``envoy --mode validate``.

EDS clusters become STATIC clusters with the case's ClusterLoadAssignment inlined, and
each HTTP connection manager gets its RouteConfiguration inline instead of over RDS, so
Envoy checks the very resources the translator would send.
"""

from __future__ import annotations

from pathlib import Path

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from tests.support.envoy_validate import HCM, envoy_validate, static_bootstrap
from tests.support.golden import cases, load_entries, translate
from xds_server.translate import Translator


def write_bootstrap(translator: Translator, path: Path) -> Path:
    path.write_text(json_format.MessageToJson(static_bootstrap(translator)))
    return path


def test_every_golden_case_passes_envoy_validate(tmp_path: Path) -> None:
    names = cases()
    assert names, "no golden cases"
    configs = {}
    for case in names:
        _, translator, _ = translate(load_entries(case))
        configs[case] = write_bootstrap(translator, tmp_path / f"{case}.json")
    results = envoy_validate(configs)
    failed = {case: text for case, (code, text) in results.items() if code != 0}
    assert not failed, failed


def test_validate_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    """The harness can fail: a route to a cluster that does not exist is refused."""
    _, translator, _ = translate(())
    boot = static_bootstrap(translator)
    listener = boot.static_resources.listeners.add(name="broken")
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = 10000
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="broken")
    vh = hcm.route_config.virtual_hosts.add(name="all", domains=["*"])
    vh.routes.add().route.cluster = "missing"
    vh.routes[0].match.prefix = "/"
    hcm.http_filters.add(
        name="envoy.filters.http.router"
    ).typed_config.type_url = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    listener.filter_chains.add().filters.add(name=HCM).typed_config.Pack(hcm)
    path = tmp_path / "broken.json"
    path.write_text(json_format.MessageToJson(boot))
    code, text = envoy_validate({"broken": path})["broken"]
    assert code != 0
    assert "missing" in text
