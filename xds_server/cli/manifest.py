"""``meshctl`` manifests: YAML or JSON documents <-> admin API entries.

A document (``docs/admin-api.md``)::

    {"kind": "Service", "namespace": "default", "name": "web", "spec": {...}}

``Endpoint`` documents also carry ``"service"``; ``Listener`` documents have no namespace;
a ``Namespace`` document's ``name`` is the namespace (its ``namespace``, if given, the same).
``spec`` is exactly the registry value of registry.md. Several documents per file: YAML
``---`` separators, a JSON array, or ``{"items": [...]}`` (what ``meshctl get -o json``
prints, so its output can be applied again).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import yaml

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.entries import spec_json, spec_struct
from xds_server.errors import ValidationError
from xds_server.model.fields import Obj
from xds_server.model.names import DEFAULT_NAMESPACE

DOC_KINDS: dict[str, pb.Kind] = {
    "Service": pb.KIND_SERVICE,
    "Endpoint": pb.KIND_ENDPOINT,
    "Route": pb.KIND_ROUTE,
    "Listener": pb.KIND_LISTENER,
    "Namespace": pb.KIND_NAMESPACE,
    "Policy": pb.KIND_POLICY,
}
KIND_DOCS = {v: k for k, v in DOC_KINDS.items()}


class ManifestError(ValueError):
    """A manifest document is malformed; the message names the document and field."""


def _documents(text: str, source: str) -> Iterator[tuple[int, object]]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not YAML or JSON: {exc}") from None
    n = 0
    for doc in docs:
        if isinstance(doc, list):
            items: list[object] = doc
        elif isinstance(doc, dict) and set(doc) == {"items"} and isinstance(doc["items"], list):
            items = doc["items"]
        else:
            items = [doc]
        for item in items:
            n += 1
            yield n, item


def _label(n: int, data: object) -> str:
    if isinstance(data, dict):
        kind, ns, name = data.get("kind"), data.get("namespace"), data.get("name")
        if isinstance(kind, str) and isinstance(name, str):
            where = f"{ns}/{name}" if isinstance(ns, str) and ns else name
            return f"document {n} ({kind} {where})"
    return f"document {n}"


def parse_manifest(text: str, source: str = "-") -> list[pb.Entry]:
    """Every document of a manifest as an admin API entry, in file order."""
    out: list[pb.Entry] = []
    for n, data in _documents(text, source):
        where = f"{source}: {_label(n, data)}"
        try:
            out.append(_entry(data))
        except ValidationError as exc:
            field = f"{exc.field}: " if exc.field else ""
            raise ManifestError(f"{where}: {field}{exc.reason}") from None
    if not out:
        raise ManifestError(f"{source}: no documents")
    return out


def _entry(data: object) -> pb.Entry:
    doc = Obj(data)
    kind_name = doc.str_("kind", required=True)
    if kind_name not in DOC_KINDS:
        allowed = ", ".join(DOC_KINDS)
        raise ValidationError("kind", f"unknown kind {kind_name!r}; expected one of {allowed}")
    kind = DOC_KINDS[kind_name]
    name = doc.str_("name", required=True)
    if kind == pb.KIND_LISTENER:
        if doc.has("namespace"):
            raise ValidationError("namespace", "listeners have no namespace")
        ns = ""
    elif kind == pb.KIND_NAMESPACE:
        ns = doc.str_("namespace", name)
        if ns != name:
            raise ValidationError(
                "namespace", f"a Namespace's entry is its own: {ns!r} is not its name {name!r}"
            )
    else:
        ns = doc.str_("namespace", DEFAULT_NAMESPACE)
    service = doc.str_("service", required=True) if kind == pb.KIND_ENDPOINT else ""
    spec = doc.obj("spec")
    revision = doc.opt_int("revision", lo=0) or 0
    doc.done()
    if spec is None:
        raise ValidationError("spec", "is required")
    items = dict(spec.items())
    try:
        struct = spec_struct(items)
    except (ValueError, TypeError) as exc:
        raise ValidationError("spec", f"cannot be sent: {exc}") from None
    ref = pb.EntryRef(kind=kind, namespace=ns, service=service, name=name)
    return pb.Entry(ref=ref, spec=struct, revision=revision)


def to_document(entry: pb.Entry) -> dict[str, Any]:
    """An entry as a manifest document (with its revision), for ``get -o json|yaml``."""
    doc: dict[str, Any] = {"kind": KIND_DOCS.get(entry.ref.kind, "Unknown")}
    if entry.ref.kind not in (pb.KIND_LISTENER, pb.KIND_NAMESPACE):
        doc["namespace"] = entry.ref.namespace
    if entry.ref.kind == pb.KIND_ENDPOINT:
        doc["service"] = entry.ref.service
    doc["name"] = entry.ref.name
    if entry.raw:
        doc["raw"] = entry.raw
    else:
        doc["spec"] = spec_json(entry.spec)
    doc["revision"] = entry.revision
    if entry.lease:
        doc["lease"] = entry.lease
    return doc


def dumps(data: object, output: str) -> str:
    """``json`` (one document) or ``yaml``."""
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
