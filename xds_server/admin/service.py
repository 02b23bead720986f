"""The MeshAdminService servicer: registry CRUD on etcd, proxy status, events.

Every write is one etcd transaction that compares the entry's mod_revision (the one the
caller read, or the one read just before writing), so two writers racing on one entry
never silently overwrite each other: exactly one wins, the other gets ABORTED.
Nothing is cached here: reads go to etcd; proxy status comes from the open streams.
"""

from __future__ import annotations

import json
import logging
from collections import ChainMap
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from xds_server.admin import entries as conv
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Authenticator, Principal, require
from xds_server.admin.entries import Checked
from xds_server.admin.errors import AdminError, from_mesh_error, invalid
from xds_server.admin.health_topology import (
    get_health,
    get_recommendations,
    get_service_metrics,
    get_topology,
)
from xds_server.admin.proxies import SHORT_TO_TYPE, connections, proxy_resources, proxy_status
from xds_server.admin.watch import event_message, event_namespace, event_types
from xds_server.errors import MeshError, RegistryConflict
from xds_server.events import EventBus, WatcherOverflow
from xds_server.model import Listener, Service, ServiceRef
from xds_server.model.names import DEFAULT_NAMESPACE, parse_key
from xds_server.registry import WritableRegistry
from xds_server.server.ads import StreamRegistry
from xds_server.server.hds import HealthService
from xds_server.server.lrs import TopologyService
from xds_server.state import RegistryState, check_refs

log = logging.getLogger("meshd.admin")

SERVICE_NAME = "apg.mesh.admin.v1.MeshAdminService"
MAX_APPLY = 500
"""Entries per ApplyEntries call (one etcd transaction; etcd bounds its operations)."""

_Req = TypeVar("_Req", bound=Message)
_Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Malformed:
    """Stands for a request whose bytes did not parse, so the call can say so clearly."""

    def __init__(self, error: str) -> None:
        self.error = error


class AdminServicer:
    """Implements every RPC of ``apg.mesh.admin.v1.MeshAdminService``."""

    def __init__(
        self,
        registry: WritableRegistry,
        state: RegistryState,
        streams: StreamRegistry,
        events: EventBus,
        auth: Authenticator,
        *,
        health: HealthService | None = None,
        topology: TopologyService | None = None,
    ) -> None:
        self.registry = registry
        self.prefix = registry.prefix
        self.state = state
        self.streams = streams
        self.events = events
        self.auth = auth
        self.health = health
        """Aggregated endpoint health (GetHealth); None: UNAVAILABLE."""
        self.topology = topology
        """Live topology, scaling advice and RED (GetTopology, GetRecommendations,
        GetServiceMetrics)."""

    # -- plumbing --------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        """Method handlers built from the proto descriptor, with forgiving deserializers."""
        service = pb.DESCRIPTOR.services_by_name["MeshAdminService"]
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.methods:
            request_cls = getattr(pb, method.input_type.name)
            response_cls = getattr(pb, method.output_type.name)
            impl = getattr(self, method.name, None)
            if impl is None:
                continue  # declared but not served by this build: clients get UNIMPLEMENTED
            make = (
                grpc.unary_stream_rpc_method_handler
                if method.server_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            handlers[method.name] = make(
                impl,
                request_deserializer=_safe_parser(request_cls),
                response_serializer=response_cls.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    async def _call(
        self,
        context: _Ctx,
        request: Any,
        body: Callable[[Principal], Awaitable[Message]],
    ) -> Message:
        try:
            if isinstance(request, Malformed):
                raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, request.error)
            principal = self.auth.principal(context.invocation_metadata())
            return await body(principal)
        except MeshError as exc:
            err = from_mesh_error(exc)
            await context.abort(err.code, err.message)
        except Exception:  # a bug must not take the admin server down: say so, log it
            log.exception("admin call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see meshd log)")
        raise AssertionError("unreachable")  # context.abort raises

    # -- registry reads ----------------------------------------------------------------------

    async def GetEntry(self, request: pb.GetEntryRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            key, key_ref = conv.key_of(request.ref, self.prefix)
            require(who, "read", key_ref.namespace, conv.describe(request.ref))
            stored = await self.registry.get(key)
            if stored is None:
                raise AdminError(
                    grpc.StatusCode.NOT_FOUND, f"{conv.describe(request.ref)}: not found"
                )
            return pb.GetEntryResponse(entry=conv.entry_of(stored, self.prefix))

        return await self._call(context, request, body)

    async def ListEntries(self, request: pb.ListEntriesRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            kind = conv.kind_of(request.kind)
            prefix = f"{self.prefix}{kind}/"
            if kind == "listeners":
                if request.namespace or request.service:
                    raise invalid(kind, "namespace", "listeners have no namespace")
            elif request.namespace:
                require(who, "read", request.namespace, f"{kind}/{request.namespace}")
                prefix += f"{request.namespace}/"
                if request.service:
                    if kind != "endpoints":
                        raise invalid(kind, "service", "is only for endpoints")
                    prefix += f"{request.service}/"
            elif request.service:
                raise invalid(kind, "namespace", "is required with service")
            listing = await self.registry.list_prefix(prefix)
            out = pb.ListEntriesResponse(revision=listing.revision)
            for stored in listing.entries:
                try:
                    ref = parse_key(stored.key, self.prefix)
                except MeshError:
                    continue  # a malformed key is listed by ListErrors, not here
                if who.may("read", ref.namespace):
                    out.entries.append(conv.entry_of(stored, self.prefix))
            return out

        return await self._call(context, request, body)

    async def ListErrors(self, request: pb.ListErrorsRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            out = pb.ListErrorsResponse()
            for key in sorted(self.state.problems):
                problem = self.state.problems[key]
                ns = self._namespace_of(key)
                if request.namespace and ns != request.namespace:
                    continue
                if ns is None and "*" not in who.namespaces:
                    continue
                if ns is not None and not who.may("read", ns):
                    continue
                out.errors.append(
                    pb.RegistryError(
                        key=key,
                        field=problem.field,
                        reason=problem.reason,
                        revision=problem.revision,
                        last_good_kept=problem.last_good_kept,
                    )
                )
            return out

        return await self._call(context, request, body)

    def _namespace_of(self, key: str) -> str | None:
        """The namespace of a registry key ("" for listeners; None when unparseable)."""
        try:
            return parse_key(key, self.prefix).namespace
        except MeshError:
            return None

    # -- registry writes ----------------------------------------------------------------------

    def _check(self, entry: pb.Entry, who: Principal, batch: Sequence[Checked] = ()) -> Checked:
        checked = conv.check_entry(entry, self.prefix)
        require(who, "write", checked.key_ref.namespace, checked.where)
        self._check_refs(checked, batch)
        return checked

    def _check_refs(self, checked: Checked, batch: Sequence[Checked]) -> None:
        """The registry's reference rules against what is in force plus this batch."""
        services: dict[ServiceRef, Service] = {}
        listeners: dict[str, Listener] = {}
        for other in batch:
            if isinstance(other.entity, Service):
                services[other.entity.ref] = other.entity
            elif isinstance(other.entity, Listener):
                listeners[other.entity.name] = other.entity
        problem = check_refs(
            checked.entity,
            ChainMap(services, self.state.services),
            ChainMap(listeners, self.state.listeners),
        )
        if problem is not None:
            field, reason = problem
            raise invalid(checked.where, f"spec.{field}" if field else "spec", reason)

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
        entry.spec.CopyFrom(conv.spec_struct(json.loads(checked.value)))
        return entry

    async def CreateEntry(self, request: pb.CreateEntryRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            checked = self._check(request.entry, who)
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

    async def UpdateEntry(self, request: pb.UpdateEntryRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            checked = self._check(request.entry, who)
            expect, lease = await self._current_revision(checked, checked.revision)
            # An endpoint registered with a TTL keeps its lease: an edit must not make a
            # dead instance immortal.
            rev = await self.registry.txn(
                puts={checked.key: checked.value}, expect={checked.key: expect}, lease=lease
            )
            return pb.UpdateEntryResponse(entry=self._written(checked, rev, lease))

        return await self._call(context, request, body)

    async def DeleteEntry(self, request: pb.DeleteEntryRequest, context: _Ctx) -> Message:  # noqa: N802
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
            rev = await self.registry.txn(deletes=(key,), expect={key: stored.mod_revision})
            return pb.DeleteEntryResponse(revision=rev)

        return await self._call(context, request, body)

    async def ApplyEntries(self, request: pb.ApplyEntriesRequest, context: _Ctx) -> Message:  # noqa: N802
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
                require(who, "write", checked.key_ref.namespace, checked.where)
                if any(c.key == checked.key for c in batch):
                    raise invalid(checked.where, "", f"entries[{i}] repeats an earlier entry")
                batch.append(checked)
            for checked in batch:
                self._check_refs(checked, batch)
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
                elif json.loads(stored.value or b"null") == json.loads(checked.value):
                    outcomes.append(pb.APPLY_OUTCOME_UNCHANGED)
                    continue
                else:
                    outcomes.append(pb.APPLY_OUTCOME_UPDATED)
                puts[checked.key] = checked.value
            revision = self.state.revision
            if puts and not request.dry_run:
                revision = await self.registry.txn(puts=puts, expect=expect)
            out = pb.ApplyEntriesResponse(revision=revision)
            for checked, outcome in zip(batch, outcomes, strict=True):
                out.entries.append(
                    pb.AppliedEntry(entry=self._written(checked, revision), outcome=outcome)
                )
            return out

        return await self._call(context, request, body)

    async def SetSplit(self, request: pb.SetSplitRequest, context: _Ctx) -> Message:  # noqa: N802
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
                    f"{where}: the stored route is not a JSON object; fix it with UpdateEntry",
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
        self, request: pb.RegisterEndpointRequest, context: _Ctx
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
            lease = await self.registry.lease_grant(int(request.ttl_seconds))
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

    async def KeepAlive(self, request: pb.KeepAliveRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            if who.role != "editor":
                require(who, "write", "", "keep-alive")
            if request.lease <= 0:
                raise invalid(
                    "", "lease", f"must be a lease id from RegisterEndpoint, got {request.lease}"
                )
            try:
                ttl = await self.registry.lease_keepalive(request.lease)
            except RegistryConflict:
                raise AdminError(
                    grpc.StatusCode.NOT_FOUND,
                    f"lease {request.lease} expired or does not exist: register again",
                ) from None
            return pb.KeepAliveResponse(ttl_seconds=ttl)

        return await self._call(context, request, body)

    # -- proxies --------------------------------------------------------------------------------

    async def GetProxyStatus(self, request: pb.GetProxyStatusRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            conns = connections(self.streams, request.node_id)
            return pb.GetProxyStatusResponse(proxies=[proxy_status(c) for c in conns])

        return await self._call(context, request, body)

    async def GetProxyConfig(self, request: pb.GetProxyConfigRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            if not request.node_id:
                raise invalid("", "node_id", "is required")
            short = request.type.upper()
            if short and short not in SHORT_TO_TYPE:
                raise invalid("", "type", f"must be CDS, EDS, LDS or RDS, got {request.type!r}")
            conns = connections(self.streams, request.node_id)
            if not conns:
                raise AdminError(
                    grpc.StatusCode.NOT_FOUND, f"node {request.node_id!r} is not connected"
                )
            conn = conns[-1]  # the newest stream of the node is the one it uses
            return pb.GetProxyConfigResponse(
                status=proxy_status(conn), resources=proxy_resources(conn, short)
            )

        return await self._call(context, request, body)

    # -- health and topology (bodies in health_topology.py) ---------------------------------------

    async def GetHealth(self, request: pb.GetHealthRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            return get_health(self.health, who, request)

        return await self._call(context, request, body)

    async def GetTopology(self, request: pb.GetTopologyRequest, context: _Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            return get_topology(self.topology, who, request)

        return await self._call(context, request, body)

    async def GetRecommendations(  # noqa: N802
        self, request: pb.GetRecommendationsRequest, context: _Ctx
    ) -> Message:
        async def body(who: Principal) -> Message:
            return get_recommendations(self.topology, who, request)

        return await self._call(context, request, body)

    async def GetServiceMetrics(  # noqa: N802
        self, request: pb.GetServiceMetricsRequest, context: _Ctx
    ) -> Message:
        async def body(who: Principal) -> Message:
            return get_service_metrics(self.topology, who, request)

        return await self._call(context, request, body)

    # -- events ---------------------------------------------------------------------------------

    async def Watch(  # noqa: N802
        self, request: pb.WatchRequest | Malformed, context: _Ctx
    ) -> AsyncIterator[pb.WatchResponse]:
        try:
            if isinstance(request, Malformed):
                raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, request.error)
            who = self.auth.principal(context.invocation_metadata())
            types = event_types(request.types)
        except MeshError as exc:
            err = from_mesh_error(exc)
            await context.abort(err.code, err.message)
            return
        sub = self.events.subscribe(types)
        try:
            # Initial metadata tells the client it is subscribed: events from here on.
            await context.send_initial_metadata((("x-mesh-watching", "1"),))
            async for event in sub:
                ns = event_namespace(event, self.prefix)
                if ns and not who.may("read", ns):
                    continue
                yield event_message(event)
        except WatcherOverflow as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        finally:
            sub.close()


def _destination(d: pb.Destination) -> dict[str, Any]:
    out: dict[str, Any] = {"service": d.service, "weight": d.weight}
    if d.subset:
        out["subset"] = d.subset
    return out


def _safe_parser(cls: type[_Req]) -> Callable[[bytes], _Req | Malformed]:
    def parse(data: bytes) -> _Req | Malformed:
        try:
            message: _Req = cls.FromString(data)
            return message
        except (DecodeError, ValueError, RecursionError) as exc:
            return Malformed(f"malformed {cls.DESCRIPTOR.name}: {exc or 'cannot parse'}")

    return parse
