"""Translate etcd's gRPC failures into the control plane's MeshError hierarchy."""

from __future__ import annotations

from typing import Literal

import grpc

from xds_server.errors import (
    MeshError,
    RegistryCompacted,
    RegistryConflict,
    RegistryUnavailable,
    ValidationError,
)

__all__ = [
    "EtcdAccessError",
    "is_unavailable",
    "map_rpc_error",
    "member_lost",
    "never_reached",
    "rpc_reason",
    "tls_failure",
    "token_rejected",
]

# Codes that mean "etcd could not be asked", as opposed to "etcd said no".
_UNAVAILABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)

_NO_LEADER = "etcdserver: no leader"
_INVALID_TOKEN = "invalid auth token"
_AUTH_WORDS = (
    "authentication failed",  # wrong user or password
    "user name is empty",  # authentication on, no token sent
    _INVALID_TOKEN,  # (still, after a new token was asked for)
)


class EtcdAccessError(RegistryUnavailable):
    """etcd refused this client: its TLS handshake (``kind`` "tls"), its user or password
    ("auth"), or what the user may do ("permission"). Retrying the same way cannot help
    until the credentials or etcd's configuration change."""

    def __init__(self, message: str, kind: Literal["tls", "auth", "permission"]) -> None:
        super().__init__(message)
        self.kind = kind


def is_unavailable(exc: grpc.aio.AioRpcError) -> bool:
    """True when the call failed to reach a working etcd (retrying elsewhere may help)."""
    return exc.code() in _UNAVAILABLE


def member_lost(exc: grpc.aio.AioRpcError) -> bool:
    """True when the member itself is no good now: gone (the connection failed or broke,
    no answer in time) or cut off from the leader. Not for etcd's own transient answers
    ("leader changed", "request timed out"), which another member would give as well."""
    if not is_unavailable(exc):
        return False
    details = exc.details() or ""
    return _NO_LEADER in details or not details.startswith("etcdserver:")


def never_reached(exc: grpc.aio.AioRpcError) -> bool:
    """True when the request surely was not applied: no connection, or a member without a
    leader refused it up front (``hasleader``), so making it again elsewhere is safe."""
    details = exc.details() or ""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return _NO_LEADER in details or "failed to connect" in details.lower()


def token_rejected(exc: grpc.aio.AioRpcError) -> bool:
    """True when etcd refused the auth token (expired, or forgotten by a restarted member)."""
    return _INVALID_TOKEN in (exc.details() or "")


def tls_failure(exc: grpc.aio.AioRpcError) -> bool:
    """True when the TLS handshake with etcd failed (a certificate refused either way)."""
    details = (exc.details() or "").lower()
    return "handshake failed" in details or "ssl_error" in details


def rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    """``CODE: details`` of a failed call, shortened to its last cause."""
    details = exc.details() or ""
    # "failed to connect to all addresses; last error: UNKNOWN: ipv4:...: Tls handshake..."
    details = details.rsplit("last error: ", 1)[-1]
    return f"{exc.code().name}: {details}"


def map_rpc_error(exc: grpc.aio.AioRpcError, endpoint: str) -> MeshError:
    """The MeshError for a failed etcd call.

    - unreachable, timed out, no leader: RegistryUnavailable;
    - refused TLS handshake, user or password, permission: EtcdAccessError;
    - unknown or expired lease: RegistryConflict (the write's precondition no longer holds);
    - request too large, too many operations: ValidationError (retrying cannot help);
    - read at a compacted revision: RegistryCompacted.
    """
    code = exc.code()
    details = exc.details() or ""
    if tls_failure(exc):
        return EtcdAccessError(f"etcd {endpoint}: {rpc_reason(exc)}", "tls")
    # (etcd 3.5 says some of these with INVALID_ARGUMENT: known by their words)
    if code == grpc.StatusCode.UNAUTHENTICATED or any(w in details for w in _AUTH_WORDS):
        return EtcdAccessError(f"etcd {endpoint}: {details}", "auth")
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
        return EtcdAccessError(f"etcd {endpoint}: {details}", "permission")
    if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
        return RegistryConflict(f"etcd: {details}")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return ValidationError("", f"etcd rejected the request: {details}")
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return RegistryCompacted(0)  # etcd does not say up to where
    return RegistryUnavailable(f"etcd {endpoint}: {code.name}: {details}")
