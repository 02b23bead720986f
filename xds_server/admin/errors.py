"""Admin API errors and their gRPC status codes, in one place."""

from __future__ import annotations

import grpc

from xds_server.errors import (
    MeshError,
    RegistryConflict,
    RegistryUnavailable,
    ValidationError,
)

REGISTRY_UNAVAILABLE = "registry (etcd) unavailable"
"""How an UNAVAILABLE answer of meshd begins when etcd, not meshd, is out of reach
(meshctl tells the two apart by it)."""


class AdminError(MeshError):
    """An admin call fails with ``code`` and a message for people."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(where: str, field: str, reason: str) -> AdminError:
    """INVALID_ARGUMENT naming the entry (``where``) and the field path."""
    path = ": ".join(p for p in (where, field) if p)
    return AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"{path}: {reason}" if path else reason)


def from_mesh_error(exc: MeshError, where: str = "") -> AdminError:
    """Map a control-plane error to the status code a client can act on."""
    if isinstance(exc, AdminError):
        return exc
    if isinstance(exc, ValidationError):
        return invalid(where, exc.field, exc.reason)
    if isinstance(exc, RegistryConflict):
        # Optimistic concurrency lost: the caller re-reads and retries (google.rpc ABORTED).
        return AdminError(grpc.StatusCode.ABORTED, f"conflict: {exc}; re-read and retry")
    if isinstance(exc, RegistryUnavailable):
        return AdminError(grpc.StatusCode.UNAVAILABLE, f"{REGISTRY_UNAVAILABLE}: {exc}")
    return AdminError(grpc.StatusCode.INTERNAL, str(exc))
