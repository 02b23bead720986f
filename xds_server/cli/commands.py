"""``meshctl`` commands that talk to the admin API (``docs/admin-api.md``).

Exit codes: 0 ok; 1 user or validation error (the message names the document and field);
2 admin API unreachable or auth failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.api import admin_pb2_grpc
from xds_server.admin.errors import REGISTRY_UNAVAILABLE
from xds_server.cli.manifest import KIND_DOCS, ManifestError, dumps, parse_manifest, to_document
from xds_server.cli.tables import (
    entry_rows,
    missing_replicas,
    proxy_rows,
    table,
)

KIND_ALIASES: dict[str, pb.Kind] = {}
for _kind, _names in {
    pb.KIND_SERVICE: ("services", "service", "svc"),
    pb.KIND_ENDPOINT: ("endpoints", "endpoint", "ep"),
    pb.KIND_ROUTE: ("routes", "route", "rt"),
    pb.KIND_LISTENER: ("listeners", "listener", "lis"),
    # (not "ns": it would read as the -n/--namespace flag's)
    pb.KIND_NAMESPACE: ("namespaces", "namespace"),
    pb.KIND_POLICY: ("policies", "policy", "pol"),
    pb.KIND_SECRET: ("secrets", "secret"),
}.items():
    for _n in _names:
        KIND_ALIASES[_n] = _kind

AUTH_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
OUTCOMES = {
    pb.APPLY_OUTCOME_CREATED: "created",
    pb.APPLY_OUTCOME_UPDATED: "configured",
    pb.APPLY_OUTCOME_UNCHANGED: "unchanged",
}
EVENT_NAMES = {v: k.removeprefix("EVENT_TYPE_").lower() for k, v in pb.EventType.items()}


class UserError(Exception):
    """Exit 1 with this message."""


class Client:
    """The admin API over one channel, with the bearer token on every call."""

    def __init__(
        self, address: str, token: str | None, timeout: float = 10.0, ca: str | None = None
    ) -> None:
        """``ca``: a PEM bundle file; the admin API is then dialled over TLS, trusting it."""
        self.address = address
        if ca:
            try:
                roots = Path(ca).read_bytes()
            except OSError as exc:
                raise UserError(f"--ca {ca}: {exc.strerror}") from None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self.channel = grpc.secure_channel(address, credentials)
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = admin_pb2_grpc.MeshAdminServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def call(self, method: str, request: Any, *, stream: bool = False) -> Any:
        fn = getattr(self.stub, method)
        if stream:
            return fn(request, metadata=self.metadata)
        return fn(request, metadata=self.metadata, timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()


def run(args: argparse.Namespace, func: Callable[[Client, argparse.Namespace], int]) -> int:
    """Run a command; map failures to the exit codes of ``docs/admin-api.md``."""
    try:
        client = Client(args.admin, args.token, ca=getattr(args, "ca", None))
    except UserError as exc:
        print(f"meshctl {args.command}: {exc}", file=sys.stderr)
        return 1
    try:
        return func(client, args)
    except UserError as exc:
        print(f"meshctl {args.command}: {exc}", file=sys.stderr)
        return 1
    except ManifestError as exc:
        print(f"meshctl {args.command}: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE and details.startswith(REGISTRY_UNAVAILABLE):
            pass  # meshd answered: its registry is out of reach, not meshd
        elif code == grpc.StatusCode.UNAVAILABLE:
            details = f"admin API at {args.admin} unreachable ({details})"
        print(f"meshctl {args.command}: {code.name}: {details}", file=sys.stderr)
        return 2 if code in AUTH_CODES else 1
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


def kind_arg(value: str) -> pb.Kind:
    try:
        return KIND_ALIASES[value.lower()]
    except KeyError:
        raise UserError(
            f"unknown kind {value!r}; expected services, endpoints, routes, listeners, "
            "namespaces, policies or secrets"
        ) from None


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None


# -- registry ----------------------------------------------------------------------------


def apply(client: Client, args: argparse.Namespace) -> int:
    entries = parse_manifest(_read(args.filename), args.filename)
    resp = client.call(
        "ApplyEntries",
        pb.ApplyEntriesRequest(entries=entries, dry_run=args.dry_run, force=args.force),
    )
    _warn_dependents(args, resp.dependents)
    results = [
        {
            "kind": KIND_DOCS[a.entry.ref.kind],
            **to_document(a.entry),
            "outcome": OUTCOMES.get(a.outcome, "?"),
        }
        for a in resp.entries
    ]
    if args.output in ("json", "yaml"):
        sys.stdout.write(
            dumps(
                {"revision": resp.revision, "dry_run": args.dry_run, "items": results}, args.output
            )
        )
        return 0
    suffix = " (dry run)" if args.dry_run else ""
    for r in results:
        where = f"{r['namespace']}/{r['name']}" if "namespace" in r else r["name"]
        if r["kind"] == "Namespace":
            where = r["name"]
        if r["kind"] == "Endpoint":
            where = f"{r['namespace']}/{r['service']}/{r['name']}"
        print(f"{r['kind'].lower()}/{where} {r['outcome']}{suffix}")
    return 0


def _ref(kind: pb.Kind, name: str, ns: str | None) -> pb.EntryRef:
    if kind == pb.KIND_LISTENER:
        if ns:
            raise UserError("listeners have no namespace (drop -n)")
        return pb.EntryRef(kind=kind, name=name)
    if kind == pb.KIND_NAMESPACE:
        # The entry of namespace NAME: -n, if given, must name the same one.
        if ns and ns != name:
            raise UserError(f"namespace {name!r} is its own entry's namespace (drop -n {ns})")
        return pb.EntryRef(kind=kind, name=name)
    if kind == pb.KIND_ENDPOINT:
        service, sep, ident = name.partition("/")
        if not sep or not service or not ident:
            raise UserError(f"endpoint name {name!r} must be SERVICE/ID")
        return pb.EntryRef(kind=kind, namespace=ns or "default", service=service, name=ident)
    return pb.EntryRef(kind=kind, namespace=ns or "default", name=name)


def get(client: Client, args: argparse.Namespace) -> int:
    kind = kind_arg(args.kind)
    if args.name and (kind != pb.KIND_ENDPOINT or "/" in args.name):
        entry = client.call(
            "GetEntry", pb.GetEntryRequest(ref=_ref(kind, args.name, args.namespace))
        ).entry
        entries = [entry]
    else:
        req = pb.ListEntriesRequest(kind=kind, namespace=args.namespace or "")
        if args.name:  # endpoints of one service
            req.namespace = args.namespace or "default"
            req.service = args.name
        entries = list(client.call("ListEntries", req).entries)
    if args.output in ("json", "yaml"):
        sys.stdout.write(dumps({"items": [to_document(e) for e in entries]}, args.output))
        return 0
    if not entries:
        print(f"no {args.kind} found", file=sys.stderr)
        return 0
    # What is rejected (meshd's view, not etcd's): marked in the table, reasons below it.
    errors = client.call("ListErrors", pb.ListErrorsRequest(namespace=args.namespace or ""))
    header, rows, notes = entry_rows(kind, entries, {e.key: e for e in errors.errors})
    sys.stdout.write(table(header, rows))
    for note in notes:
        print(note)
    return 0


def delete(client: Client, args: argparse.Namespace) -> int:
    kind = kind_arg(args.kind)
    ref = _ref(kind, args.name, args.namespace)
    request = pb.DeleteEntryRequest(
        ref=ref, revision=args.revision, force=args.force, dry_run=args.dry_run
    )
    resp = client.call("DeleteEntry", request)
    _warn_dependents(args, resp.dependents)
    if args.output in ("json", "yaml"):
        doc = {
            "deleted": args.name,
            "revision": resp.revision,
            "dry_run": args.dry_run,
            "dependents": list(resp.dependents),
        }
        sys.stdout.write(dumps(doc, args.output))
    else:
        what = KIND_DOCS[kind].lower()
        print(f"{what}/{args.name} deleted{' (dry run)' if args.dry_run else ''}")
    return 0


def _warn_dependents(args: argparse.Namespace, keys: Sequence[str]) -> None:
    """Say on stderr what still depends on a forced write (meshd keeps a service's old value
    for them; routes a listener or namespace entry no longer admits leave force)."""
    if not keys:
        return
    names = ", ".join(keys)
    verb = "depends" if len(keys) == 1 else "depend"
    print(
        f"meshctl {args.command}: warning: {names} still {verb} on it: meshd keeps the old "
        "value of a service in force for them until they change, and routes a listener or "
        "namespace no longer admits leave force (see meshctl errors)",
        file=sys.stderr,
    )


def split(client: Client, args: argparse.Namespace) -> int:
    dests = []
    for item in args.destinations:
        target, sep, weight = item.rpartition("=")
        if not sep or not target:
            raise UserError(f"{item!r} must be SERVICE[@SUBSET]=WEIGHT")
        service, _, subset = target.partition("@")
        try:
            w = int(weight)
        except ValueError:
            raise UserError(f"{item!r}: weight {weight!r} is not an integer") from None
        if not 0 <= w <= 10000:
            raise UserError(f"{item!r}: weight must be 0..10000")
        dests.append(pb.Destination(service=service, subset=subset, weight=w))
    resp = client.call(
        "SetSplit",
        pb.SetSplitRequest(
            namespace=args.namespace or "default",
            route=args.route,
            destinations=dests,
            revision=args.revision,
        ),
    )
    if args.output in ("json", "yaml"):
        sys.stdout.write(dumps(to_document(resp.entry), args.output))
    else:
        total = sum(d.weight for d in dests) or 1
        shares = ", ".join(
            f"{d.service}{'@' + d.subset if d.subset else ''} {100 * d.weight / total:.0f}%"
            for d in dests
        )
        where = f"route/{resp.entry.ref.namespace}/{args.route}"
        print(f"{where} split: {shares} (revision {resp.entry.revision})")
    return 0


def errors(client: Client, args: argparse.Namespace) -> int:
    resp = client.call("ListErrors", pb.ListErrorsRequest(namespace=args.namespace or ""))
    items = [
        {
            "key": e.key,
            "field": e.field,
            "reason": e.reason,
            "revision": e.revision,
            "last_good_kept": e.last_good_kept,
        }
        for e in resp.errors
    ]
    if args.output in ("json", "yaml"):
        sys.stdout.write(dumps({"errors": items}, args.output))
        return 0
    if not items:
        print("no rejected registry entries")
        return 0
    rows = [[i["key"], i["field"], i["reason"], i["last_good_kept"]] for i in items]
    sys.stdout.write(table(["KEY", "FIELD", "REASON", "LAST_GOOD_KEPT"], rows))
    return 0


# -- proxies and events ----------------------------------------------------------------------


def message_dict(message: Any) -> dict[str, Any]:
    """A response message as JSON-ready data, field names as in the proto, defaults shown."""
    out: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return out


def proxy_status(client: Client, args: argparse.Namespace) -> int:
    resp = client.call("GetProxyStatus", pb.GetProxyStatusRequest(node_id=args.node_id or ""))
    for line in missing_replicas(resp.replicas, "proxies"):
        print(f"meshctl {args.command}: warning: {line}", file=sys.stderr)
    if args.output in ("json", "yaml"):
        proxies = [message_dict(p) for p in resp.proxies]
        for p in proxies:
            for t in p.get("types", []):
                t["state"] = t["state"].removeprefix("SYNC_STATE_")
        replicas = [message_dict(r) for r in resp.replicas]
        sys.stdout.write(dumps({"proxies": proxies, "replicas": replicas}, args.output))
        return 0
    if not resp.proxies:
        print("no proxies connected")
        return 0
    header, rows, notes = proxy_rows(resp.proxies)
    sys.stdout.write(table(header, rows))
    for note in notes:
        print(note)
    return 0


def proxy_config(client: Client, args: argparse.Namespace) -> int:
    resp = client.call(
        "GetProxyConfig", pb.GetProxyConfigRequest(node_id=args.node_id, type=args.type or "")
    )
    doc = [
        {"type": r.type, "name": r.name, "version": r.version, "resource": json.loads(r.json)}
        for r in resp.resources
    ]
    sys.stdout.write(
        dumps(
            {"node_id": args.node_id, "resources": doc},
            args.output if args.output != "table" else "yaml",
        )
    )
    return 0


def _events(client: Client, args: argparse.Namespace) -> Iterator[pb.WatchResponse]:
    types = []
    for name in args.type or ():
        value = f"EVENT_TYPE_{name.upper().replace('-', '_')}"
        if value not in pb.EventType.keys():  # noqa: SIM118 (an enum wrapper, not a dict)
            allowed = ", ".join(sorted(set(EVENT_NAMES.values()) - {"unspecified"}))
            raise UserError(f"unknown event type {name!r}; expected one of {allowed}")
        types.append(pb.EventType.Value(value))
    yield from client.call("Watch", pb.WatchRequest(types=types), stream=True)


def watch(client: Client, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print events until Ctrl-C (``-o json``: one JSON object per line)."""
    out = out or sys.stdout
    for ev in _events(client, args):
        when = datetime.datetime.fromtimestamp(ev.time.ToMicroseconds() / 1e6, tz=datetime.UTC)
        kind = EVENT_NAMES.get(ev.type, "?")
        if args.output in ("json", "yaml"):
            data = message_dict(ev)
            data["type"] = kind
            data["time"] = when.isoformat()
            out.write(json.dumps(data, sort_keys=True) + "\n")
        else:
            parts = [when.strftime("%H:%M:%S.%f")[:-3], kind]
            for label, value in (
                ("node", ev.node_id),
                ("key", ev.key),
                ("type", ev.resource_type),
                ("version", ev.version[:12]),
                ("revision", ev.revision or ""),
            ):
                if value:
                    parts.append(f"{label}={value}")
            if ev.message:
                parts.append(ev.message)
            out.write(" ".join(str(p) for p in parts) + "\n")
        out.flush()
    return 0
