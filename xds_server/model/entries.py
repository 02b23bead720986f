"""Turn one registry key and value into a validated entity or a reported Problem."""

from __future__ import annotations

from dataclasses import dataclass

from xds_server.errors import ValidationError
from xds_server.model.endpoint import Endpoint, decode_endpoint, parse_endpoint
from xds_server.model.fields import Obj, parse_json_object
from xds_server.model.listener import Listener, parse_listener
from xds_server.model.names import KeyRef, known_endpoint_key, parse_key
from xds_server.model.namespace import Namespace, parse_namespace
from xds_server.model.policy import Policy, parse_policy
from xds_server.model.route import Route, parse_route
from xds_server.model.secret import Secret, parse_secret
from xds_server.model.service import Service, decode_plain_service, parse_service

Entity = Service | Endpoint | Route | Listener | Namespace | Policy | Secret


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a registry entry is not (or not fully) in force.

    ``last_good_kept`` tells that an earlier valid value of the same key is
    still served; otherwise the key serves nothing.
    """

    key: str
    field: str
    reason: str
    revision: int = 0
    last_good_kept: bool = False
    warning: bool = False
    """Only a warning: the entry is in force as it is (a certificate expiring soon)."""

    @property
    def message(self) -> str:
        where = f"{self.field}: " if self.field else ""
        kept = "; last good value kept" if self.last_good_kept else ""
        return f"{where}{self.reason}{kept}"


def parse_entity(ref: KeyRef, value: bytes, *, lease: int = 0, created: int = 0) -> Entity:
    """Decode and validate a value for the entry ``ref`` names; raise ValidationError.
    ``created``: the revision that created the key (routes keep it)."""
    if ref.kind == "endpoints":
        fast: Entity | None = decode_endpoint(ref.service_ref, ref.name, value, lease=lease)
        if fast is not None:
            return fast
    elif ref.kind == "services":
        fast = decode_plain_service(ref.service_ref, value)
        if fast is not None:
            return fast
    obj = Obj(parse_json_object(value))
    if ref.kind == "services":
        return parse_service(ref.service_ref, obj)
    if ref.kind == "endpoints":
        return parse_endpoint(ref.service_ref, ref.name, obj, lease=lease)
    if ref.kind == "routes":
        return parse_route(ref.namespace, ref.name, obj, created=created)
    if ref.kind == "namespaces":
        return parse_namespace(ref.name, obj)
    if ref.kind == "policies":
        return parse_policy(ref.namespace, ref.name, obj)
    if ref.kind == "secrets":
        return parse_secret(ref.namespace, ref.name, obj)
    return parse_listener(ref.name, obj)


MAX_FIELD_CHARS = 256
"""A problem's field path longer than this is cut (the field of an unknown key is the key)."""
MAX_REASON_CHARS = 1024
"""A problem's reason longer than this is cut (reasons may quote the value)."""


def bounded(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, saying so: a 900 KB bad field name must not
    make an error report too large to log, send or store in etcd."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (truncated, {len(text)} characters)"


def _problem(key: str, exc: ValidationError, revision: int) -> Problem:
    return Problem(
        key,
        bounded(exc.field, MAX_FIELD_CHARS),
        bounded(exc.reason, MAX_REASON_CHARS),
        revision,
    )


def parse_entry(
    key: str, value: bytes, prefix: str, *, revision: int = 0, lease: int = 0, created: int = 0
) -> tuple[KeyRef | None, Entity | Problem]:
    """Parse a key and its value. Never raises: bad input becomes a Problem (its field and
    reason bounded in length)."""
    known = known_endpoint_key(key, prefix)
    if known is not None:  # most keys of a big registry: the endpoint fast path, or else
        endpoint = decode_endpoint(known[1], known[0].name, value, lease=lease)
        if endpoint is not None:
            return known[0], endpoint
        ref = known[0]  # (the key is known good: only its value takes the strict path)
    else:
        try:
            ref = parse_key(key, prefix)
        except ValidationError as exc:
            return None, _problem(key, exc, revision)
    try:
        return ref, parse_entity(ref, value, lease=lease, created=created)
    except ValidationError as exc:
        return ref, _problem(key, exc, revision)
    except RecursionError:
        # json.loads on pathologically nested input: still just a bad value.
        return ref, Problem(key, "", "value is nested too deeply", revision)
