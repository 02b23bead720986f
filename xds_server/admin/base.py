"""What every admin RPC shares: the servicer's state, handlers built from the proto
descriptor, and one place that turns errors into gRPC status codes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Authenticator, Principal
from xds_server.admin.errors import REGISTRY_UNAVAILABLE, AdminError, from_mesh_error
from xds_server.admin.replicas import Replicas
from xds_server.errors import MeshError
from xds_server.events import EventBus
from xds_server.health.hds import HealthService
from xds_server.ingest.registry import WritableRegistry
from xds_server.model import Problem
from xds_server.model.view import RegistryView
from xds_server.server.ads import StreamRegistry
from xds_server.topology.lrs import TopologyService

log = logging.getLogger("meshd.admin")

SERVICE_NAME = "apg.mesh.admin.v1.MeshAdminService"

REGISTRY_PATIENCE = 2.0
"""Seconds an admin call waits for etcd while meshd has no connection to it."""

_Req = TypeVar("_Req", bound=Message)
Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Malformed:
    """Stands for a request whose bytes did not parse, so the call can say so clearly."""

    def __init__(self, error: str) -> None:
        self.error = error


class ServicerBase:
    """State and plumbing of the admin servicer (see :class:`~.service.AdminServicer`)."""

    def __init__(
        self,
        registry: WritableRegistry,
        state: RegistryView,
        streams: StreamRegistry,
        events: EventBus,
        auth: Authenticator,
        *,
        health: HealthService | None = None,
        topology: TopologyService | None = None,
        problems: Callable[[], Mapping[str, Problem]] | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self.registry = registry
        self.prefix = registry.prefix
        self.state = state
        self.problems = problems or (lambda: state.problems)
        """Every rejected key and why (ListErrors): the state's problems, and meshd's own
        findings such as endpoint names that do not resolve."""
        self.streams = streams
        self.events = events
        self.auth = auth
        self.health = health
        """Aggregated endpoint health (GetHealth); None: UNAVAILABLE."""
        self.topology = topology
        """Live topology, scaling advice and RED (GetTopology, GetRecommendations,
        GetServiceMetrics)."""
        self.replicas = replicas
        """The other meshd replicas, asked for their part of whole-mesh answers (proxy
        status, topology, load); None: this replica answers alone."""

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
        context: Ctx,
        request: Any,
        body: Callable[[Principal], Awaitable[Message]],
    ) -> Message:
        try:
            if isinstance(request, Malformed):
                raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, request.error)
            principal = self.auth.principal(context.invocation_metadata())
            return await self._patiently(body(principal))
        except MeshError as exc:
            err = from_mesh_error(exc)
            await context.abort(err.code, err.message)
        except Exception:  # a bug must not take the admin server down: say so, log it
            log.exception("admin call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see meshd log)")
        raise AssertionError("unreachable")  # context.abort raises

    async def _patiently(self, call: Awaitable[Message]) -> Message:
        """``call``, given up after :data:`REGISTRY_PATIENCE` seconds while there is no
        connection to etcd: UNAVAILABLE naming etcd, as a person waits no longer (a call
        to etcd otherwise waits for it up to its own timeout, twice for a write). A slow
        call on a live connection is left to finish."""
        task = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=REGISTRY_PATIENCE)
                if done:
                    return task.result()
                reachable = getattr(self.registry, "reachable", None)
                if reachable is not None and not reachable():
                    where = getattr(self.registry, "endpoints", None) or ["?"]
                    raise AdminError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"{REGISTRY_UNAVAILABLE}: etcd at {','.join(where)} does not answer "
                        f"(waited {REGISTRY_PATIENCE:g}s)",
                    )
        finally:
            task.cancel()


def _safe_parser(cls: type[_Req]) -> Callable[[bytes], _Req | Malformed]:
    def parse(data: bytes) -> _Req | Malformed:
        try:
            message: _Req = cls.FromString(data)
            return message
        except (DecodeError, ValueError, RecursionError) as exc:
            return Malformed(f"malformed {cls.DESCRIPTOR.name}: {exc or 'cannot parse'}")

    return parse
