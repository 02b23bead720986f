"""The admin gRPC server: MeshAdminService, CSDS, gRPC health and server reflection.

Health and reflection stay open without a token (load balancers and grpcurl need them);
the admin service and CSDS check bearer tokens per call (see :mod:`xds_server.admin.auth`).
"""

from __future__ import annotations

import ipaddress
import logging

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xds_server.admin.auth import Authenticator
from xds_server.admin.service import SERVICE_NAME, AdminServicer
from xds_server.listen import bind_grpc
from xds_server.server.csds import CSDS_SERVICE, CsdsServicer

log = logging.getLogger("meshd.admin")

ADMIN_OPTIONS = [
    # Registry values are small; a bigger request is a mistake or an attack.
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # A port in use must fail to bind, not be shared with whatever listens there.
    ("grpc.so_reuseport", 0),
]


def is_loopback(address: str) -> bool:
    """``host:port`` listens on loopback only (127.0.0.0/8, ::1, localhost)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(address: str, auth: Authenticator, *, warn: bool = True) -> None:
    """Refuse an open admin API beyond loopback; warn when it is open on loopback."""
    if auth.enabled:
        return
    if not is_loopback(address):
        raise ValueError(
            f"--admin {address} is not a loopback address: the admin API needs --tokens there"
        )
    if warn:
        log.warning("admin API on %s is open to anyone on this host (no --tokens)", address)


async def start_admin_server(
    address: str, admin: AdminServicer, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.aio.Server, int]:
    """Serve ``admin`` on ``address``, with CSDS over its streams, gRPC health and
    reflection (over TLS with ``credentials``); returns the server and the bound port."""
    check_exposure(address, admin.auth)
    server = grpc.aio.server(options=ADMIN_OPTIONS)
    csds = CsdsServicer(admin.streams, admin.proxy_access)  # (same tokens as the admin API)
    server.add_generic_rpc_handlers((admin.handler(), csds.handler()))
    health_servicer = grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME, CSDS_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, CSDS_SERVICE, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = bind_grpc(server, "--admin", address, credentials)
    await server.start()
    return server, port
