"""Every golden case, embedded as static resources, passes the real ``envoy --mode validate``.

EDS clusters become STATIC clusters with the case's ClusterLoadAssignment inlined, and
each HTTP connection manager gets its RouteConfiguration inline instead of over RDS, so
Envoy checks the very resources the translator would send.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from integration.harness import envoy_binary
from tests.golden import cases, load_entries, messages, translate
from xds_server.translate import Translator

pytestmark = pytest.mark.envoy

HCM = "envoy.filters.network.http_connection_manager"
ENVOY: str | None = envoy_binary()  # ENVOY_BIN, the venv's bundled binary, or PATH


def static_bootstrap(translator: Translator) -> bootstrap_pb2.Bootstrap:
    """A bootstrap whose static resources are the translator's resources, EDS/RDS inlined."""
    clas: dict[str, endpoint_pb2.ClusterLoadAssignment] = {
        m.cluster_name: m for m in messages(translator, "endpoints")
    }
    routes: dict[str, route_pb2.RouteConfiguration] = {
        m.name: m for m in messages(translator, "routes")
    }
    boot = bootstrap_pb2.Bootstrap()
    for msg in messages(translator, "clusters"):
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(msg)
        assert cluster.type == cluster_pb2.Cluster.EDS, cluster.name
        cluster.ClearField("eds_cluster_config")
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.load_assignment.CopyFrom(clas[cluster.name])
        boot.static_resources.clusters.append(cluster)
    for msg in messages(translator, "listeners"):
        listener = listener_pb2.Listener()
        listener.CopyFrom(msg)
        if listener.HasField("api_listener"):
            continue  # for proxyless gRPC clients only; Envoy never subscribes to these
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.name != HCM:
                    continue
                hcm = hcm_pb2.HttpConnectionManager()
                assert f.typed_config.Unpack(hcm)
                assert hcm.rds.route_config_name == listener.name
                hcm.ClearField("rds")
                hcm.route_config.CopyFrom(routes[listener.name])
                f.typed_config.Pack(hcm)
        boot.static_resources.listeners.append(listener)
    return boot


def envoy_validate(configs: dict[str, Path]) -> dict[str, tuple[int, str]]:
    """Run ``envoy --mode validate`` on several files at once: name -> (exit code, output)."""
    assert ENVOY is not None, "no envoy binary found"
    procs = {
        name: subprocess.Popen(
            [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "error"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, path in configs.items()
    }
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=60)
        out[name] = (proc.returncode, text)
    return out


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
