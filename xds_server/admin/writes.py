"""Registry writes of the admin API: every write is one etcd transaction that compares
the entry's mod_revision (the one the caller read, or the one read just before writing), so
two writers racing on one entry never silently overwrite each other: exactly one wins, the
other gets ABORTED."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from xds_server.admin import entries as conv
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Principal, require
from xds_server.admin.base import Ctx
from xds_server.admin.entries import Checked
from xds_server.admin.errors import AdminError, invalid
from xds_server.admin.join_tokens import JoinTokenRpcs
from xds_server.admin.leases import check_lease, lease_gone, new_lease_id
from xds_server.errors import MeshError, RegistryConflict, TxnTooLarge
from xds_server.ingest.refs import ServiceView, check_refs, check_tenancy
from xds_server.model import Listener, Namespace, Route, Service, ServiceRef
from xds_server.model.names import DEFAULT_NAMESPACE, parse_key
from xds_server.model.secret import Secret
from xds_server.model.view import Dependent

NEWEST = 1 << 62
"""The age a route is judged with when written through the API: newer than every route,
so a write (an edit of an old route too) never takes a host and match that another
namespace's route holds in force (docs/security.md, Tenancy)."""

MAX_APPLY = 500
"""Entries per ApplyEntries call. They are one etcd transaction of one operation per entry,
so etcd's ``--max-txn-ops`` (128 by default) may allow fewer: such a call is refused, dry
run or not, naming that limit."""


class RegistryWrites(JoinTokenRpcs):
    """Create, update, delete, apply, split, and endpoint registration with leases (and
    join tokens: :class:`~xds_server.admin.join_tokens.JoinTokenRpcs`)."""

    def _check(self, entry: pb.Entry, who: Principal, batch: Sequence[Checked] = ()) -> Checked:
        checked = conv.check_entry(entry, self.prefix)
        _require_write(who, checked)
        self._check_refs(checked, batch)
        return checked

    def _check_refs(self, checked: Checked, batch: Sequence[Checked]) -> None:
        """The registry's reference rules against what is in force plus this batch."""
        services: dict[ServiceRef, Service | None] = {}
        listeners: dict[str, Listener] = {}
        namespaces: dict[str, Namespace] = {}
        secrets: dict[str, Secret] = {}
        for other in batch:
            if isinstance(other.entity, Service):
                services[other.entity.ref] = other.entity
            elif isinstance(other.entity, Listener):
                listeners[other.entity.name] = other.entity
            elif isinstance(other.entity, Namespace):
                namespaces[other.entity.name] = other.entity
            elif isinstance(other.entity, Secret):
                secrets[other.entity.ref] = other.entity
        entity = checked.entity
        if isinstance(entity, Route):
            entity = dataclasses.replace(entity, created=NEWEST)
        problem = check_refs(
            entity,
            ServiceView(self.state.registered_services, services),
            {**self.state.listeners, **listeners},  # (a few; this batch's first)
            {**self.state.namespaces, **namespaces},  # (this batch's exports first)
            self.state.owner_of,
            # (a listener's tls secrets and a route's jwt/api_keys secrets: refused now,
            # naming the field, rather than written and then kept out of force by the fold)
            {**self.state.secrets, **secrets},
        )
        if problem is not None:
            field, reason = problem
            raise invalid(checked.where, f"spec.{field}" if field else "spec", reason)

    def _dependents(
        self,
        who: Principal,
        where: str,
        changed: Mapping[ServiceRef, Service | None],
        force: bool,
        skip: Collection[str] = (),
        batch: Sequence[Checked] = (),
    ) -> list[str]:
        """Keys of the routes and listeners in force that services becoming ``changed``
        (None: deleted), or the listeners and namespace entries of ``batch``, would break.
        Without ``force`` such a write is FAILED_PRECONDITION naming them: it would take
        their traffic down (an etcd edit doing the same to a service is held off by meshd,
        which keeps the old value in force for them; a listener's ``allowed_namespaces`` or
        a namespace's ``export_to`` withdrawn takes effect: those routes leave force).

        Entries of namespaces ``who`` may not read are counted, never named (tenancy: a
        namespace's editor narrowing its exports learns that other namespaces' routes use
        them, not which), and are left out of the keys returned."""
        found: dict[str, Dependent] = {}
        for ref, new in changed.items():
            for dep in self.state.dependents(ref, new):
                if dep.key not in skip:
                    found.setdefault(dep.key, dep)
        held = bool(found)
        revoked = False
        for dep in self._revoked(batch):
            if dep.key not in skip:
                revoked = True
                found.setdefault(dep.key, dep)
        visible = sorted(d for d in found.values() if self._readable(who, d.key))
        hidden = len(found) - len(visible)
        if found and not force:
            deps = visible
            shown = "; ".join(
                f"{d.key.removeprefix(self.prefix)} ({d.field}: {d.reason})" for d in deps[:5]
            )
            more = f"; and {len(deps) - 5} more" if len(deps) > 5 else ""
            if hidden:
                unread = (
                    f"{hidden} entr{'y' if hidden == 1 else 'ies'} of namespaces you cannot read"
                )
                shown = f"{shown}; {unread}" if shown else unread
            one = len(found) == 1
            raise AdminError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{where + ': ' if where else ''}{len(found)} entr{'y' if one else 'ies'} in "
                f"force depend{'s' if one else ''} on it: {shown}{more}; change "
                f"{'it' if one else 'them'} first, or force the write (meshctl --force; "
                f"{_FORCED[held, revoked]})",
            )
        return [d.key for d in visible]

    def _readable(self, who: Principal, key: str) -> bool:
        """May ``who`` read the registry entry at ``key``?"""
        try:
            namespace = parse_key(key, self.prefix).namespace
        except MeshError:
            return "*" in who.namespaces
        return who.may("read", namespace)

    def _revoked(self, batch: Sequence[Checked]) -> list[Dependent]:
        """Routes in force that the listeners of ``batch`` would no longer admit
        (``allowed_namespaces``), or whose destinations the namespace entries of ``batch``
        would no longer export to them (``export_to``)."""
        listeners = {c.entity.name: c.entity for c in batch if isinstance(c.entity, Listener)}
        exports = {c.entity.name: c.entity for c in batch if isinstance(c.entity, Namespace)}
        if not listeners and not exports:
            return []
        namespaces, now = self.state.namespaces, self.state.listeners
        new, new_namespaces = {**now, **listeners}, {**namespaces, **exports}
        services = self.state.services
        found = []
        for key, route in self.state.routes.items():
            if not listeners and not _sends_to(route, exports):
                continue  # (exports changed only: a route sending elsewhere keeps its own)
            if check_tenancy(route, services, now, namespaces, None) is not None:
                continue  # (already refused: not this write's doing)
            problem = check_tenancy(route, services, new, new_namespaces, None)
            if problem is not None:
                found.append(Dependent(key, *problem))
        return sorted(found)

    async def _current_revision(self, checked: Checked, given: int) -> tuple[int, int]:
        """(revision to compare against, lease) of an entry that must exist."""
        stored = await self.registry.get(checked.key)
        if stored is None:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"{checked.where}: not found")
        if given and given != stored.mod_revision:
            raise AdminError(
                grpc.StatusCode.ABORTED,
                f"{checked.where}: is at revision {stored.mod_revision}, not {given}; "
                "re-read and retry",
            )
        return stored.mod_revision, stored.lease

    def _written(self, checked: Checked, revision: int, lease: int = 0) -> pb.Entry:
        entry = pb.Entry(
            ref=conv.ref_of(checked.key_ref),
            revision=revision,
            lease=lease,
            key=checked.key,
        )
        if checked.key_ref.kind == "secrets":  # (a write's answer echoes no key either)
            entry.spec.CopyFrom(
                conv.spec_struct(conv.secret_summary(checked.value, checked.key_ref))
            )
        else:
            entry.spec.CopyFrom(conv.spec_struct(json.loads(checked.value)))
        return entry

    async def CreateEntry(self, request: pb.CreateEntryRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            checked = self._check(request.entry, who)
            # (no force here: a listener that would shut routes out is created with
            # ApplyEntries, which takes one)
            self._dependents(who, checked.where, {}, False, batch=[checked])
            try:
                rev = await self.registry.txn(
                    puts={checked.key: checked.value}, expect={checked.key: 0}
                )
            except RegistryConflict:
                raise AdminError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"{checked.where}: already exists (use UpdateEntry)",
                ) from None
            return pb.CreateEntryResponse(entry=self._written(checked, rev))

        return await self._call(context, request, body)

    async def UpdateEntry(self, request: pb.UpdateEntryRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            checked = self._check(request.entry, who)
            expect, lease = await self._current_revision(checked, checked.revision)
            dependents = self._dependents(
                who, checked.where, _services([checked]), request.force, batch=[checked]
            )
            # An endpoint registered with a TTL keeps its lease: an edit must not make a
            # dead instance immortal.
            rev = await self.registry.txn(
                puts={checked.key: checked.value}, expect={checked.key: expect}, lease=lease
            )
            return pb.UpdateEntryResponse(
                entry=self._written(checked, rev, lease), dependents=dependents
            )

        return await self._call(context, request, body)

    async def DeleteEntry(self, request: pb.DeleteEntryRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            key, key_ref = conv.key_of(request.ref, self.prefix)
            where = conv.describe(request.ref)
            require(who, "write", key_ref.namespace, where)
            if request.revision < 0:
                raise invalid(where, "revision", f"must be >= 0, got {request.revision}")
            stored = await self.registry.get(key)
            if stored is None:
                raise AdminError(grpc.StatusCode.NOT_FOUND, f"{where}: not found")
            if request.revision and request.revision != stored.mod_revision:
                raise AdminError(
                    grpc.StatusCode.ABORTED,
                    f"{where}: is at revision {stored.mod_revision}, not {request.revision}; "
                    "re-read and retry",
                )
            gone = {key_ref.service_ref: None} if key_ref.kind == "services" else {}
            dependents = self._dependents(who, where, gone, request.force)
            if request.dry_run:
                return pb.DeleteEntryResponse(revision=self.state.revision, dependents=dependents)
            rev = await self.registry.txn(deletes=(key,), expect={key: stored.mod_revision})
            return pb.DeleteEntryResponse(revision=rev, dependents=dependents)

        return await self._call(context, request, body)

    async def ApplyEntries(self, request: pb.ApplyEntriesRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            if not request.entries:
                raise invalid("", "entries", "is empty")
            if len(request.entries) > MAX_APPLY:
                raise invalid(
                    "", "entries", f"{len(request.entries)} entries, at most {MAX_APPLY} per call"
                )
            batch: list[Checked] = []
            for i, entry in enumerate(request.entries):
                try:
                    checked = conv.check_entry(entry, self.prefix)
                except AdminError as exc:
                    raise AdminError(exc.code, f"entries[{i}] {exc.message}") from None
                _require_write(who, checked)
                if any(c.key == checked.key for c in batch):
                    raise invalid(checked.where, "", f"entries[{i}] repeats an earlier entry")
                batch.append(checked)
            for checked in batch:
                self._check_refs(checked, batch)
            # What this call rewrites was judged above, against the batch.
            dependents = self._dependents(
                who, "", _services(batch), request.force, skip={c.key for c in batch}, batch=batch
            )
            outcomes, puts, expect = [], {}, {}
            for checked in batch:
                stored = await self.registry.get(checked.key)
                current = stored.mod_revision if stored else 0
                if checked.revision and checked.revision != current:
                    raise AdminError(
                        grpc.StatusCode.ABORTED,
                        f"{checked.where}: is at revision {current}, not {checked.revision}; "
                        "re-read and retry",
                    )
                # Compare every entry, changed or not: the batch was validated against
                # exactly these values, so all of it applies or none of it does.
                expect[checked.key] = current
                if stored is None:
                    outcomes.append(pb.APPLY_OUTCOME_CREATED)
                elif _stored_json(stored.value) == json.loads(checked.value):
                    outcomes.append(pb.APPLY_OUTCOME_UNCHANGED)
                    continue
                else:
                    outcomes.append(pb.APPLY_OUTCOME_UPDATED)
                puts[checked.key] = checked.value
            revision = self.state.revision
            try:
                if puts and not request.dry_run:
                    revision = await self.registry.txn(puts=puts, expect=expect)
                else:
                    # The same transaction without its writes: a dry run is refused exactly
                    # where the write would be (etcd's limit on operations, a moved entry).
                    await self.registry.txn(expect=expect)
            except TxnTooLarge as exc:
                raise invalid(
                    "",
                    "entries",
                    f"{len(batch)} entries need one etcd transaction of {exc.operations} "
                    f"operations, and this etcd takes at most {exc.limit} (--max-txn-ops): "
                    f"apply at most {exc.limit} entries per call",
                ) from None
            out = pb.ApplyEntriesResponse(revision=revision, dependents=dependents)
            for checked, outcome in zip(batch, outcomes, strict=True):
                out.entries.append(
                    pb.AppliedEntry(entry=self._written(checked, revision), outcome=outcome)
                )
            return out

        return await self._call(context, request, body)

    async def SetSplit(self, request: pb.SetSplitRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            ref = pb.EntryRef(kind=pb.KIND_ROUTE, namespace=request.namespace, name=request.route)
            key, key_ref = conv.key_of(ref, self.prefix)
            where = conv.describe(ref)
            require(who, "write", key_ref.namespace, where)
            if not request.destinations:
                raise invalid(where, "destinations", "is empty")
            stored = await self.registry.get(key)
            if stored is None:
                raise AdminError(grpc.StatusCode.NOT_FOUND, f"{where}: not found")
            try:
                spec = json.loads(stored.value)
            except ValueError:
                spec = None
            if not isinstance(spec, dict):
                raise AdminError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{where}: the stored route is not a JSON object; replace it whole with "
                    "`meshctl apply -f FILE` (UpdateEntry or ApplyEntries)",
                )
            spec["destinations"] = [
                {
                    "service": d.service,
                    "weight": d.weight,
                    **({"subset": d.subset} if d.subset else {}),
                }
                for d in request.destinations
            ]
            entry = pb.Entry(ref=ref, revision=request.revision or stored.mod_revision)
            entry.spec.CopyFrom(conv.spec_struct(spec))
            checked = self._check(entry, who)
            if checked.revision != stored.mod_revision:
                raise AdminError(
                    grpc.StatusCode.ABORTED,
                    f"{where}: is at revision {stored.mod_revision}, not {checked.revision}; "
                    "re-read and retry",
                )
            rev = await self.registry.txn(
                puts={key: checked.value}, expect={key: stored.mod_revision}
            )
            return pb.SetSplitResponse(entry=self._written(checked, rev))

        return await self._call(context, request, body)

    async def RegisterEndpoint(  # noqa: N802
        self, request: pb.RegisterEndpointRequest, context: Ctx
    ) -> Message:
        async def body(who: Principal) -> Message:
            ref = pb.EntryRef(
                kind=pb.KIND_ENDPOINT,
                namespace=request.namespace or DEFAULT_NAMESPACE,
                service=request.service,
                name=request.id,
            )
            where = conv.describe(ref)
            if not 1 <= request.ttl_seconds <= 3600:
                raise invalid(where, "ttl_seconds", f"must be 1..3600, got {request.ttl_seconds}")
            entry = pb.Entry(ref=ref)
            entry.spec.CopyFrom(request.spec)
            checked = self._check(entry, who)
            # A random id: the lease handle returned is no guess away from another's.
            lease = await self.registry.lease_grant(int(request.ttl_seconds), new_lease_id())
            try:
                rev = await self.registry.txn(puts={checked.key: checked.value}, lease=lease)
            except BaseException:
                await self.registry.lease_revoke(lease)
                raise
            return pb.RegisterEndpointResponse(
                entry=self._written(checked, rev, lease),
                lease=lease,
                ttl_seconds=request.ttl_seconds,
            )

        return await self._call(context, request, body)

    async def KeepAlive(self, request: pb.KeepAliveRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            if who.role != "editor":
                require(who, "write", "", "keep-alive")
            if request.lease <= 0:
                raise invalid(
                    "", "lease", f"must be a lease id from RegisterEndpoint, got {request.lease}"
                )
            # Another namespace's lease (or one of no endpoint) is NOT_FOUND like a lease
            # that does not exist: a guessed id neither tells nor keeps anything alive.
            await check_lease(self.registry, who, request.lease)
            try:
                ttl = await self.registry.lease_keepalive(request.lease)
            except RegistryConflict:
                raise lease_gone(request.lease) from None
            return pb.KeepAliveResponse(ttl_seconds=ttl)

        return await self._call(context, request, body)


def _require_write(who: Principal, checked: Checked) -> None:
    """PERMISSION_DENIED unless ``who`` may write the entry: in its namespace (listeners:
    a token for every namespace), and for a route, read every namespace it sends or
    mirrors to (a token cannot point traffic at services it may not see)."""
    require(who, "write", checked.key_ref.namespace, checked.where)
    route = checked.entity
    if isinstance(route, Route):
        targets = [d.service for d in route.destinations]
        if route.mirror is not None:
            targets.append(route.mirror.service)
        for ref in dict.fromkeys(targets):
            require(who, "read", ref.namespace, f"{checked.where}: destination {ref}")


_FORCED = {
    (True, False): "meshd then keeps the old value in force for them until they change",
    (False, True): "those routes then leave force",
    (True, True): "meshd then keeps the old services in force for the routes using them, and "
    "the routes no longer admitted leave force",
}
"""What a forced write does to its dependents: (service ones, admission ones) -> words."""


def _sends_to(route: Route, namespaces: Collection[str]) -> bool:
    """Does ``route`` send or mirror to a service of one of ``namespaces``?"""
    if route.mirror is not None and route.mirror.service.namespace in namespaces:
        return True
    return any(d.service.namespace in namespaces for d in route.destinations)


def _services(batch: Sequence[Checked]) -> dict[ServiceRef, Service | None]:
    """The services a batch of checked entries writes, by ref."""
    return {c.entity.ref: c.entity for c in batch if isinstance(c.entity, Service)}


def _stored_json(value: bytes) -> Any:
    """A stored value as JSON, or a marker unequal to any JSON when it does not parse: a
    key holding garbage (put with etcdctl) is replaced by an apply, not an INTERNAL error."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return _UNPARSEABLE


_UNPARSEABLE = object()


def _destination(d: pb.Destination) -> dict[str, Any]:
    out: dict[str, Any] = {"service": d.service, "weight": d.weight}
    if d.subset:
        out["subset"] = d.subset
    return out
