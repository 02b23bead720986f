"""A listener's ``tracing`` block -> the HTTP connection manager's tracing config. Pure.

Envoy starts or continues a trace for each request, tags it with ``x-request-id``
(generated when the caller sent none, and returned in the response so a caller can
quote it), propagates the context to the upstream (B3 headers for Zipkin,
``traceparent`` for OpenTelemetry) and reports spans to the collector service's
cluster (``<name>.<ns>``), which every HTTP listener's proxies already have.
"""

from __future__ import annotations

from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from xds_server.model.listener import Tracing
from xds_server.model.names import cluster_name

ZIPKIN = "envoy.tracers.zipkin"
OPENTELEMETRY = "envoy.tracers.opentelemetry"
ZIPKIN_SPANS_PATH = "/api/v2/spans"
"""Where a Zipkin (or Zipkin-compatible, e.g. Jaeger's) collector takes JSON spans."""


def apply_tracing(hcm: hcm_pb2.HttpConnectionManager, tracing: Tracing, listener_name: str) -> None:
    """Turn tracing and request ids on in ``hcm`` (an HTTP listener's connection manager)."""
    collector = cluster_name(tracing.service)
    provider = http_tracer_pb2.Tracing.Http()
    if tracing.provider == "zipkin":
        provider.name = ZIPKIN
        provider.typed_config.Pack(
            zipkin_pb2.ZipkinConfig(
                collector_cluster=collector,
                collector_endpoint=ZIPKIN_SPANS_PATH,
                collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
                trace_id_128bit=True,
                # One span per hop for client and server side, as Zipkin UIs expect.
                shared_span_context=wrappers_pb2.BoolValue(value=False),
            )
        )
    else:
        provider.name = OPENTELEMETRY
        provider.typed_config.Pack(
            opentelemetry_pb2.OpenTelemetryConfig(
                grpc_service=grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=collector)
                ),
                service_name=listener_name,
            )
        )
    hcm.tracing.CopyFrom(
        hcm_pb2.HttpConnectionManager.Tracing(
            random_sampling=percent_pb2.Percent(value=float(tracing.sampling_percent)),
            provider=provider,
        )
    )
    hcm.generate_request_id.value = True
    hcm.always_set_request_id_in_response = True
