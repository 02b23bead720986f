"""The mesh certificate authority: its root (or an operator's CA), and what it issues.

Everything here is pure: the current time comes in as an argument, keys are made with
``cryptography`` (never by hand), and nothing is read or written. Where the CA's key and
certificate live (etcd, files) is the caller's business (``adapters/etcd/ca_store.py``,
``app.py``).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xds_server.errors import ValidationError

__all__ = ["CaError", "IssuedCertificate", "MeshCA", "generate_root"]

ROOT_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=365)
# Certificates start a little in the past: a proxy whose clock lags meshd's by a few
# seconds must not reject a certificate as "not yet valid" (RFC 5280 4.1.2.5).
BACKDATE = datetime.timedelta(minutes=5)


class CaError(ValueError):
    """The CA given cannot sign: unreadable, not a CA, or key and certificate differ."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate meshd issued: its chain (leaf first, PEM), its key (PEM), validity."""

    chain_pem: bytes
    key_pem: bytes
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime

    def __repr__(self) -> str:
        # Never the key: reprs end up in logs and assertion messages.
        return f"IssuedCertificate(serial={self.serial:x}, not_after={self.not_after})"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Digital signature always; a CA also signs certificates and CRLs, a leaf also agrees
    keys (ECDH)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def generate_root(trust_domain: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    """A new self-signed ECDSA P-256 root for ``trust_domain``: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "APG Service Mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mesh CA {trust_domain}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        # SPIFFE X.509-SVID: a signing certificate carries its trust domain as URI SAN.
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


class MeshCA:
    """A CA that signs workload and server certificates.

    ``cert_pem`` may hold a chain (an operator's intermediate, then its issuers): the
    first certificate signs, and the whole chain is the trust bundle and is appended to
    every issued leaf, so a peer that trusts only the operator's root still verifies.
    """

    def __init__(self, cert_pem: bytes, key_pem: bytes, trust_domain: str) -> None:
        try:
            chain = x509.load_pem_x509_certificates(cert_pem)
        except ValueError as exc:
            raise CaError(f"CA certificate: not a PEM certificate ({exc})") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CaError(f"CA key: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError("CA key: only ECDSA keys are supported")
        cert = chain[0]
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CaError(f"CA certificate {cert.subject.rfc4514_string()!r} is not a CA")
        if cert.public_key() != key.public_key():
            raise CaError("CA certificate and CA key do not match")
        self.trust_domain = trust_domain
        self._cert = cert
        self._key = key
        self._chain = chain
        self.bundle_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        """The trust bundle (public): the CA certificate and the chain above it."""

    @property
    def certificate(self) -> x509.Certificate:
        """The signing certificate."""
        return self._cert

    def __repr__(self) -> str:
        return f"MeshCA({self._cert.subject.rfc4514_string()!r})"

    def _sign(
        self,
        key: ec.EllipticCurvePrivateKey,
        subject: x509.Name,
        sans: Sequence[x509.GeneralName],
        usages: Sequence[x509.ObjectIdentifier],
        now: datetime.datetime,
        lifetime: datetime.timedelta,
    ) -> IssuedCertificate:
        not_before = now - BACKDATE
        # Never past the CA's own expiry: a chain is only valid as long as its issuer.
        not_after = min(now + lifetime, self._cert.not_valid_after_utc)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
            .add_extension(_authority_key_id(self._cert, self._key), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.bundle_pem
        return IssuedCertificate(chain, _key_pem(key), serial, not_before, not_after)

    def issue_workload(
        self, spiffe_id: str, now: datetime.datetime, ttl: datetime.timedelta
    ) -> IssuedCertificate:
        """A workload certificate (X.509-SVID): a new P-256 key, SAN URI = ``spiffe_id``,
        valid for ``ttl``, usable as TLS client and server."""
        if not spiffe_id.startswith(f"spiffe://{self.trust_domain}/"):
            raise ValidationError("spiffe_id", f"{spiffe_id!r} is not in {self.trust_domain}")
        key = ec.generate_private_key(ec.SECP256R1())
        # SPIFFE X.509-SVID: the identity is the URI SAN; the subject carries nothing.
        return self._sign(
            key,
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "APG Service Mesh")]),
            [x509.UniformResourceIdentifier(spiffe_id)],
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            now,
            ttl,
        )

    def issue_server_certificate(
        self,
        dns_names: Sequence[str],
        ips: Sequence[str],
        now: datetime.datetime,
        lifetime: datetime.timedelta = SERVER_LIFETIME,
    ) -> tuple[bytes, bytes]:
        """meshd's own serving certificate (xDS and admin TLS): (chain PEM, key PEM) with
        DNS and IP SANs, for clients that verify meshd against the trust bundle."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        for ip in ips:
            address = ipaddress.ip_address(ip)
            if address.is_unspecified:
                continue  # 0.0.0.0 / :: is a bind address, never a name a client dials
            sans.append(x509.IPAddress(address))
        if not sans:
            raise ValidationError("server_names", "a server certificate needs a name or an IP")
        key = ec.generate_private_key(ec.SECP256R1())
        cn = dns_names[0] if dns_names else ips[0]
        issued = self._sign(
            key,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]),
            sans,
            [ExtendedKeyUsageOID.SERVER_AUTH],
            now,
            lifetime,
        )
        return issued.chain_pem, issued.key_pem

    def verifies(self, leaf_pem: bytes) -> bool:
        """Whether the CA signed this certificate (tests, diagnostics)."""
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        try:
            leaf.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def _authority_key_id(
    ca: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> x509.AuthorityKeyIdentifier:
    """The issuer key id of certificates ``ca`` signs: its own Subject Key Identifier
    when it has one. RFC 5280 (4.2.1.1) makes the AKI's keyIdentifier the issuer's SKI,
    and verifiers (OpenSSL, BoringSSL) match the two byte for byte while building the
    chain; how the SKI was derived is the CA's choice (RFC 7093: Go 1.25+ and Helm's
    ``genCA`` use a truncated SHA-256, not RFC 5280's SHA-1), so it is copied, never
    recomputed. A CA without one: the SHA-1 of its key, as RFC 5280 suggests."""
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
