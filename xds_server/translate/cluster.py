"""Service -> Envoy Clusters (one per service, one per subset). Pure."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, health_check_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from xds_server.model import HealthCheck, Service
from xds_server.model.names import cluster_name
from xds_server.resources.resource import Resource, resource_from_bytes
from xds_server.resources.types import CLUSTER
from xds_server.translate.cds_wire import cluster_bytes

_LB = {
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
    "random": cluster_pb2.Cluster.RANDOM,
    "ring_hash": cluster_pb2.Cluster.RING_HASH,
    "maglev": cluster_pb2.Cluster.MAGLEV,
}
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def ms(value: int) -> duration_pb2.Duration:
    """A protobuf Duration from integer milliseconds."""
    return duration_pb2.Duration(seconds=value // 1000, nanos=(value % 1000) * 1_000_000)


def u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def ads_source() -> config_source_pb2.ConfigSource:
    """Fetch the resource over the same ADS stream."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _circuit_breakers(service: Service) -> circuit_breaker_pb2.CircuitBreakers | None:
    cb = service.circuit_breaker
    if cb is None:
        return None
    # Unset limits stay unset: Envoy's defaults apply (the contract: never lower unless set).
    t = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    if cb.max_connections is not None:
        t.max_connections.value = cb.max_connections
    if cb.max_pending_requests is not None:
        t.max_pending_requests.value = cb.max_pending_requests
    if cb.max_requests is not None:
        t.max_requests.value = cb.max_requests
    if cb.max_retries is not None:
        t.max_retries.value = cb.max_retries
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[t])


def _outlier(service: Service) -> outlier_detection_pb2.OutlierDetection | None:
    od = service.outlier_detection
    if od is None:
        return None
    out = outlier_detection_pb2.OutlierDetection()
    if od.consecutive_5xx is not None:
        out.consecutive_5xx.value = od.consecutive_5xx
    if od.interval_ms is not None:
        out.interval.CopyFrom(ms(od.interval_ms))
    if od.base_ejection_time_ms is not None:
        out.base_ejection_time.CopyFrom(ms(od.base_ejection_time_ms))
    if od.max_ejection_percent is not None:
        out.max_ejection_percent.value = od.max_ejection_percent
    return out


def health_check(hc: HealthCheck, protocol: str) -> health_check_pb2.HealthCheck:
    """Envoy active health check for a service's ``health_check`` block."""
    out = health_check_pb2.HealthCheck(
        timeout=ms(hc.timeout_ms),
        interval=ms(hc.interval_ms),
        # Envoy checks a cluster that has not routed traffic yet only every 60 s by default,
        # and keeps that timer after traffic starts: a fresh proxy would go on sending to
        # a dead endpoint for up to a minute. Check at the configured interval throughout.
        no_traffic_interval=ms(hc.interval_ms),
        healthy_threshold=u32(hc.healthy_threshold),
        unhealthy_threshold=u32(hc.unhealthy_threshold),
    )
    if protocol == "tcp":
        out.tcp_health_check.SetInParent()
    else:
        out.http_health_check.path = hc.path
        if protocol in ("http2", "grpc"):
            out.http_health_check.codec_client_type = http_pb2.HTTP2
    return out


def build_cluster(service: Service, subset: str = "") -> cluster_pb2.Cluster:
    """The Envoy Cluster of a service, or of one of its subsets (endpoints come over EDS)."""
    name = cluster_name(service.ref, subset)
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=ads_source(), service_name=name
        ),
        lb_policy=_LB[service.load_balancer.algorithm],
    )
    if service.connect_timeout_ms is not None:
        c.connect_timeout.CopyFrom(ms(service.connect_timeout_ms))
    cbs = _circuit_breakers(service)
    if cbs is not None:
        c.circuit_breakers.CopyFrom(cbs)
    od = _outlier(service)
    if od is not None:
        c.outlier_detection.CopyFrom(od)
    if service.health_check is not None and service.health_check.every_proxy:
        # By default a few proxies probe through HDS and meshd publishes the verdict in EDS
        # (registry contract); only ``every_proxy`` puts Envoy's own active check here.
        # Either way Envoy's default panic threshold (50 %) keeps traffic flowing when
        # (almost) every endpoint is unhealthy.
        c.health_checks.append(health_check(service.health_check, service.protocol))
    if service.protocol in ("http2", "grpc"):
        opts = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        packed = any_pb2.Any()
        packed.Pack(opts)
        c.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(packed)
    return c


def service_clusters(
    service: Service, tls: base_pb2.TransportSocket | None = None
) -> list[Resource]:
    """Every Cluster resource a service yields: the service's own, then one per subset
    (encoded from a template per service shape: :mod:`xds_server.translate.cds_wire`).
    ``tls``: the transport socket that calls the service over mTLS (``translate/mtls.py``);
    its SAN check names the service, so those clusters are built whole, not from a template."""
    out = []
    for subset in ("", *service.subset_names):
        name = cluster_name(service.ref, subset)
        if tls is None:
            body = cluster_bytes(service, name, build_cluster)
        else:
            c = build_cluster(service, subset)
            c.transport_socket.CopyFrom(tls)
            body = c.SerializeToString(deterministic=True)
        out.append(resource_from_bytes(CLUSTER, name, body))
    return out
