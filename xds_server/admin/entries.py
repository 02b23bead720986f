"""Admin API entries <-> registry keys and values. Pure: no I/O.

An entry's ``spec`` is the registry JSON value of registry.md carried in a
``google.protobuf.Struct``. Struct numbers are doubles, so integral numbers are
written back as JSON integers: ``{"port": 8080}`` round-trips unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format, struct_pb2

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.errors import invalid
from xds_server.errors import ValidationError
from xds_server.model.entries import Entity, parse_entity
from xds_server.model.names import DEFAULT_NAMESPACE, KeyRef, Kind, parse_key, registry_key

if TYPE_CHECKING:  # (meshctl loads this module: it imports nothing of the server)
    from xds_server.ingest.registry import Entry

KIND_TO_REGISTRY: dict[pb.Kind, Kind] = {
    pb.KIND_SERVICE: "services",
    pb.KIND_ENDPOINT: "endpoints",
    pb.KIND_ROUTE: "routes",
    pb.KIND_LISTENER: "listeners",
    pb.KIND_NAMESPACE: "namespaces",
    pb.KIND_POLICY: "policies",
    pb.KIND_SECRET: "secrets",
}
REGISTRY_TO_KIND = {v: k for k, v in KIND_TO_REGISTRY.items()}

MAX_SPEC_BYTES = 512 * 1024
"""A registry value larger than this is refused (etcd's own request limit is 1.5 MiB)."""


def kind_of(kind: pb.Kind, field: str = "kind") -> Kind:
    """The registry kind of an API kind; INVALID_ARGUMENT for unknown or unspecified."""
    try:
        return KIND_TO_REGISTRY[kind]
    except KeyError:
        raise invalid(
            "",
            field,
            f"must be one of {', '.join(pb.Kind.Name(k) for k in KIND_TO_REGISTRY)}, got {kind}",
        ) from None


def describe(ref: pb.EntryRef) -> str:
    """``services/default/web``-style name of a ref for error messages (never raises)."""
    kind = KIND_TO_REGISTRY.get(ref.kind, "?")
    ns = ref.namespace or DEFAULT_NAMESPACE
    if kind == "namespaces":
        ns = ref.name  # (its key is namespaces/<name>: the entry of that namespace)
    return registry_key("", KeyRef(kind, ns, ref.name, ref.service))  # type: ignore[arg-type]


def key_of(ref: pb.EntryRef, prefix: str) -> tuple[str, KeyRef]:
    """The etcd key an API ref names, checked with the registry's key rules."""
    kind = kind_of(ref.kind, "ref.kind")
    where = describe(ref)
    if not ref.name:
        raise invalid(where, "ref.name", "is required")
    if kind == "listeners":
        if ref.namespace:
            raise invalid(where, "ref.namespace", "listeners have no namespace")
    elif kind == "namespaces":
        # The entry of namespace X is named X; a namespace field, if given, must agree
        # (authorization is by that namespace: a token for X writes X's entry only).
        if ref.namespace and ref.namespace != ref.name:
            raise invalid(
                where,
                "ref.namespace",
                f"a namespace entry is named by its namespace: leave it empty or {ref.name!r}, "
                f"got {ref.namespace!r}",
            )
        if ref.service:
            raise invalid(where, "ref.service", "is only for endpoints")
    elif kind == "endpoints":
        if not ref.service:
            raise invalid(where, "ref.service", "is required for endpoints")
    elif ref.service:
        raise invalid(where, "ref.service", "is only for endpoints")
    ns = ref.name if kind == "namespaces" else ref.namespace or DEFAULT_NAMESPACE
    key = registry_key(prefix, KeyRef(kind, ns, ref.name, ref.service))
    try:
        return key, parse_key(key, prefix)
    except ValidationError as exc:
        raise invalid(where, "ref", exc.reason) from None


def ref_of(key_ref: KeyRef) -> pb.EntryRef:
    """The API ref of a parsed registry key."""
    return pb.EntryRef(
        kind=REGISTRY_TO_KIND[key_ref.kind],
        namespace=key_ref.namespace,
        service=key_ref.service,
        name=key_ref.name,
    )


def _integral(value: Any) -> Any:
    """Struct numbers are doubles: give integral ones back as ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def spec_json(spec: struct_pb2.Struct) -> dict[str, Any]:
    """The registry JSON object carried by a Struct."""
    data = json_format.MessageToDict(spec)
    result: dict[str, Any] = _integral(data)
    return result


def spec_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    """A Struct carrying a registry JSON object."""
    s = struct_pb2.Struct()
    s.update(data)
    return s


@dataclass(frozen=True, slots=True)
class Checked:
    """A write request entry after validation: where it goes and what it holds."""

    key: str
    key_ref: KeyRef
    value: bytes
    entity: Entity
    revision: int
    where: str


def check_entry(entry: pb.Entry, prefix: str, *, lease: int = 0) -> Checked:
    """Validate one entry for writing with the registry's rules; INVALID_ARGUMENT names
    the entry and the field (``spec.<path>``) exactly as an etcdctl edit would report it."""
    key, key_ref = key_of(entry.ref, prefix)
    where = describe(entry.ref)
    if not entry.HasField("spec"):
        raise invalid(where, "spec", "is required")
    data = spec_json(entry.spec)
    value = json.dumps(data, separators=(",", ":")).encode()
    if len(value) > MAX_SPEC_BYTES:
        raise invalid(where, "spec", f"is {len(value)} bytes, over the {MAX_SPEC_BYTES} limit")
    try:
        entity = parse_entity(key_ref, value, lease=lease)
    except ValidationError as exc:
        raise invalid(where, f"spec.{exc.field}" if exc.field else "spec", exc.reason) from None
    except RecursionError:
        raise invalid(where, "spec", "is nested too deeply") from None
    if entry.revision < 0:
        raise invalid(where, "revision", f"must be >= 0, got {entry.revision}")
    return Checked(key, key_ref, value, entity, entry.revision, where)


def secret_summary(value: bytes, key_ref: KeyRef) -> dict[str, Any]:
    """What a read shows of a secret's value: :meth:`Secret.summary` (no key material);
    a value that is not a valid secret shows only that (its text may hold a key)."""
    try:
        entity = parse_entity(key_ref, value)
    except (ValidationError, RecursionError) as exc:
        reason = exc.reason if isinstance(exc, ValidationError) else "nested too deeply"
        return {"invalid": reason[:200]}
    summary = getattr(entity, "summary", None)
    return summary() if callable(summary) else {}


def entry_of(stored: Entry, prefix: str) -> pb.Entry:
    """The API form of a stored registry entry (a value that is not a JSON object goes
    into ``raw``: the entry is rejected by meshd, and the caller should see why)."""
    key_ref = parse_key(stored.key, prefix)
    out = pb.Entry(
        ref=ref_of(key_ref), revision=stored.mod_revision, lease=stored.lease, key=stored.key
    )
    if key_ref.kind == "secrets":  # never echoed: a summary, never ``raw``
        out.spec.CopyFrom(spec_struct(secret_summary(stored.value, key_ref)))
        return out
    try:
        data = json.loads(stored.value)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        try:
            out.spec.CopyFrom(spec_struct(data))
            return out
        except (ValueError, TypeError):
            pass  # e.g. numbers beyond a double: show the raw text instead
    out.raw = stored.value.decode("utf-8", "replace")
    return out
