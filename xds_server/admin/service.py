"""The MeshAdminService servicer: registry reads on etcd, proxy status, health and
topology, events. Writes are in :mod:`xds_server.admin.writes`.

Nothing is cached here: reads go to etcd; proxy status comes from the open streams.
Proxy status, topology and load cover the whole mesh: the other meshd replicas are asked
for their part with the caller's token (:mod:`xds_server.admin.replicas`) and the parts
joined (:mod:`xds_server.admin.replica_merge`).
"""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from xds_server.admin import entries as conv
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Principal, require
from xds_server.admin.base import SERVICE_NAME, Ctx, Malformed
from xds_server.admin.errors import AdminError, from_mesh_error, invalid
from xds_server.admin.health_topology import (
    get_health,
    get_recommendations,
    get_service_metrics,
    get_topology,
)
from xds_server.admin.policy_check import check_policy
from xds_server.admin.proxies import (
    SHORT_TO_TYPE,
    connections,
    not_connected,
    proxy_resources,
    proxy_status,
)
from xds_server.admin.proxy_view import ProxyView
from xds_server.admin.replica_merge import (
    merge_proxy_status,
    merge_recommendations,
    merge_service_metrics,
    merge_topology,
)
from xds_server.admin.replicas import PeerAnswer, forwarded
from xds_server.admin.trust_bundle import TrustBundleRpcs
from xds_server.admin.watch import EventFilter, event_message, event_types
from xds_server.admin.writes import RegistryWrites
from xds_server.errors import MeshError
from xds_server.events import MeshEvent, WatcherOverflow
from xds_server.model.names import parse_key
from xds_server.server.ads import Connection

__all__ = ["SERVICE_NAME", "AdminServicer"]


class AdminServicer(RegistryWrites, TrustBundleRpcs):
    """Implements every RPC of ``apg.mesh.admin.v1.MeshAdminService`` (writes in
    :mod:`~xds_server.admin.writes`)."""

    # -- registry reads ----------------------------------------------------------------------

    async def GetEntry(self, request: pb.GetEntryRequest, context: Ctx) -> Message:  # noqa: N802
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

    async def ListEntries(self, request: pb.ListEntriesRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            kind = conv.kind_of(request.kind)
            prefix = f"{self.prefix}{kind}/"
            if kind == "listeners":
                if request.namespace or request.service:
                    raise invalid(kind, "namespace", "listeners have no namespace")
            elif kind == "namespaces":
                if request.service:
                    raise invalid(kind, "service", "is only for endpoints")
                if request.namespace:
                    # (a prefix: namespaces/shop also lists namespaces/shop-eu; filtered below)
                    require(who, "read", request.namespace, f"{kind}/{request.namespace}")
                    prefix += request.namespace
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
                if request.namespace and ref.namespace != request.namespace:
                    continue
                if who.may("read", ref.namespace):
                    out.entries.append(conv.entry_of(stored, self.prefix))
            return out

        return await self._call(context, request, body)

    async def ListErrors(self, request: pb.ListErrorsRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            out = pb.ListErrorsResponse()
            problems = self.problems()
            for key in sorted(problems):
                problem = problems[key]
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

    # -- proxies --------------------------------------------------------------------------------

    async def GetProxyStatus(self, request: pb.GetProxyStatusRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            view = ProxyView(who, self.state)
            conns = connections(self.streams, request.node_id)
            if request.node_id:
                # A proxy the caller may not see answers as one not connected: the same
                # NOT_FOUND, so asking tells nothing about other namespaces.
                if not view.node_visible(conns):
                    conns = []
            else:
                conns = [c for c in conns if view.sees(c)]
            local = pb.GetProxyStatusResponse(proxies=[self._status(c, view) for c in conns])
            answers = await self._peer_parts(context, "GetProxyStatus", request)
            out = local
            if answers is not None:
                parts = [local, *(a.response for a in answers if a.response is not None)]
                out = pb.GetProxyStatusResponse(
                    proxies=merge_proxy_status(parts), replicas=self._replica_status(answers)
                )
            if request.node_id and not out.proxies:
                raise not_connected(request.node_id)
            return out

        return await self._call(context, request, body)

    def _status(self, conn: Connection, view: ProxyView) -> pb.ProxyStatus:
        status = proxy_status(conn, view.held)
        status.replica = self.replicas.replica_id if self.replicas is not None else ""
        return status

    async def _peer_parts(
        self, context: Ctx, method: str, request: Message
    ) -> list[PeerAnswer] | None:
        """The other replicas' parts of a whole-mesh answer, asked with the caller's token;
        None when this call is itself a replica's asking for this one's part (or there are
        no replicas to ask)."""
        if self.replicas is None:
            return None
        metadata = forwarded(context.invocation_metadata())
        if metadata is None:
            return None
        return await self.replicas.ask(method, request, metadata)

    def _replica_status(self, answers: list[PeerAnswer]) -> list[pb.ReplicaStatus]:
        assert self.replicas is not None
        return [self.replicas.me(), *(a.status() for a in answers)]

    async def GetProxyConfig(self, request: pb.GetProxyConfigRequest, context: Ctx) -> Message:  # noqa: N802
        async def body(who: Principal) -> Message:
            if not request.node_id:
                raise invalid("", "node_id", "is required")
            short = request.type.upper()
            if short and short not in SHORT_TO_TYPE:
                raise invalid(
                    "", "type", f"must be SDS, CDS, EDS, LDS or RDS, got {request.type!r}"
                )
            view = ProxyView(who, self.state)
            conns = connections(self.streams, request.node_id)
            if not view.node_visible(conns):
                # Connected to another replica, perhaps: the first that holds it answers.
                for answer in await self._peer_parts(context, "GetProxyConfig", request) or ():
                    if answer.response is not None:
                        return answer.response  # type: ignore[no-any-return]
                raise not_connected(request.node_id)
            conn = conns[-1]  # the newest stream of the node is the one it uses
            return pb.GetProxyConfigResponse(
                status=self._status(conn, view),
                resources=proxy_resources(conn, short, view.held),
            )

        return await self._call(context, request, body)

    async def proxy_access(self, context: Ctx) -> ProxyView:
        """CSDS's access check: the caller's token, as for every admin RPC (UNAUTHENTICATED
        without one), and what it may see of the proxies."""
        try:
            who = self.auth.principal(context.invocation_metadata())
        except MeshError as exc:
            err = from_mesh_error(exc)
            await context.abort(err.code, err.message)
        return ProxyView(who, self.state)

    # -- health and topology (bodies in health_topology.py) ---------------------------------------

    async def GetHealth(self, request: pb.GetHealthRequest, context: Ctx) -> Message:  # noqa: N802
        # Verdicts are the same on every replica (they share reports through etcd); only
        # which checkers a namespaced token may see needs the other replicas' proxies.
        async def body(who: Principal) -> Message:
            view = ProxyView(who, self.state)
            if view.everything:
                return get_health(self.health, who, request)
            elsewhere: set[str] = set()
            if self.health is not None:
                asked = pb.GetProxyStatusRequest()
                for answer in await self._peer_parts(context, "GetProxyStatus", asked) or ():
                    if answer.response is not None:
                        elsewhere.update(p.node_id for p in answer.response.proxies)
            by_node: dict[str, list[Connection]] = {}
            for conn in connections(self.streams):  # (indexed once: checkers repeat)
                by_node.setdefault(conn.stream.node_id, []).append(conn)

            def shows(node: str) -> bool:
                here = by_node.get(node)
                return view.node_visible(here) if here else node in elsewhere

            return get_health(self.health, who, request, shows_node=shows)

        return await self._call(context, request, body)

    async def GetTopology(self, request: pb.GetTopologyRequest, context: Ctx) -> Message:  # noqa: N802
        return await self._merged(
            context, request, get_topology, self.topology, "GetTopology", merge_topology
        )

    async def GetRecommendations(  # noqa: N802
        self, request: pb.GetRecommendationsRequest, context: Ctx
    ) -> Message:
        return await self._merged(
            context,
            request,
            get_recommendations,
            self.topology,
            "GetRecommendations",
            merge_recommendations,
        )

    async def GetServiceMetrics(  # noqa: N802
        self, request: pb.GetServiceMetricsRequest, context: Ctx
    ) -> Message:
        return await self._merged(
            context,
            request,
            get_service_metrics,
            self.topology,
            "GetServiceMetrics",
            merge_service_metrics,
        )

    async def _merged(
        self,
        context: Ctx,
        request: Any,
        answer: Callable[[Any, Principal, Any], Any],
        source: object,
        method: str,
        merge: Callable[[list[Any]], Any],
    ) -> Message:
        """:meth:`_now` over the whole mesh: this replica's answer joined with the other
        replicas' (each from the load reports its proxies send it)."""

        async def body(who: Principal) -> Message:
            local = answer(source, who, request)
            answers = await self._peer_parts(context, method, request)
            if answers is None:
                return local  # type: ignore[no-any-return]
            parts = [local, *(a.response for a in answers if a.response is not None)]
            merged = merge(parts)
            merged.replicas.extend(self._replica_status(answers))
            return merged  # type: ignore[no-any-return]

        return await self._call(context, request, body)

    async def CheckPolicy(self, request: pb.CheckPolicyRequest, context: Ctx) -> Message:  # noqa: N802
        return await self._now(context, request, check_policy, self.state)

    async def _now(
        self,
        context: Ctx,
        request: Any,
        answer: Callable[[Any, Principal, Any], Message],
        source: object,
    ) -> Message:
        """:meth:`_call` for ``answer(source, who, request)``, computed at once from what
        meshd holds (health, topology)."""

        async def body(who: Principal) -> Message:
            return answer(source, who, request)

        return await self._call(context, request, body)

    # -- events ---------------------------------------------------------------------------------

    async def Watch(  # noqa: N802
        self, request: pb.WatchRequest | Malformed, context: Ctx
    ) -> AsyncIterator[pb.WatchResponse]:
        try:
            if isinstance(request, Malformed):
                raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, request.error)
            metadata = context.invocation_metadata()
            generation = self.auth.generation
            who = self.auth.principal(metadata)
            types = event_types(request.types)
        except MeshError as exc:
            err = from_mesh_error(exc)
            await context.abort(err.code, err.message)
            return
        sub = self.events.subscribe(types)
        admit = EventFilter(ProxyView(who, self.state), self.streams, self.prefix).admits
        tokens_changed = asyncio.ensure_future(self.auth.changed(generation))
        next_event: asyncio.Future[MeshEvent] | None = None
        try:
            # Initial metadata tells the client it is subscribed: events from here on.
            await context.send_initial_metadata((("x-mesh-watching", "1"),))
            while True:
                if next_event is None:
                    next_event = asyncio.ensure_future(anext(sub))
                waiting: set[asyncio.Future[Any]] = {next_event, tokens_changed}
                await asyncio.wait(waiting, return_when=FIRST_COMPLETED)
                if tokens_changed.done():
                    # The tokens file was reloaded: the caller is checked again, and a
                    # removed token's stream ends (a narrowed one sees less from now on).
                    generation = self.auth.generation
                    try:
                        who = self.auth.principal(metadata)
                    except MeshError as exc:
                        err = from_mesh_error(exc)
                        await context.abort(err.code, f"{err.message} (tokens file reloaded)")
                    admit = EventFilter(
                        ProxyView(who, self.state), self.streams, self.prefix
                    ).admits
                    tokens_changed = asyncio.ensure_future(self.auth.changed(generation))
                if not next_event.done():
                    continue
                event, next_event = next_event.result(), None
                if admit(event):
                    yield event_message(event)
        except WatcherOverflow as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        finally:
            tokens_changed.cancel()
            if next_event is not None:
                next_event.cancel()
            sub.close()
