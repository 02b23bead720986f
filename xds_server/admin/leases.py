"""Endpoint leases over the admin API: ids nobody can guess, and keep-alives only of
leases whose keys the caller may write.

``RegisterEndpoint`` grants the etcd lease under a random 63-bit id (etcd takes the id a
client asks for), so the lease handle a caller gets is not the next in a sequence. And
``KeepAlive`` reads which keys the lease holds before refreshing it: a lease holding
anything but endpoints the caller may write (another namespace's, meshd's own, another
program's) answers exactly as a lease that does not exist, so guessing an id learns
nothing and keeps nothing alive.
"""

from __future__ import annotations

import secrets

import grpc

from xds_server.admin.auth import Principal
from xds_server.admin.errors import AdminError
from xds_server.errors import ValidationError
from xds_server.ingest.registry import WritableRegistry
from xds_server.model.names import parse_key

_MAX_ID = (1 << 63) - 1  # etcd lease ids are positive int64s; 0 asks etcd for its own


def new_lease_id() -> int:
    """A random lease id in 1..2**63-1."""
    return secrets.randbelow(_MAX_ID) + 1


def lease_gone(lease: int) -> AdminError:
    """The one answer for a lease that expired, never existed, or is not the caller's."""
    return AdminError(
        grpc.StatusCode.NOT_FOUND, f"lease {lease} expired or does not exist: register again"
    )


async def check_lease(registry: WritableRegistry, who: Principal, lease: int) -> None:
    """NOT_FOUND (:func:`lease_gone`) unless ``lease`` exists and holds only endpoint
    keys of namespaces ``who`` may write (a keyless lease: namespaces ``["*"]`` only)."""
    keys = await registry.lease_keys(lease)
    if keys is None:
        raise lease_gone(lease)
    if not keys and not who.covers(""):
        raise lease_gone(lease)
    for key in keys:
        try:
            ref = parse_key(key, registry.prefix)
        except ValidationError:
            raise lease_gone(lease) from None
        if ref.kind != "endpoints" or not who.may("write", ref.namespace):
            raise lease_gone(lease)
