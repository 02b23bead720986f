"""Endpoint: one instance of a service (registry ``endpoints/<ns>/<service>/<id>``)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj
from xds_server.model.names import ServiceRef

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?$"
)
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A validated Endpoint entry. ``port`` ``None`` means the service's port."""

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


def is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _address(value: str, field: str) -> str:
    if is_ip(value):
        return str(ipaddress.ip_address(value))  # canonical form: one spelling, one hash
    if _HOSTNAME.fullmatch(value) and not value.replace(".", "").isdigit():
        return value.rstrip(".").lower()
    raise ValidationError(field, f"{value!r} is neither an IP address nor a DNS name")


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
