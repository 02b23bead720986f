"""Route: how requests on a listener reach services (registry ``routes/<ns>/<name>``)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Literal

import re2

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj
from xds_server.model.names import ServiceRef, check_label, parse_service_ref
from xds_server.model.route_edge import ApiKeys, Cors, Jwt, parse_api_keys, parse_cors, parse_jwt
from xds_server.model.service import MAX_MS

MatchKind = Literal["prefix", "path", "regex"]
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on policies (router filter docs).
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)
_HOST = re.compile(
    r"^(\*|(\*[-.]?)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?|[a-z0-9]([-a-z0-9.]*[a-z0-9])?\.\*)$"
)
_HEADER_NAME = re.compile(r"^:?[a-z0-9!#$%&'*+.^_`|~-]+$")
_GLOB = re.compile(r"^[a-z0-9*?\[\]!-]+$")


ENVOY_MAX_REGEX_PROGRAM_SIZE = 100
"""Envoy rejects a regex whose RE2 program is bigger (``re2.max_program_size.error_level``)."""
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def check_re2(value: str, field: str) -> None:
    """Envoy runs RE2, so validate with RE2: Python's re accepts things RE2 rejects.

    Envoy also refuses regexes over its program size limit, which would make it
    reject the whole RouteConfiguration of the listener.
    """
    try:
        compiled = re2.compile(value, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ValidationError(field, f"invalid RE2 regex: {detail}") from None
    if compiled.programsize > ENVOY_MAX_REGEX_PROGRAM_SIZE:
        raise ValidationError(
            field,
            f"regex is too complex for Envoy (RE2 program size {compiled.programsize}"
            f" > {ENVOY_MAX_REGEX_PROGRAM_SIZE})",
        )


@dataclass(frozen=True, slots=True)
class Match:
    kind: MatchKind = "prefix"
    value: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    methods: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Destination:
    service: ServiceRef
    subset: str = ""
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int
    on: tuple[str, ...] = ("5xx", "reset", "connect-failure")
    per_try_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_per_minute: int
    burst: int


@dataclass(frozen=True, slots=True)
class Mirror:
    """Shadow traffic: a copy of ``percent`` % of the route's requests goes to ``service``.

    The copy is fire-and-forget: the client only ever sees the primary's answer.
    """

    service: ServiceRef
    subset: str = ""
    percent: int = 100


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection: abort or delay a share of the route's requests (percent 0..100)."""

    abort_percent: int = 0
    abort_status: int = 0
    delay_percent: int = 0
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    """A validated Route entry."""

    namespace: str
    name: str
    listener: str
    hosts: tuple[str, ...] = ("*",)
    match: Match = Match()
    destinations: tuple[Destination, ...] = ()
    timeout_ms: int | None = None
    retries: Retries | None = None
    priority: int = 0
    rate_limit: RateLimit | None = None
    mirror: Mirror | None = None
    fault: Fault | None = None
    jwt: Jwt | None = None
    api_keys: ApiKeys | None = None
    websocket: bool = False
    cors: Cors | None = None
    created: int = 0
    """The registry revision that created the route's key (etcd's create_revision; 0:
    unknown). Across namespaces the older route keeps a contested host and match, and ties
    of specificity go to the older."""

    @property
    def key_name(self) -> str:
        """``ns/name``, used in Envoy route names and ordering ties."""
        return f"{self.namespace}/{self.name}"

    def listener_matches(self, listener_name: str) -> bool:
        return fnmatch.fnmatchcase(listener_name, self.listener)

    def specificity(self) -> tuple[int, int]:
        """Sort key inside a priority: exact path, then longest prefix, then regex."""
        rank = {"path": 0, "prefix": 1, "regex": 2}[self.match.kind]
        return (rank, -len(self.match.value))


def _match(o: Obj) -> Match:
    kinds = [k for k in ("prefix", "path", "regex") if o.has(k)]
    if len(kinds) != 1:
        raise ValidationError(o.path, "must set exactly one of prefix, path, regex")
    kind = kinds[0]
    value = o.str_(kind, required=True)
    if kind in ("prefix", "path") and not value.startswith("/"):
        raise ValidationError(o.field(kind), "must start with '/'")
    if kind == "regex":
        if not value:
            # RE2 accepts the empty pattern; Envoy's RegexMatcher requires at least 1 char.
            raise ValidationError(o.field("regex"), "must not be empty (use prefix: '/')")
        check_re2(value, o.field("regex"))
    headers = o.str_map("headers") or {}
    for name in headers:
        if not _HEADER_NAME.fullmatch(name.lower()):
            raise ValidationError(f"{o.field('headers')}.{name}", "is not a valid header name")
    methods = o.str_list("methods") or []
    for i, m in enumerate(methods):
        if m.upper() not in METHODS:
            raise ValidationError(f"{o.field('methods')}[{i}]", f"unknown HTTP method {m!r}")
    o.done()
    return Match(
        kind=kind,  # type: ignore[arg-type]
        value=value,
        headers=tuple(sorted((k.lower(), v) for k, v in headers.items())),
        methods=tuple(sorted({m.upper() for m in methods})),
    )


def _destinations(o: Obj, namespace: str) -> tuple[Destination, ...]:
    items = o.list_("destinations")
    if not items:
        raise ValidationError("destinations", "needs at least one destination")
    out = []
    for path, item in items:
        d = Obj(item, path)
        ref, subset = _service_subset(d, namespace)
        weight = d.int_("weight", 1, lo=0, hi=10000)
        d.done()
        out.append(Destination(ref, subset, weight))
    if not any(d.weight > 0 for d in out):
        raise ValidationError("destinations", "at least one weight must be greater than 0")
    return tuple(out)


def _retries(o: Obj) -> Retries:
    attempts = o.int_("attempts", lo=0, hi=100)
    on = o.str_list("on")
    if on is not None:
        if not on:
            raise ValidationError(o.field("on"), "must list at least one condition")
        for i, cond in enumerate(on):
            if cond not in RETRY_ON:
                raise ValidationError(f"{o.field('on')}[{i}]", f"unknown retry condition {cond!r}")
    per_try = o.opt_int("per_try_timeout_ms", lo=1, hi=MAX_MS)
    o.done()
    r = Retries(attempts=attempts, per_try_timeout_ms=per_try)
    return Retries(attempts, tuple(dict.fromkeys(on)), per_try) if on else r


def _rate_limit(o: Obj) -> RateLimit:
    rpm = o.int_("requests_per_minute", lo=1, hi=10**9)
    burst = o.int_("burst", rpm, lo=1, hi=10**9)
    o.done()
    return RateLimit(rpm, burst)


def _service_subset(o: Obj, namespace: str) -> tuple[ServiceRef, str]:
    """The ``service`` (resolved in ``namespace``) and optional ``subset`` a destination or
    a mirror sends to."""
    ref = parse_service_ref(o.str_("service", required=True), namespace, o.field("service"))
    subset = o.str_("subset", "")
    if subset:
        check_label(subset, o.field("subset"))
    return ref, subset


def _mirror(o: Obj, namespace: str) -> Mirror:
    ref, subset = _service_subset(o, namespace)
    percent = o.int_("percent", 100, lo=0, hi=100)
    o.done()
    return Mirror(ref, subset, percent)


def _fault(o: Obj) -> Fault:
    abort_percent = o.opt_int("abort_percent", lo=0, hi=100)
    # Envoy's FaultAbort.http_status must be in [200, 600).
    abort_status = o.opt_int("abort_status", lo=200, hi=599)
    delay_percent = o.opt_int("delay_percent", lo=0, hi=100)
    delay_ms = o.opt_int("delay_ms", lo=1, hi=MAX_MS)
    o.done()
    # Each half needs both of its fields: a share without a status (or a delay) would be a
    # guess, and a status without a share would silently do nothing.
    for (share, share_name), (what, what_name) in (
        ((abort_percent, "abort_percent"), (abort_status, "abort_status")),
        ((delay_percent, "delay_percent"), (delay_ms, "delay_ms")),
    ):
        if share is not None and what is None:
            raise ValidationError(o.field(what_name), f"is required with {share_name}")
        if what is not None and share is None:
            raise ValidationError(o.field(share_name), f"is required with {what_name}")
    if abort_percent is None and delay_percent is None:
        raise ValidationError(
            o.path, "must set abort_percent and abort_status, or delay_percent and delay_ms"
        )
    return Fault(abort_percent or 0, abort_status or 0, delay_percent or 0, delay_ms or 0)


def parse_route(namespace: str, name: str, o: Obj, *, created: int = 0) -> Route:
    """Validate a Route value for the route named by its key (``created``: the revision
    that created the key, see :attr:`Route.created`)."""
    listener = o.str_("listener", required=True)
    if not _GLOB.fullmatch(listener):
        raise ValidationError("listener", f"{listener!r} is not a listener name or glob")
    hosts = o.str_list("hosts")
    if hosts is not None and not hosts:
        raise ValidationError("hosts", "must list at least one host (or be omitted for '*')")
    norm_hosts = []
    for i, host in enumerate(hosts or ["*"]):
        h = host.lower()
        if not _HOST.fullmatch(h):
            raise ValidationError(f"hosts[{i}]", f"{host!r} is not a host name or Envoy wildcard")
        norm_hosts.append(h)
    match_obj = o.obj("match")
    match = _match(match_obj) if match_obj else Match()
    destinations = _destinations(o, namespace)
    timeout = o.opt_int("timeout_ms", lo=0, hi=MAX_MS)
    retries_obj = o.obj("retries")
    priority = o.int_("priority", 0, lo=-(2**31), hi=2**31 - 1)
    rl_obj = o.obj("rate_limit")
    mirror_obj = o.obj("mirror")
    fault_obj = o.obj("fault")
    jwt_obj = o.obj("jwt")
    keys_obj = o.obj("api_keys")
    websocket = o.bool_("websocket", False)
    cors_obj = o.obj("cors")
    route = Route(
        namespace=namespace,
        name=name,
        listener=listener,
        hosts=tuple(dict.fromkeys(norm_hosts)),
        match=match,
        destinations=destinations,
        timeout_ms=timeout,
        retries=_retries(retries_obj) if retries_obj else None,
        priority=priority,
        rate_limit=_rate_limit(rl_obj) if rl_obj else None,
        mirror=_mirror(mirror_obj, namespace) if mirror_obj else None,
        fault=_fault(fault_obj) if fault_obj else None,
        jwt=parse_jwt(jwt_obj, namespace) if jwt_obj else None,
        api_keys=parse_api_keys(keys_obj, namespace) if keys_obj else None,
        websocket=websocket,
        cors=parse_cors(cors_obj) if cors_obj else None,
        created=created,
    )
    o.done()
    return route
