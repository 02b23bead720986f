"""Secret: key material a namespace keeps in the registry (``secrets/<ns>/<name>``).

Four shapes, one per use:

* ``{"cert": PEM, "key": PEM}``: a serving certificate (chain, leaf first) and its private
  key, for a listener's ``tls.certificates``;
* ``{"ca": PEM}``: CA certificates, for a listener's ``tls.client_ca``;
* ``{"jwks": {...}}``: a JSON Web Key Set, for a route's ``jwt`` (read by route auth);
* ``{"keys": {"client-name": "key", ...}}``: API keys, for a route's ``api_keys``.

Validated here: the PEM parses, the key matches the certificate, no certificate has
expired. What a reader may see of a secret is :meth:`Secret.summary` (subject, SANs,
expiry): the PEM and keys never leave meshd except over SDS (or, for API keys, in the
filter config of the proxies whose routes use them).
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj
from xds_server.model.names import check_label

__all__ = [
    "EXPIRY_WARNING_S",
    "SECRET_SDS_PREFIX",
    "CertInfo",
    "Secret",
    "SecretKind",
    "parse_secret",
    "parse_secret_ref",
    "secret_sds_name",
]

SecretKind = Literal["tls", "ca", "jwks", "keys"]

EXPIRY_WARNING_S = 7 * 24 * 3600
"""A certificate that expires within this many seconds is in force with a warning."""

SECRET_SDS_PREFIX = "secret:"
"""SDS names of registry secrets start with this (``secret:<ns>/<name>``): it cannot be
``default`` or ``ROOTCA`` (the mesh's own) and holds no ``~`` (the cache's separator)."""

MAX_PEM_CHARS = 64 * 1024
"""A PEM field longer than this is refused (a chain of a few certificates is far less)."""
MAX_API_KEYS = 1000
"""API keys one secret may hold."""


def secret_sds_name(namespace: str, name: str) -> str:
    """The SDS resource name of registry secret ``namespace/name``."""
    return f"{SECRET_SDS_PREFIX}{namespace}/{name}"


def parse_secret_ref(value: str, field_: str) -> tuple[str, str]:
    """``ns/name`` (both DNS labels) -> (namespace, name). Secret references always name
    the namespace: listeners have none of their own."""
    ns, sep, name = value.partition("/")
    if not sep or "/" in name:
        raise ValidationError(field_, f"{value!r} must be 'namespace/name' of a secret")
    return check_label(ns, field_), check_label(name, field_)


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What may be shown of a certificate: never the key, nor the PEM."""

    subject: str
    dns_names: tuple[str, ...]
    sans: tuple[str, ...]
    """Every SAN as ``DNS:x``, ``IP:x``, ``URI:x``, ``email:x``."""
    not_after: int
    """Expiry, in seconds since the epoch (UTC)."""

    def expires_in(self, now: float | None = None) -> float:
        """Seconds until expiry (negative: expired)."""
        return self.not_after - (time.time() if now is None else now)


@dataclass(frozen=True, slots=True)
class Secret:
    """A validated Secret entry. Its private parts are left out of ``repr``."""

    namespace: str
    name: str
    kind: SecretKind
    cert_pem: bytes = field(default=b"", repr=False)
    """``tls``: the certificate chain, leaf first."""
    key_pem: bytes = field(default=b"", repr=False)
    """``tls``: the private key."""
    ca_pem: bytes = field(default=b"", repr=False)
    """``ca``: the CA certificates."""
    jwks_json: str = field(default="", repr=False)
    """``jwks``: the key set as canonical JSON (sorted keys, no spaces)."""
    api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """``keys``: (client name, key), sorted by client name."""
    info: CertInfo | None = None
    """``tls``: the leaf; ``ca``: the first certificate (the one expiring first)."""

    @property
    def ref(self) -> str:
        """``ns/name``: how listeners and routes name it."""
        return f"{self.namespace}/{self.name}"

    @property
    def sds_name(self) -> str:
        """The SDS resource name it is served under (``tls`` and ``ca`` only)."""
        return secret_sds_name(self.namespace, self.name)

    def summary(self) -> dict[str, Any]:
        """What the admin API and ``meshctl`` show of it: its kind, the certificate's
        subject, SANs and expiry, how many keys; never key material."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.info is not None:
            expiry = datetime.datetime.fromtimestamp(self.info.not_after, datetime.UTC)
            out.update(
                subject=self.info.subject,
                sans=list(self.info.sans),
                not_after=expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        if self.kind == "jwks":
            out["keys"] = len(json.loads(self.jwks_json).get("keys", []))
        if self.kind == "keys":
            out["clients"] = [client for client, _ in self.api_keys]
        return out

    def expiry_warning(self, now: float | None = None) -> str | None:
        """Why it deserves a warning (its certificate expires within 7 days), if it does."""
        if self.info is None:
            return None
        left = self.info.expires_in(now)
        if left >= EXPIRY_WARNING_S:
            return None
        hours = max(0, int(left // 3600))
        return f"warning: certificate expires within 7 days (in {hours} h)"


def _pem(o: Obj, name: str) -> bytes:
    text = o.str_(name, required=True)
    if len(text) > MAX_PEM_CHARS:
        raise ValidationError(o.field(name), f"is longer than {MAX_PEM_CHARS} characters")
    return text.encode()


def _certs(o: Obj, name: str, raw: bytes, now: float) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError as exc:
        raise ValidationError(o.field(name), f"is not PEM certificates ({exc})") from None
    for i, cert in enumerate(certs):
        after = cert.not_valid_after_utc.timestamp()
        if after <= now:
            which = "certificate" if i == 0 else f"certificate {i} of the chain"
            stamp = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
            raise ValidationError(o.field(name), f"{which} expired at {stamp}")
    return certs


def _info(cert: x509.Certificate, not_after: int) -> CertInfo:
    dns: list[str] = []
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        ext = None
    if ext is not None:
        for gn in ext:
            if isinstance(gn, x509.DNSName):
                dns.append(gn.value)
                sans.append(f"DNS:{gn.value}")
            elif isinstance(gn, x509.IPAddress):
                sans.append(f"IP:{gn.value}")
            elif isinstance(gn, x509.UniformResourceIdentifier):
                sans.append(f"URI:{gn.value}")
            elif isinstance(gn, x509.RFC822Name):
                sans.append(f"email:{gn.value}")
    return CertInfo(cert.subject.rfc4514_string(), tuple(dns), tuple(sans), not_after)


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def parse_secret(namespace: str, name: str, o: Obj, now: float | None = None) -> Secret:
    """Validate a Secret value (one of the four shapes) for ``secrets/<namespace>/<name>``."""
    t = time.time() if now is None else now
    shapes = [k for k in ("cert", "ca", "jwks", "keys") if o.has(k)]
    if len(shapes) != 1:
        raise ValidationError(
            "", 'must hold exactly one of {"cert","key"}, {"ca"}, {"jwks"} or {"keys"}'
        )
    shape = shapes[0]
    if shape == "cert":
        cert_pem, key_pem = _pem(o, "cert"), _pem(o, "key")
        certs = _certs(o, "cert", cert_pem, t)
        try:
            key: PrivateKeyTypes = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            reason = f"is not an unencrypted PEM key ({exc})"
            raise ValidationError(o.field("key"), reason) from None
        if _spki(key.public_key()) != _spki(certs[0].public_key()):
            raise ValidationError(o.field("key"), "does not match the certificate (cert's leaf)")
        o.done()
        leaf = certs[0]
        info = _info(leaf, int(min(c.not_valid_after_utc.timestamp() for c in certs)))
        return Secret(namespace, name, "tls", cert_pem=cert_pem, key_pem=key_pem, info=info)
    if shape == "ca":
        ca_pem = _pem(o, "ca")
        certs = _certs(o, "ca", ca_pem, t)
        o.done()
        first = min(certs, key=lambda c: c.not_valid_after_utc)
        info = _info(first, int(first.not_valid_after_utc.timestamp()))
        return Secret(namespace, name, "ca", ca_pem=ca_pem, info=info)
    if shape == "jwks":
        jwks = o.obj("jwks")
        assert jwks is not None
        keys = jwks.list_("keys")
        if not keys:
            raise ValidationError(jwks.field("keys"), "must list at least one key")
        for path, item in keys:
            k = Obj(item, path)
            k.str_("kty", required=True)
            for _ in k.items():  # (the other JWK members are Envoy's to read)
                pass
        for _ in jwks.items():
            pass
        o.done()
        canonical = json.dumps(_raw(o, "jwks"), sort_keys=True, separators=(",", ":"))
        return Secret(namespace, name, "jwks", jwks_json=canonical)
    api = o.str_map("keys")
    assert api is not None
    if not api:
        raise ValidationError(o.field("keys"), "must hold at least one client's key")
    if len(api) > MAX_API_KEYS:
        raise ValidationError(o.field("keys"), f"holds more than {MAX_API_KEYS} keys")
    seen: dict[str, str] = {}
    for client, value in sorted(api.items()):
        where = f"{o.field('keys')}.{client}"
        if not client or not value:
            raise ValidationError(where, "client name and key must not be empty")
        if value in seen:
            raise ValidationError(where, f"is the same key as {seen[value]!r}'s")
        seen[value] = client
    o.done()
    return Secret(namespace, name, "keys", api_keys=tuple(sorted(api.items())))


def _raw(o: Obj, name: str) -> Any:
    """The raw JSON value of ``o``'s field ``name`` (already validated)."""
    return dict(o.items())[name]
