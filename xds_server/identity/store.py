"""Where the mesh CA lives: ``<prefix>ca/`` in the registry's etcd, shared by replicas.

The first meshd on an etcd creates the root and writes certificate, key and bundle in one
create-if-absent transaction (compare ``ca/cert`` absent); a replica that loses the race,
and every later start, reads what won. So every replica signs with the same key and serves
the same trust bundle. An operator's CA (``--ca-cert``/``--ca-key``) is never written: only
its public bundle is, so ``meshctl ca get --etcd`` finds it.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Protocol

from xds_server.errors import RegistryConflict
from xds_server.identity.ca import MeshCA, generate_root

__all__ = ["CaStore", "ca_keys", "load_mesh_ca"]

log = logging.getLogger("meshd.ca")


class _Entry(Protocol):
    @property
    def value(self) -> bytes: ...


class CaStore(Protocol):
    """The part of a writable registry the CA needs (etcd and memory registries have it)."""

    prefix: str

    async def get(self, key: str) -> _Entry | None:
        """One key's value, if present."""
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write one key."""
        ...

    async def txn(self, *, puts: Mapping[str, bytes], expect: Mapping[str, int]) -> int:
        """Atomic writes under expectations (0: the key must be absent): as much of
        ``WritableRegistry.txn`` as the CA uses (``identity`` may not import ``ingest``)."""
        ...


def ca_keys(prefix: str) -> tuple[str, str, str]:
    """The CA's keys under ``prefix``: certificate, private key, trust bundle."""
    return f"{prefix}ca/cert", f"{prefix}ca/key", f"{prefix}ca/bundle"


async def load_mesh_ca(
    store: CaStore,
    trust_domain: str,
    now: datetime.datetime,
    operator: tuple[bytes, bytes] | None = None,
) -> MeshCA:
    """The mesh CA: the operator's (``operator`` = cert PEM, key PEM), else the one in
    etcd, else a new root created there. Raises CaError when a CA cannot sign."""
    cert_key, key_key, bundle_key = ca_keys(store.prefix)
    if operator is not None:
        ca = MeshCA(operator[0], operator[1], trust_domain)
        current = await store.get(bundle_key)
        if current is None or current.value != ca.bundle_pem:
            await store.put(bundle_key, ca.bundle_pem)
        return ca
    for _ in range(3):
        cert, key = await store.get(cert_key), await store.get(key_key)
        if cert is not None and key is not None:
            return MeshCA(cert.value, key.value, trust_domain)
        new_cert, new_key = generate_root(trust_domain, now)
        try:
            await store.txn(
                puts={cert_key: new_cert, key_key: new_key, bundle_key: new_cert},
                expect={cert_key: 0},
            )
        except RegistryConflict:
            continue  # another replica created it first: read theirs
        log.info("created the mesh CA under %sca/ (trust domain %s)", store.prefix, trust_domain)
        return MeshCA(new_cert, new_key, trust_domain)
    raise RegistryConflict(f"{cert_key}: the CA certificate is there but not its key {key_key}")
