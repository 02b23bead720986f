"""Serving certificates for registry secrets in tests: a CA, leaves for DNS names with a
chosen lifetime, and the registry values that hold them. Generated per test, never stored."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate (PEM) and its key (PEM)."""

    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate

    def value(self) -> bytes:
        """The registry value of a ``{"cert", "key"}`` secret holding it."""
        return json.dumps({"cert": self.cert_pem.decode(), "key": self.key_pem.decode()}).encode()

    def ca_value(self) -> bytes:
        """The registry value of a ``{"ca"}`` secret holding it as a CA."""
        return json.dumps({"ca": self.cert_pem.decode()}).encode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def issue(
    cn: str,
    dns: tuple[str, ...] = (),
    *,
    ca: Issued | None = None,
    days: float = 30,
    is_ca: bool = False,
    not_before_days: float = -1,
) -> Issued:
    """A certificate for ``cn`` with DNS SANs ``dns``, valid ``days`` from now, signed by
    ``ca`` (self-signed when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name = ca.cert.subject if ca else name
    signer = serialization.load_pem_private_key(ca.key_pem, None) if ca else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=not_before_days))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        )
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), cert)
