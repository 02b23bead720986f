"""The mesh CA: a P-256 root, workload and server certificates, operator CAs checked."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from xds_server.errors import ValidationError
from xds_server.identity.ca import CaError, MeshCA, generate_root

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    cert, key = generate_root("mesh.local", NOW)
    return MeshCA(cert, key, "mesh.local")


def test_root_is_a_p256_ca(ca: MeshCA) -> None:
    cert = ca.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert b"PRIVATE KEY" not in ca.bundle_pem


def test_workload_certificate_carries_the_spiffe_id(ca: MeshCA) -> None:
    ttl = datetime.timedelta(hours=24)
    issued = ca.issue_workload("spiffe://mesh.local/ns/shop/svc/web", NOW, ttl)
    leaf = x509.load_pem_x509_certificates(issued.chain_pem)[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.local/ns/shop/svc/web"
    ]
    assert leaf.not_valid_after_utc == NOW + ttl
    assert leaf.serial_number == issued.serial
    assert ca.verifies(issued.chain_pem)
    assert b"PRIVATE KEY" in issued.key_pem and "PRIVATE" not in repr(issued)
    # The chain ends with the bundle: a peer trusting the root verifies the leaf.
    assert issued.chain_pem.endswith(ca.bundle_pem)


def test_workload_outside_the_trust_domain_is_refused(ca: MeshCA) -> None:
    with pytest.raises(ValidationError, match="spiffe_id"):
        ca.issue_workload("spiffe://evil.org/ns/a/svc/b", NOW, datetime.timedelta(hours=1))


def test_server_certificate_has_dns_and_ip_sans(ca: MeshCA) -> None:
    chain, key = ca.issue_server_certificate(["localhost", "meshd"], ["127.0.0.1", "0.0.0.0"], NOW)
    leaf = x509.load_pem_x509_certificates(chain)[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "meshd"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert b"PRIVATE KEY" in key
    assert ca.verifies(chain)


def test_operator_ca_that_is_not_a_ca_is_refused(ca: MeshCA) -> None:
    chain, key = ca.issue_server_certificate(["localhost"], [], NOW)
    with pytest.raises(CaError, match="is not a CA"):
        MeshCA(chain, key, "mesh.local")


def test_operator_ca_with_a_foreign_key_is_refused() -> None:
    cert, _ = generate_root("mesh.local", NOW)
    _, other_key = generate_root("mesh.local", NOW)
    with pytest.raises(CaError, match="do not match"):
        MeshCA(cert, other_key, "mesh.local")


def test_garbage_is_one_clear_error() -> None:
    with pytest.raises(CaError, match="CA certificate"):
        MeshCA(b"nope", b"nope", "mesh.local")


def test_intermediate_chain_is_the_bundle(ca: MeshCA) -> None:
    # An operator's intermediate signed by their root: the bundle holds the whole chain.
    inter_cert, inter_key = generate_root("mesh.local", NOW)
    inter = MeshCA(inter_cert + ca.bundle_pem, inter_key, "mesh.local")
    assert inter.bundle_pem == inter_cert + ca.bundle_pem


def test_registry_state_ignores_the_ca_keys() -> None:
    # The CA lives under <prefix>ca/ beside the entries: not an unknown kind, not a problem.
    from xds_server.ingest.registry import Changes, Entry, Event, Reset
    from xds_server.ingest.state import RegistryState

    state = RegistryState("/mesh/")
    ca_keys = ("/mesh/ca/cert", "/mesh/ca/key", "/mesh/ca/bundle")
    state.apply(Reset(5, tuple(Entry(k, b"pem", 5) for k in ca_keys)))
    assert not state.problems
    state.apply(Changes(6, (Event("put", "/mesh/ca/bundle", b"x", 6),)))
    assert not state.problems
    state.apply(Changes(7, (Event("delete", "/mesh/ca/bundle", b"", 7),)))
    state.apply(Changes(8, (Event("put", "/mesh/bogus/x", b"{}", 8),)))
    assert list(state.problems) == ["/mesh/bogus/x"]  # other unknown keys still are


def _ca_with_sha256_key_id() -> tuple[bytes, bytes, bytes]:
    """An operator CA whose Subject Key Identifier is a truncated SHA-256 of its key
    (RFC 7093 method 1), as Go 1.25+ and Helm's ``genCA`` make them: (cert, key, SKI)."""
    from cryptography.hazmat.primitives import hashes, serialization

    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(point)
    ski = digest.finalize()[:20]
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "helm CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, ski


def test_issued_certificates_name_their_issuer_by_the_cas_own_key_id() -> None:
    # Verifiers match a certificate's Authority Key Identifier to its issuer's Subject Key
    # Identifier byte for byte: recomputing it (SHA-1 of the key) from a CA that chose
    # another derivation breaks the chain ("unable to get local issuer certificate").
    cert_pem, key_pem, ski = _ca_with_sha256_key_id()
    ca = MeshCA(cert_pem, key_pem, "mesh.local")
    issued = [
        ca.issue_workload("spiffe://mesh.local/ns/shop/sa/web", NOW, datetime.timedelta(hours=1)),
    ]
    chain, _ = ca.issue_server_certificate(["localhost"], [], NOW)
    for pem in [i.chain_pem for i in issued] + [chain]:
        leaf = x509.load_pem_x509_certificates(pem)[0]
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ski
