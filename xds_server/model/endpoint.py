"""Endpoint: one instance of a service (registry ``endpoints/<ns>/<service>/<id>``)."""

from __future__ import annotations

import re
import socket
from typing import Annotated, NamedTuple

import msgspec

from xds_server.errors import ValidationError
from xds_server.model.fields import MAX_VALUE_BYTES, Obj
from xds_server.model.names import ServiceRef

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?$"
)
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


class Endpoint(NamedTuple):
    """A validated Endpoint entry. ``port`` ``None`` means the service's port.

    A named tuple, not a frozen dataclass like the other entities: a cold start builds one
    per endpoint, the bulk of a registry, and a tuple is built much faster. Immutable and
    hashable all the same.
    """

    service: ServiceRef
    id: str
    address: str
    port: int | None = None
    weight: int = 100
    labels: tuple[tuple[str, str], ...] = ()
    zone: str = ""
    draining: bool = False
    lease: int = 0

    @property
    def is_ip(self) -> bool:
        return is_ip(self.address)

    def matches(self, selector: tuple[tuple[str, str], ...]) -> bool:
        """True when every label of ``selector`` is on this endpoint with the same value."""
        mine = dict(self.labels)
        return all(mine.get(k) == v for k, v in selector)


_pton, _AF_INET, _AF_INET6 = socket.inet_pton, socket.AF_INET, socket.AF_INET6
_new = tuple.__new__


def canonical_ip(address: str) -> str | None:
    """The canonical spelling of an IPv4/IPv6 address, or None when it is not one.

    inet_pton/inet_ntop run in C: a cold start parses every endpoint address, and the
    ipaddress module is far slower. Zone ids (``fe80::1%eth0``) are rejected.
    Not memoized: a registry's addresses are nearly all distinct, and a memo of them
    would hold memory in proportion to the registry while saving nothing.
    """
    try:
        _pton(_AF_INET, address)
    except (OSError, ValueError):
        pass
    else:
        # inet_pton takes only the dotted quad without leading zeros (glibc, BSD), which is
        # already canonical: no inet_ntop round trip in each endpoint's decode.
        return address
    try:
        return socket.inet_ntop(_AF_INET6, _pton(_AF_INET6, address))
    except (OSError, ValueError):
        return None


def is_ip(address: str) -> bool:
    """Whether a validated Endpoint address is an IP address rather than a DNS name.

    A validated address is a canonical IP address or a host name (see :func:`_address`),
    and a host name has no ``:`` and is never all digits and dots, so the spelling says it
    without parsing (translation asks this of every endpoint on every change).
    """
    return ":" in address or address.replace(".", "").isdigit()


def _address(value: str, field: str) -> str:
    ip = canonical_ip(value)
    if ip is not None:
        return ip  # canonical form: one spelling, one hash
    if _HOSTNAME.fullmatch(value) and not value.replace(".", "").isdigit():
        return value.rstrip(".").lower()
    raise ValidationError(field, f"{value!r} is neither an IP address nor a DNS name")


class _EndpointValue(msgspec.Struct, forbid_unknown_fields=True):
    """The shape of a well-formed Endpoint value, for :func:`decode_endpoint`."""

    address: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    weight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    labels: dict[str, str] | None = None
    zone: str = ""
    draining: bool = False


_decode_value = msgspec.json.Decoder(_EndpointValue).decode


def decode_endpoint(
    service: ServiceRef, endpoint_id: str, raw: bytes, *, lease: int = 0
) -> Endpoint | None:
    """The common case decoded and checked in C (msgspec), or None for the strict path.

    A cold start reads every endpoint value, and msgspec decodes and checks one far faster
    than json and a dict walk. This accepts only values :func:`parse_endpoint` accepts, with the
    same outcome (``tests/unit/test_state_props.py`` checks it with hypothesis); anything
    unusual (null fields, DNS names, errors) returns None, so every error still comes
    from the strict path with its messages.
    """
    # fast_decode's checks, inlined: a call of its own would be paid once per endpoint of
    # a cold start's fold.
    if len(raw) > MAX_VALUE_BYTES:
        return None
    try:
        v = _decode_value(raw)
    except ValueError:  # msgspec's DecodeError and ValidationError; UnicodeDecodeError
        return None
    canonical = canonical_ip(v.address)
    if canonical is None or len(v.zone) > 128:
        return None  # DNS names are rare; a long zone is an error: the strict path words it
    pairs: tuple[tuple[str, str], ...] = ()
    if v.labels:
        for key in v.labels:
            if not _LABEL_KEY.fullmatch(key):
                return None
        pairs = tuple(sorted(v.labels.items()))
    # (tuple.__new__: a named tuple's own __new__ is a Python call, slower)
    return _new(
        Endpoint,
        (service, endpoint_id, canonical, v.port, v.weight, pairs, v.zone, v.draining, lease),
    )


def parse_endpoint(service: ServiceRef, endpoint_id: str, o: Obj, *, lease: int = 0) -> Endpoint:
    """Validate an Endpoint value for the service and id named by its key."""
    address = _address(o.str_("address", required=True), "address")
    port = o.opt_int("port", lo=1, hi=65535)
    weight = o.int_("weight", 100, lo=1, hi=1000)
    labels = o.str_map("labels") or {}
    for key in labels:
        if not _LABEL_KEY.fullmatch(key):
            raise ValidationError(f"labels.{key}", "is not a valid label key")
    zone = o.str_("zone", "")
    if len(zone) > 128:
        raise ValidationError("zone", "must be at most 128 characters")
    draining = o.bool_("draining", False)
    o.done()
    return Endpoint(
        service=service,
        id=endpoint_id,
        address=address,
        port=port,
        weight=weight,
        labels=tuple(sorted(labels.items())),
        zone=zone,
        draining=draining,
        lease=lease,
    )
