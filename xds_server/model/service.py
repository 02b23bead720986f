"""Service: how the mesh connects to one logical upstream (registry ``services/<ns>/<name>``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj, fast_decode
from xds_server.model.names import ServiceRef, check_label, parse_service_ref
from xds_server.model.namespace import MtlsMode, mtls_mode

Protocol = Literal["http", "http2", "grpc", "tcp"]
PROTOCOLS: tuple[Protocol, ...] = ("http", "http2", "grpc", "tcp")
Algorithm = Literal["round_robin", "least_request", "random", "ring_hash", "maglev"]
ALGORITHMS: tuple[Algorithm, ...] = (
    "round_robin",
    "least_request",
    "random",
    "ring_hash",
    "maglev",
)
HASHING: tuple[Algorithm, ...] = ("ring_hash", "maglev")

MAX_MS = 365 * 24 * 3600 * 1000
"""Upper bound for any ``*_ms`` duration: a year; more is certainly a typo."""

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
"""An HTTP token (RFC 9110): what header and cookie names are made of."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class SessionAffinity:
    """Hash key for ring_hash/maglev: a cookie (with TTL), a header, or the source IP."""

    kind: Literal["cookie", "header", "source_ip"]
    name: str = ""
    ttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    algorithm: Algorithm = "round_robin"
    session_affinity: SessionAffinity | None = None


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Limits; ``None`` keeps Envoy's default for that limit."""

    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int | None = None
    interval_ms: int | None = None
    base_ejection_time_ms: int | None = None
    max_ejection_percent: int | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active HTTP health check (``tcp`` services: a TCP connect check).

    By default a few proxies run it through HDS and meshd publishes the verdict in
    EDS; ``every_proxy`` makes every proxy's cluster run it itself.
    """

    path: str = "/health"
    interval_ms: int = 5000
    timeout_ms: int = 1000
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    every_proxy: bool = False


@dataclass(frozen=True, slots=True)
class Scaling:
    """Scaling advice input: the request rate one endpoint should carry."""

    target_rps_per_endpoint: int


@dataclass(frozen=True, slots=True)
class Sidecar:
    """The service's sidecars take inbound traffic on ``inbound_port`` (where its endpoints
    are registered) and forward it to the application on ``127.0.0.1:app_port``."""

    inbound_port: int
    app_port: int


@dataclass(frozen=True, slots=True)
class Upstreams:
    """What a service's sidecars call (``upstreams``): single services and whole
    namespaces. Its sidecars are sent only these services' default hosts and what the
    routes on their listeners send to (translate/upstreams.py). A service named here need
    not exist yet: it is sent once it does."""

    services: frozenset[ServiceRef] = frozenset()
    namespaces: frozenset[str] = frozenset()
    """Namespaces written ``ns/*``: every service in them, now and later."""

    def covers(self, ref: ServiceRef) -> bool:
        """Whether service ``ref`` is one of these upstreams."""
        return ref in self.services or ref.namespace in self.namespaces

    @property
    def entries(self) -> tuple[str, ...]:
        """The declaration written back in its canonical form (sorted ``ns/name`` and
        ``ns/*``; a service of a namespace also written whole is left out)."""
        named = (str(r) for r in self.services if r.namespace not in self.namespaces)
        return tuple(sorted([*named, *(f"{ns}/*" for ns in self.namespaces)]))

    @property
    def variant(self) -> str:
        """A short stable id of the declaration: sidecars that declare the same upstreams
        share the route configurations cut to them (and their bytes)."""
        text = "\n".join(self.entries)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Service:
    """A validated Service entry."""

    ref: ServiceRef
    protocol: Protocol = "http"
    port: int | None = None
    connect_timeout_ms: int | None = None
    load_balancer: LoadBalancer = LoadBalancer()
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None
    scaling: Scaling | None = None
    subsets: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    """Subset name -> label selector, both sorted for a deterministic order."""
    mtls: MtlsMode | None = None
    """The service's own mTLS mode; None: its namespace's (see ``effective_mtls``)."""
    sidecar: Sidecar | None = None
    upstreams: Upstreams | None = None
    """What its sidecars call; None: everything (every service's default host)."""

    @property
    def subset_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.subsets)

    def selector(self, subset: str) -> tuple[tuple[str, str], ...] | None:
        for name, selector in self.subsets:
            if name == subset:
                return selector
        return None


def _affinity(o: Obj) -> SessionAffinity:
    present = [k for k in ("cookie", "header", "source_ip") if o.has(k)]
    if len(present) != 1:
        raise ValidationError(o.path, "must set exactly one of cookie, header, source_ip")
    if present[0] == "cookie":
        name = o.str_("cookie", required=True)
        if not _TOKEN.fullmatch(name):
            raise ValidationError(o.field("cookie"), f"{name!r} is not a valid cookie name")
        ttl = o.int_("ttl_ms", 0, lo=0, hi=MAX_MS)
        o.done()
        return SessionAffinity("cookie", name, ttl)
    if present[0] == "header":
        name = o.str_("header", required=True).lower()
        if not _TOKEN.fullmatch(name):
            raise ValidationError(o.field("header"), f"{name!r} is not a valid header name")
        o.done()
        return SessionAffinity("header", name)
    if not o.bool_("source_ip", False):
        raise ValidationError(o.field("source_ip"), "must be true (omit session_affinity instead)")
    o.done()
    return SessionAffinity("source_ip")


def _load_balancer(o: Obj) -> LoadBalancer:
    algorithm = o.str_("algorithm", "round_robin")
    if algorithm not in ALGORITHMS:
        raise ValidationError(o.field("algorithm"), f"must be one of {', '.join(ALGORITHMS)}")
    sa_obj = o.obj("session_affinity")
    affinity = _affinity(sa_obj) if sa_obj else None
    if affinity and algorithm not in HASHING:
        # The contract: an error, never a silent switch of algorithm.
        raise ValidationError(
            o.field("session_affinity"), f"needs algorithm ring_hash or maglev, not {algorithm}"
        )
    o.done()
    return LoadBalancer(algorithm, affinity)  # type: ignore[arg-type]


def _circuit_breaker(o: Obj) -> CircuitBreaker:
    cb = CircuitBreaker(
        max_connections=o.opt_int("max_connections", lo=1, hi=2**31 - 1),
        max_pending_requests=o.opt_int("max_pending_requests", lo=1, hi=2**31 - 1),
        max_requests=o.opt_int("max_requests", lo=1, hi=2**31 - 1),
        max_retries=o.opt_int("max_retries", lo=0, hi=2**31 - 1),
    )
    o.done()
    return cb


def _outlier(o: Obj) -> OutlierDetection:
    od = OutlierDetection(
        consecutive_5xx=o.opt_int("consecutive_5xx", lo=1, hi=1000),
        interval_ms=o.opt_int("interval_ms", lo=1, hi=MAX_MS),
        base_ejection_time_ms=o.opt_int("base_ejection_time_ms", lo=1, hi=MAX_MS),
        max_ejection_percent=o.opt_int("max_ejection_percent", lo=0, hi=100),
    )
    o.done()
    return od


def _health_check(o: Obj) -> HealthCheck:
    path = o.str_("path", "/health")
    if not path.startswith("/"):
        raise ValidationError(o.field("path"), "must start with '/'")
    if _CONTROL.search(path):
        raise ValidationError(o.field("path"), "must not contain control characters")
    hc = HealthCheck(
        path=path,
        interval_ms=o.int_("interval_ms", 5000, lo=1, hi=MAX_MS),
        timeout_ms=o.int_("timeout_ms", 1000, lo=1, hi=MAX_MS),
        healthy_threshold=o.int_("healthy_threshold", 2, lo=1, hi=1000),
        unhealthy_threshold=o.int_("unhealthy_threshold", 3, lo=1, hi=1000),
        every_proxy=o.bool_("every_proxy", False),
    )
    o.done()
    return hc


def _scaling(o: Obj) -> Scaling:
    scaling = Scaling(o.int_("target_rps_per_endpoint", lo=1, hi=10**9))
    o.done()
    return scaling


MAX_SUBSETS = 64
"""Subsets one service may declare. Each subset is an Envoy cluster on every proxy that
sees the service, so a service with thousands of them costs every gateway that much
config and memory; 64 versions or shards of one service is far more than a rollout uses."""


def _subsets(o: Obj) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    count = len(list(o.items()))
    if count > MAX_SUBSETS:
        raise ValidationError(o.path, f"has {count} subsets, at most {MAX_SUBSETS}")
    out = []
    for name, selector in o.items():
        field = o.field(name)
        check_label(name, field)
        sel = Obj(selector, field)  # a selector is a flat label map
        pairs = []
        for key, value in sel.items():
            if not isinstance(value, str):
                raise ValidationError(sel.field(key), "label values must be strings")
            pairs.append((key, value))
        if not pairs:
            raise ValidationError(field, "a subset selector needs at least one label")
        out.append((name, tuple(sorted(pairs))))
    return tuple(sorted(out))


def _sidecar(o: Obj) -> Sidecar:
    sidecar = Sidecar(
        inbound_port=o.int_("inbound_port", lo=1, hi=65535),
        app_port=o.int_("app_port", lo=1, hi=65535),
    )
    if sidecar.inbound_port == sidecar.app_port:
        # Both are ports of the same host: the listener would forward to itself.
        raise ValidationError(
            o.field("app_port"), f"must differ from inbound_port ({sidecar.inbound_port})"
        )
    o.done()
    return sidecar


MAX_UPSTREAMS = 1024
"""Entries one service's ``upstreams`` may hold (``ns/*`` counts one, whatever the
namespace holds): far more than a service calls; a longer list is a generated mistake."""


def _upstreams(o: Obj, own_namespace: str) -> Upstreams | None:
    items = o.list_("upstreams")
    if items is None:
        return None
    if len(items) > MAX_UPSTREAMS:
        raise ValidationError(
            o.field("upstreams"), f"has {len(items)} entries, at most {MAX_UPSTREAMS}"
        )
    services: set[ServiceRef] = set()
    namespaces: set[str] = set()
    for path, item in items:
        if not isinstance(item, str):
            raise ValidationError(
                path, f"must be a string 'ns/name', 'name' or 'ns/*', not {item!r}"
            )
        ns, slash, name = item.rpartition("/")
        if name == "*" and slash and "*" not in ns:
            check_label(ns, path)
            namespaces.add(ns)
            continue
        if "*" in item:
            # Only a whole namespace has a wildcard form: a glob over names would match
            # services nobody meant (and change as they come and go).
            raise ValidationError(
                path, f"{item!r}: the only wildcard is 'ns/*' (a whole namespace)"
            )
        services.add(parse_service_ref(item, own_namespace, path))
    return Upstreams(frozenset(services), frozenset(namespaces))


def parse_service(ref: ServiceRef, o: Obj) -> Service:
    """Validate a Service value (already decoded) for the service named by its key."""
    protocol = o.str_("protocol", "http")
    if protocol not in PROTOCOLS:
        raise ValidationError("protocol", f"must be one of {', '.join(PROTOCOLS)}")
    port = o.opt_int("port", lo=1, hi=65535)
    connect_timeout = o.opt_int("connect_timeout_ms", lo=1, hi=MAX_MS)
    lb = o.obj("load_balancer")
    cb = o.obj("circuit_breaker")
    od = o.obj("outlier_detection")
    hc = o.obj("health_check")
    scaling = o.obj("scaling")
    subsets = o.obj("subsets")
    mtls = mtls_mode(o)
    sidecar = o.obj("sidecar")
    upstreams = _upstreams(o, ref.namespace)
    service = Service(
        ref=ref,
        protocol=protocol,  # type: ignore[arg-type]
        port=port,
        connect_timeout_ms=connect_timeout,
        load_balancer=_load_balancer(lb) if lb else LoadBalancer(),
        circuit_breaker=_circuit_breaker(cb) if cb else None,
        outlier_detection=_outlier(od) if od else None,
        health_check=_health_check(hc) if hc else None,
        scaling=_scaling(scaling) if scaling else None,
        subsets=_subsets(subsets) if subsets else (),
        mtls=mtls,
        sidecar=_sidecar(sidecar) if sidecar is not None else None,
        upstreams=upstreams,
    )
    o.done()
    return service


class _PlainService(msgspec.Struct, forbid_unknown_fields=True):
    """The shape of a Service value without blocks, for :func:`decode_plain_service`."""

    protocol: Protocol = "http"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    connect_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_MS)] | None = None


_decode_plain = msgspec.json.Decoder(_PlainService).decode


def decode_plain_service(ref: ServiceRef, raw: bytes) -> Service | None:
    """A Service value of protocol, port and connect timeout only (most services),
    decoded and checked in C (msgspec); None for anything else, which the strict path reads.

    A cold start reads every service, and this decodes and checks one far faster than the
    JSON decoder and :func:`parse_service`. This accepts only values the
    strict path accepts, with the same outcome (``tests/test_state_props.py`` checks it
    with hypothesis); blocks, a null protocol and errors return None, so every error
    still comes from the strict path with its messages.
    """
    v = fast_decode(_decode_plain, raw)
    if v is None:
        return None
    return Service(
        ref=ref, protocol=v.protocol, port=v.port, connect_timeout_ms=v.connect_timeout_ms
    )
