"""mTLS between services: the TLS contexts of sidecar inbound listeners and of the clusters
that call an mTLS service. Pure.

Certificates never appear in these resources: Envoy fetches them over SDS on the same ADS
stream, by name (``sds_config: {ads: {}}``), so a certificate rotation changes neither a
Listener nor a Cluster (no drain, no connection pool flush). Every proxy asks for two
secrets: :data:`CERT_SECRET` (its own certificate and key, for its own identity) and
:data:`ROOT_SECRET` (the mesh's trust bundle, to verify the peer's chain).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, wrappers_pb2

from xds_server.resources.secrets import CERT_SECRET, ROOT_SECRET
from xds_server.translate.cluster import ads_source

TLS_SOCKET = "envoy.transport_sockets.tls"
"""Envoy's TLS transport socket (both directions)."""


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_source())


def _common(alpn: list[str], san: str = "") -> tls_pb2.CommonTlsContext:
    """Our certificate (``default``), the bundle (``ROOTCA``) and, when ``san`` is set, the
    one URI SAN the peer's certificate must carry."""
    validation = common_pb2.CertificateValidationContext()
    if san:
        validation.match_typed_subject_alt_names.append(
            common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.URI,
                matcher=string_pb2.StringMatcher(exact=san),
            )
        )
    return tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[_sds(CERT_SECRET)],
        # The combined form: the bundle comes over SDS, the SAN check is ours, and Envoy
        # merges the two into one validation context.
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=validation,
            validation_context_sds_secret_config=_sds(ROOT_SECRET),
        ),
        alpn_protocols=alpn,
    )


def _socket(
    context: tls_pb2.UpstreamTlsContext | tls_pb2.DownstreamTlsContext,
) -> base_pb2.TransportSocket:
    packed = any_pb2.Any()
    packed.Pack(context)
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=packed)


def downstream_socket() -> base_pb2.TransportSocket:
    """The inbound side: present our certificate, require the caller's and verify its chain
    against the bundle. Which callers may pass is authorization's to say (by the verified
    URI SAN), not the handshake's: any mesh identity completes it."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common(["h2", "http/1.1"]),
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )
    return _socket(context)


def upstream_socket(callee_spiffe_id: str, protocol: str) -> base_pb2.TransportSocket:
    """The outbound side, towards an mTLS service: present our certificate and accept only
    a peer whose certificate chains to the bundle AND carries exactly ``callee_spiffe_id``
    as URI SAN, so that no other workload of the mesh can pose as the callee."""
    alpn = ["h2"] if protocol in ("http2", "grpc") else ["http/1.1"] if protocol == "http" else []
    return _socket(tls_pb2.UpstreamTlsContext(common_tls_context=_common(alpn, callee_spiffe_id)))
