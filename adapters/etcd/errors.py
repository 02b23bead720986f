"""Translate etcd's gRPC failures into the control plane's MeshError hierarchy."""

from __future__ import annotations

import grpc

from xds_server.errors import (
    MeshError,
    RegistryCompacted,
    RegistryConflict,
    RegistryUnavailable,
    ValidationError,
)

__all__ = ["is_unavailable", "map_rpc_error"]

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


def is_unavailable(exc: grpc.aio.AioRpcError) -> bool:
    """True when the call failed to reach a working etcd (retrying elsewhere may help)."""
    return exc.code() in _UNAVAILABLE


def map_rpc_error(exc: grpc.aio.AioRpcError, endpoint: str) -> MeshError:
    """The MeshError for a failed etcd call.

    - unreachable, timed out, no leader: RegistryUnavailable;
    - unknown or expired lease: RegistryConflict (the write's precondition no longer holds);
    - request too large, too many operations: ValidationError (retrying cannot help);
    - read at a compacted revision: RegistryCompacted.
    """
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
        return RegistryConflict(f"etcd: {details}")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return ValidationError("", f"etcd rejected the request: {details}")
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return RegistryCompacted(0)  # etcd does not say up to where
    return RegistryUnavailable(f"etcd {endpoint}: {code.name}: {details}")
