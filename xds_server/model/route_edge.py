"""A route's edge settings: ``jwt``, ``api_keys`` and ``cors`` (docs/registry.md, Routes).

Validated like every other field: unknown fields are errors with a "did you mean", every
error names its field. A secret a route names (``jwt.jwks.secret``, ``api_keys.secret``) is
``ns/name`` or ``name`` in the route's own namespace; whether it exists, and that it is the
route's namespace's, is a reference rule (:mod:`xds_server.ingest.refs`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj, join
from xds_server.model.names import check_label

_HEADER = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
"""An HTTP header name (RFC 9110 token, lowercase); no pseudo-headers."""
_ORIGIN = re.compile(r"^https?://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$")
_CLAIM = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
_KEY_TYPES = ("RSA", "EC", "OKP", "oct")
MAX_CORS_AGE_S = 86_400 * 365
"""A year: browsers cap preflight caching far below this anyway."""
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass(frozen=True, slots=True)
class Jwt:
    """Who may call the route: a JWT of ``issuer`` for one of ``audiences`` (empty: any),
    verified with an inline JWKS (canonical JSON) or one from secret ``jwks_secret``."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks_inline: str = ""
    jwks_secret: str = ""
    forward_claims: tuple[tuple[str, str], ...] = ()
    """(claim, header) pairs: each claim of a valid token reaches the backend in a header."""


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """API keys in request header ``header``, the (client name -> key) map from secret
    ``secret``; the client's name reaches the backend in ``x-client-name``."""

    secret: str
    header: str = "x-api-key"


@dataclass(frozen=True, slots=True)
class Cors:
    """Envoy answers CORS preflights of the route and decorates its answers."""

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age_s: int | None = None
    allow_credentials: bool = False


def secret_ref(value: str, own_namespace: str, field: str) -> str:
    """``ns/name`` of a secret named ``ns/name`` or ``name`` (in ``own_namespace``)."""
    if value.count("/") > 1:
        raise ValidationError(field, f"{value!r} must be 'name' or 'namespace/name'")
    ns, _, name = value.rpartition("/")
    ns = ns or own_namespace
    check_label(ns, field)
    check_label(name, field)
    return f"{ns}/{name}"


def _header(value: str, field: str) -> str:
    header = value.lower()
    if not _HEADER.fullmatch(header):
        raise ValidationError(field, f"{value!r} is not a valid header name")
    if header in RESERVED_HEADERS:
        raise ValidationError(field, f"{value!r} is a reserved header")
    return header


def check_jwks(o: Obj) -> str:
    """A JWKS (``{"keys": [{"kty": ...}, ...]}``) as canonical JSON, as Envoy reads it."""
    items = o.list_("keys")
    if not items:
        raise ValidationError(o.field("keys"), "must list at least one key")
    for path, item in items:
        key = Obj(item, path)
        kty = key.str_("kty", required=True)
        if kty not in _KEY_TYPES:
            raise ValidationError(join(path, "kty"), f"unknown key type {kty!r}")
        list(key.items())  # (the other members depend on kty: Envoy's parser judges them)
    return json.dumps(dict(o.items()), sort_keys=True, separators=(",", ":"))


def parse_jwt(o: Obj, namespace: str) -> Jwt:
    issuer = o.str_("issuer", required=True)
    if not issuer:
        raise ValidationError(o.field("issuer"), "must not be empty")
    audiences = o.str_list("audiences") or []
    for i, aud in enumerate(audiences):
        if not aud:
            raise ValidationError(f"{o.field('audiences')}[{i}]", "must not be empty")
    jwks = o.obj("jwks")
    if jwks is None:
        raise ValidationError(o.field("jwks"), "is required ({'inline': JWKS} or {'secret': ...})")
    kinds = [k for k in ("inline", "secret") if jwks.has(k)]
    if len(kinds) != 1:
        raise ValidationError(jwks.path, "must set exactly one of inline, secret")
    inline = secret = ""
    if kinds[0] == "inline":
        inline_obj = jwks.obj("inline")
        if inline_obj is None:
            raise ValidationError(jwks.field("inline"), "must be a JWKS object")
        inline = check_jwks(inline_obj)
    else:
        secret = secret_ref(jwks.str_("secret", required=True), namespace, jwks.field("secret"))
    jwks.done()
    claims = o.str_map("forward_claims") or {}
    pairs = []
    headers: set[str] = set()
    for claim, header in claims.items():
        field = join(o.field("forward_claims"), claim)
        if not _CLAIM.fullmatch(claim):
            raise ValidationError(field, f"{claim!r} is not a claim name")
        h = _header(header, field)
        if h in headers:
            raise ValidationError(field, f"header {h!r} is already forwarded another claim")
        headers.add(h)
        pairs.append((claim, h))
    o.done()
    return Jwt(issuer, tuple(dict.fromkeys(audiences)), inline, secret, tuple(sorted(pairs)))


def parse_api_keys(o: Obj, namespace: str) -> ApiKeys:
    raw = o.opt_str("secret")
    header = _header(o.str_("header", "x-api-key"), o.field("header"))
    o.done()  # (first: a misspelt secret gets its "did you mean")
    if raw is None:
        raise ValidationError(o.field("secret"), "is required (the secret holding the keys)")
    return ApiKeys(secret_ref(raw, namespace, o.field("secret")), header)


def _tokens(o: Obj, name: str, *, upper: bool = False) -> tuple[str, ...]:
    values = o.str_list(name) or []
    out = []
    for i, value in enumerate(values):
        field = f"{o.field(name)}[{i}]"
        if upper:
            if value.upper() not in _CORS_METHODS:
                raise ValidationError(field, f"unknown HTTP method {value!r}")
            out.append(value.upper())
        elif value == "*":
            out.append(value)
        else:
            out.append(_header(value, field))
    return tuple(dict.fromkeys(out))


def parse_cors(o: Obj) -> Cors:
    origins = o.str_list("allow_origins") or []
    for i, origin in enumerate(origins):
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValidationError(
                f"{o.field('allow_origins')}[{i}]",
                f"{origin!r} is not an origin (scheme://host[:port], lowercase) or '*'",
            )
    cors = Cors(
        allow_origins=tuple(dict.fromkeys(origins)),
        allow_methods=_tokens(o, "allow_methods", upper=True),
        allow_headers=_tokens(o, "allow_headers"),
        expose_headers=_tokens(o, "expose_headers"),
        max_age_s=o.opt_int("max_age_s", lo=0, hi=MAX_CORS_AGE_S),
        allow_credentials=o.bool_("allow_credentials", False),
    )
    o.done()  # (before the check below: a misspelt allow_origins gets its "did you mean")
    if not origins:
        raise ValidationError(o.field("allow_origins"), "must list at least one origin (or '*')")
    return cors
