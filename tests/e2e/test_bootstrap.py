"""The generated Envoy bootstrap: accepted by the real Envoy 1.40, short ADS back-off, big configs.

A throw-away ADS server (grpcio, no meshd) stands in for the control plane where a test needs
Envoy to actually connect.
"""

from __future__ import annotations

import copy
import itertools
import json
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 (Any type)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from integration.harness import envoy_binary
from tests.support.fixtures_envoy import EnvoyFactory
from tests.support.paths import REPO_ROOT
from tests.support.wait import wait_until
from xds_server.cli.bootstrap import XDS_CLUSTER, bootstrap, render

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _envoy_grpc(d: dict[str, Any]) -> dict[str, Any]:
    grpc_service: dict[str, Any] = d["dynamic_resources"]["ads_config"]["grpc_services"][0]
    return grpc_service["envoy_grpc"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_real_envoy_validates_the_bootstrap(tmp_path: Path, delta: bool, fmt: str) -> None:
    path = tmp_path / f"bootstrap.{fmt}"
    path.write_text(render(bootstrap("gw-1", "gateway", delta=delta), fmt))  # type: ignore[arg-type]
    result = _validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_real_envoy_reads_the_back_off_at_this_path(tmp_path: Path) -> None:
    # Envoy checks max >= base when it builds the ADS back-off, even in validate mode: an
    # inverted pair failing proves that retry_back_off sits where Envoy looks for it.
    d = bootstrap("gw-1", "gateway")
    _envoy_grpc(d)["retry_policy"]["retry_back_off"]["max_interval"] = "0.05s"
    path = tmp_path / "inverted.yaml"
    path.write_text(render(d))
    result = _validate(path)
    assert result.returncode != 0
    assert "max_interval must be greater than or equal to the base_interval" in result.stderr


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_bootstrap_is_a_valid_v3_proto_with_the_promised_fields(delta: bool) -> None:
    d = bootstrap("sidecar-7", "web", xds_port=18123, admin_port=9911, delta=delta)
    msg = json_format.ParseDict(d, bootstrap_pb2.Bootstrap())  # unknown fields would raise
    assert (msg.node.id, msg.node.cluster) == ("sidecar-7", "web")
    assert msg.admin.address.socket_address.port_value == 9911

    ads = msg.dynamic_resources.ads_config
    expected_type = "DELTA_GRPC" if delta else "GRPC"
    assert config_source_pb2.ApiConfigSource.ApiType.Name(ads.api_type) == expected_type
    assert ads.transport_api_version == config_source_pb2.V3
    assert ads.set_node_on_first_message_only
    envoy_grpc = ads.grpc_services[0].envoy_grpc
    assert envoy_grpc.cluster_name == XDS_CLUSTER
    back_off = envoy_grpc.retry_policy.retry_back_off
    assert back_off.base_interval.ToMilliseconds() == 100
    assert back_off.max_interval.ToMilliseconds() == 500
    assert envoy_grpc.max_receive_message_length.value >= 64 * 1024 * 1024

    for source in (msg.dynamic_resources.cds_config, msg.dynamic_resources.lds_config):
        assert source.HasField("ads")
        assert source.resource_api_version == config_source_pb2.V3
        assert not source.HasField("initial_fetch_timeout")  # Envoy's default stays

    (cluster,) = msg.static_resources.clusters
    assert cluster.name == XDS_CLUSTER
    assert cluster.type == cluster_pb2.Cluster.STATIC
    assert cluster.connect_timeout.ToMilliseconds() == 1000
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        cluster.typed_extension_protocol_options
    )
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "127.0.0.1",
        18123,
    )


def test_hostname_control_plane_is_resolved_by_dns() -> None:
    d = bootstrap("gw", "gateway", xds_host="meshd.mesh.svc")
    assert d["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"


def test_receive_limit_can_be_left_to_envoy() -> None:
    assert "max_receive_message_length" not in _envoy_grpc(
        bootstrap("gw", "gateway", max_receive_message_bytes=None)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": ""},
        {"node_cluster": ""},
        {"xds_port": 0},
        {"xds_port": 70000},
        {"admin_port": -1},
        {"max_receive_message_bytes": 0},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"node_id": "gw", "node_cluster": "gateway", **kwargs}
    with pytest.raises(ValueError):
        bootstrap(**args)


def test_render_round_trips_without_yaml_anchors() -> None:
    d = bootstrap("gw", "gateway", delta=True)
    text = render(d, "yaml")
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text) == d
    assert json.loads(render(d, "json")) == d
    original = copy.deepcopy(d)
    render(d, "yaml")
    assert d == original
    with pytest.raises(ValueError):
        render(d, "toml")  # type: ignore[arg-type]


def test_sample_gateway_bootstrap_is_current() -> None:
    sample = REPO_ROOT / "envoy" / "gateway-bootstrap.yaml"
    assert yaml.safe_load(sample.read_text()) == bootstrap("gateway", "gateway")


# --------------------------------------------------------------------------- live Envoy


def test_ads_reconnects_within_the_short_back_off(envoy_factory: EnvoyFactory) -> None:
    # A "control plane" that accepts and immediately drops every connection: Envoy must keep
    # retrying at least every max_interval (0.5 s); its default would grow toward 30 s.
    attempts: list[float] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        server.settimeout(0.1)

        def accept() -> None:
            while len(attempts) < 6:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                attempts.append(time.monotonic())
                conn.close()

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        port = server.getsockname()[1]
        envoy_factory(bootstrap("gw", "gateway", xds_port=port, admin_port=0), wait="admin")
        acceptor.join(timeout=5)
    assert len(attempts) >= 6, f"only {len(attempts)} ADS connection attempts in 5 s"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert max(gaps) < 0.9, gaps  # 0.5 s max back-off plus scheduling slack


class _AdsStub(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Answers the first CDS request (SotW or Delta) with a fixed set of clusters."""

    def __init__(self, clusters: list[cluster_pb2.Cluster]) -> None:
        self.clusters = clusters
        self.requests: queue.Queue[tuple[str, Any]] = queue.Queue()

    def StreamAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[Any], context: Any
    ) -> Iterator[Any]:
        for req in request_iterator:
            self.requests.put(("sotw", req))
            if req.type_url == CDS and not req.response_nonce:
                yield discovery_pb2.DiscoveryResponse(
                    version_info="1",
                    type_url=CDS,
                    nonce="1",
                    resources=[_any(c) for c in self.clusters],
                )

    def DeltaAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[Any], context: Any
    ) -> Iterator[Any]:
        for req in request_iterator:
            self.requests.put(("delta", req))
            if req.type_url == CDS and not req.response_nonce:
                yield discovery_pb2.DeltaDiscoveryResponse(
                    system_version_info="1",
                    type_url=CDS,
                    nonce="1",
                    resources=[
                        discovery_pb2.Resource(name=c.name, version="1", resource=_any(c))
                        for c in self.clusters
                    ],
                )


def _any(msg: Any) -> Any:
    from google.protobuf import any_pb2

    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoy_accepts_a_cds_response_above_4_mib(envoy_factory: EnvoyFactory, delta: bool) -> None:
    # Six clusters padded with 1 MiB of metadata each: one ~6 MiB message, above gRPC's usual
    # 4 MiB receive default.
    clusters = []
    for i in range(6):
        c = cluster_pb2.Cluster(name=f"big-{i}", type=cluster_pb2.Cluster.STATIC)
        c.connect_timeout.FromMilliseconds(1000)
        c.metadata.filter_metadata["pad"].update({"blob": "x" * (1024 * 1024)})
        clusters.append(c)
    stub = _AdsStub(clusters)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(stub, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        envoy = envoy_factory(
            bootstrap("gw-big", "gateway", xds_port=port, admin_port=0, delta=delta), wait="admin"
        )
        envoy.wait_for(
            lambda: envoy.stat("cluster_manager.cds.update_success") == 1,
            timeout=10,
            what="CDS update accepted",
        )
        assert envoy.stat("cluster_manager.cds.update_rejected") == 0
        assert envoy.stat("cluster_manager.active_clusters") == 1 + len(clusters)

        first_protocol, first = stub.requests.get(timeout=1)
        assert first_protocol == ("delta" if delta else "sotw")
        assert (first.node.id, first.node.cluster) == ("gw-big", "gateway")
        # set_node_on_first_message_only: later requests on the stream omit the node.
        later = wait_until(lambda: _next(stub.requests), "a second ADS request", 5, interval=0.02)
        assert not later[1].HasField("node")
    finally:
        server.stop(grace=None)


def _next(q: queue.Queue[tuple[str, Any]]) -> tuple[str, Any] | None:
    try:
        return q.get_nowait()
    except queue.Empty:
        return None
