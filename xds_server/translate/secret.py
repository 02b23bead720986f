"""SDS Secrets: each proxy's own certificate (``default``) and the trust bundle (``ROOTCA``).
Pure.

Envoy fetches both by name over the ADS stream (see :mod:`xds_server.translate.mtls`).
``default`` differs per identity while its name does not: the resource is named
``default`` (so the bytes are what Envoy asked for) and kept in the index under its node
cluster's key (:func:`~xds_server.resources.secrets.cluster_secret_key`); the streams map
the name to the key.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from xds_server.model.secret import Secret
from xds_server.resources.resource import Resource, make_resource
from xds_server.resources.secrets import CERT_SECRET, ROOT_SECRET
from xds_server.resources.types import SECRET

__all__ = ["bundle_secret", "registry_secret", "workload_secret"]


def workload_secret(chain_pem: bytes, key_pem: bytes) -> Resource:
    """The ``default`` Secret: a proxy's certificate chain (leaf first) and private key,
    inline (the key exists nowhere but in meshd's memory and on this stream)."""
    secret = secret_pb2.Secret(
        name=CERT_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=key_pem),
        ),
    )
    return make_resource(SECRET, CERT_SECRET, secret)


def bundle_secret(bundle_pem: bytes) -> Resource:
    """The ``ROOTCA`` Secret: the mesh's trust bundle, what peers' chains must lead to."""
    secret = secret_pb2.Secret(
        name=ROOT_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=bundle_pem)
        ),
    )
    return make_resource(SECRET, ROOT_SECRET, secret)


def registry_secret(secret: Secret) -> Resource | None:
    """The SDS Secret of a registry secret (``secret:<ns>/<name>``): a certificate and key,
    or a validation context of CA certificates; None for the shapes Envoy does not read
    over SDS (JWKS and API keys go in route filter config)."""
    out = secret_pb2.Secret(name=secret.sds_name)
    if secret.kind == "tls":
        out.tls_certificate.CopyFrom(
            common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=secret.cert_pem),
                private_key=base_pb2.DataSource(inline_bytes=secret.key_pem),
            )
        )
    elif secret.kind == "ca":
        out.validation_context.CopyFrom(
            common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=secret.ca_pem)
            )
        )
    else:
        return None
    return make_resource(SECRET, secret.sds_name, out)
