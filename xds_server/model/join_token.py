"""Join tokens: what a proxy presents on its xDS streams to say which identity it holds.

A token reads ``<id>.<secret>``. The registry keeps, at ``<prefix>tokens/<id>``, only the
SHA-256 of the whole token, the identity it was issued for and when it expires; never the
token. Tokens are high-entropy random strings (``secrets.token_urlsafe``), so one
unsalted hash suffices: there is no dictionary to try. Ids and secrets are made by the
caller (the admin API), so this module stays pure.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import re
from dataclasses import dataclass

from xds_server.errors import ValidationError
from xds_server.model.identity import Identity, check_token_identity, parse_identity

TOKENS_DIR = "tokens/"
"""Below the registry prefix: one key per join token (not a registry entry)."""

MIN_TTL_S = 5.0
"""The shortest lifetime a token may be given."""

DEFAULT_TTL_S = 24 * 3600.0

_TTL = re.compile(r"^([0-9]+)([smh])$")
_ID = re.compile(r"^[0-9a-f]{12}$")
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_ttl(text: str, field: str = "ttl") -> float:
    """``30s``, ``10m``, ``24h`` as seconds; at least :data:`MIN_TTL_S`."""
    m = _TTL.fullmatch(text.strip())
    if m is None:
        raise ValidationError(field, f"{text!r} is not a duration like 30s, 10m or 24h")
    seconds = float(int(m.group(1)) * _UNITS[m.group(2)])
    if seconds < MIN_TTL_S:
        raise ValidationError(field, f"{text!r} is shorter than {MIN_TTL_S:g}s")
    return seconds


def token_key(prefix: str, token_id: str) -> str:
    """``<prefix>tokens/<id>``."""
    return f"{prefix}{TOKENS_DIR}{token_id}"


def check_token_id(token_id: str, field: str = "id") -> str:
    """Token ids are 12 lowercase hex digits."""
    if not _ID.fullmatch(token_id):
        raise ValidationError(field, f"{token_id!r} is not a token id (12 hex digits)")
    return token_id


def digest(token: str) -> str:
    """The stored form of a token: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def token_id_of(token: str) -> str | None:
    """The id part of a presented token (None: it has none)."""
    token_id, dot, secret = token.partition(".")
    return token_id if dot and secret and _ID.fullmatch(token_id) else None


def rfc3339(at: float) -> str:
    """Seconds since the epoch as ``2026-01-02T03:04:05Z``."""
    moment = datetime.datetime.fromtimestamp(int(at), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class JoinToken:
    """One join token as the registry keeps it: no secret, only its hash."""

    id: str
    hash: str
    identity: Identity
    expires: float
    """Seconds since the epoch."""

    def matches(self, token: str) -> bool:
        """``token`` is this one (compare_digest: the time taken tells nothing)."""
        return hmac.compare_digest(self.hash.encode(), digest(token).encode())

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def encode(self) -> bytes:
        """The registry value."""
        doc = {
            "hash": self.hash,
            "identity": self.identity.short(),
            "expires": rfc3339(self.expires),
        }
        return json.dumps(doc, sort_keys=True).encode()


def issue(token_id: str, secret: str, identity: Identity, expires: float) -> tuple[JoinToken, str]:
    """A new token from a random id and secret: the record to store and the token to give
    out once."""
    token = f"{check_token_id(token_id)}.{secret}"
    return JoinToken(token_id, digest(token), identity, expires), token


def decode(token_id: str, value: bytes) -> JoinToken:
    """A stored token; ValidationError naming the field when the value is not one."""
    check_token_id(token_id, "key")
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("", "not a JSON object") from None
    if not isinstance(doc, dict):
        raise ValidationError("", "not a JSON object")
    unknown = sorted(set(doc) - {"hash", "identity", "expires"})
    if unknown:
        raise ValidationError(unknown[0], "unknown field")
    hashed = doc.get("hash")
    if not isinstance(hashed, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", hashed):
        raise ValidationError("hash", "must be 'sha256:' and 64 hex digits")
    identity = doc.get("identity")
    if not isinstance(identity, str):
        raise ValidationError("identity", "must be a string")
    who = check_token_identity(parse_identity(identity, "identity"), "identity")
    expires = doc.get("expires")
    if not isinstance(expires, str):
        raise ValidationError("expires", "must be an RFC 3339 time")
    try:
        moment = datetime.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ValidationError("expires", f"{expires!r} is not like 2026-01-02T03:04:05Z") from None
    at = moment.replace(tzinfo=datetime.UTC).timestamp()
    return JoinToken(token_id, hashed, who, at)
